//! A tour of the checkpoint store on the local file system: a run that crashes
//! before sealing leaves nothing visible, a run that seals makes its keys skipped,
//! a commit marks its files committed, and compaction keeps the next load cheap.
//!
//! `cargo run --example checkpoint_store [-- DIRECTORY]`

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array};
use arrow_schema::DataType;
use tidemark::store::{
    CheckpointStore, CompactionOptions, FileRecord, KeySchema, TableFileMetadata,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("tidemark-tour-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let url = format!("file://{}", std::fs::canonicalize(&dir)?.display());
    let store = CheckpointStore::open(
        &url,
        &HashMap::new(),
        KeySchema::single("id", DataType::Int64)?,
    )
    .await?;
    println!("store at {url}");

    // A run that crashes after staging keys: nothing becomes visible.
    {
        let mut crashed = store.begin().await?;
        crashed.stage_keys(&[keys(0..500)]).await?;
        crashed
            .record_in_flight("data/crashed-00000.parquet")
            .await?;
        println!("run 1 staged 500 keys, then crashed before sealing");
    }
    report(&store, "after the crash").await?;

    // Each shard of the rerun seals its own checkpoint.
    let mut sealed = Vec::new();
    for shard in 0..4i64 {
        let mut writer = store.begin().await?;
        writer
            .stage_keys(&[keys(shard * 250..shard * 250 + 250)])
            .await?;
        let path = format!("data/shard-{shard:05}.parquet");
        writer.record_in_flight(&path).await?;
        // ... the pipeline writes the data file here ...
        writer
            .stage_file(FileRecord {
                path: path.clone(),
                file_size_bytes: 0,
                record_count: 250,
                table_metadata: TableFileMetadata {
                    format: "example".into(),
                    version: 1,
                    body: serde_json::json!({ "path": path }),
                },
            })
            .await?;
        writer.set_property("shard", shard.to_string());
        sealed.push(writer.seal().await?.checkpoint_id);
    }
    report(&store, "after run 2 sealed 4 shards").await?;

    store
        .mark_committed(&sealed, &serde_json::json!({ "table_version": 1 }))
        .await?;
    report(&store, "after the commit").await?;

    let compaction = store.compact(&CompactionOptions::default()).await?;
    println!(
        "compaction: generation {:?}, {} checkpoints, {} keys into {} files, {} objects deleted",
        compaction.generation,
        compaction.checkpoints_compacted,
        compaction.keys_compacted,
        compaction.key_files_written,
        compaction.objects_deleted
    );
    report(&store, "after compaction").await?;
    Ok(())
}

fn keys(range: std::ops::Range<i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(range))
}

async fn report(store: &CheckpointStore, when: &str) -> tidemark::Result<()> {
    let state = store.load().await?;
    println!(
        "{when}: {} keys checkpointed in {} key files, {} checkpoints pending commit, {} compacted",
        state.key_count(),
        state.key_files().len(),
        state.pending_commit().len(),
        state.compacted_count()
    );
    Ok(())
}
