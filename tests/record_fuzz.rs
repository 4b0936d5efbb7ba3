//! Every record the store reads back is untrusted input. Property test: take
//! a store holding every kind of record (descriptor, begin markers, in-flight
//! records, key files, manifests, a tombstone, commit markers, commit intents,
//! an index and its key files, collected records, lease epochs, heartbeats and
//! shard layouts), damage one object (truncate it, flip bytes, overwrite it,
//! or change one JSON value, `format_version` included), then run every
//! reader on it: opening, loading, status, orphans, key files, lease status,
//! taking the lease and committing. None may panic; an error about a damaged
//! record names the object; a commit never carries a file no manifest had,
//! nor one twice.
//!
//! `PROPTEST_CASES=N cargo test --test record_fuzz` runs more cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array};
use arrow_schema::DataType;
use bytes::Bytes;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use support::MemoryTable;
use tidemark::commit::Committer;
use tidemark::gc::collect_garbage;
use tidemark::store::{
    CheckpointStore, CompactionOptions, FileRecord, KeySchema, Lease, LeaseOptions, StoreLocation,
    TableFileMetadata,
};
use tidemark::Error;

const PIPELINE: &str = "fuzz";

fn lease_options() -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_secs(60),
        holder: "fuzz".into(),
    }
}

fn keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).unwrap()
}

fn ids(range: std::ops::Range<i64>) -> Vec<ArrayRef> {
    vec![Arc::new(Int64Array::from_iter_values(range)) as ArrayRef]
}

fn file(path: &str, rows: u64) -> FileRecord {
    FileRecord {
        path: path.to_string(),
        file_size_bytes: 100,
        record_count: rows,
        table_metadata: TableFileMetadata {
            format: "fuzz".into(),
            version: 1,
            body: serde_json::Value::Null,
        },
    }
}

fn open_on(bucket: Arc<InMemory>) -> StoreLocation {
    StoreLocation::from_object_store(bucket, Path::from("store"))
}

/// Every object of a store, and the data files its manifests carry.
type Base = (Vec<(Path, Bytes)>, BTreeSet<String>);

/// A store holding every kind of record, as `(path, bytes)`.
async fn every_kind_of_record() -> Base {
    let bucket = Arc::new(InMemory::new());
    let store = CheckpointStore::open_at(open_on(bucket.clone()), keys())
        .await
        .unwrap();
    let table = MemoryTable::default();
    let mut files = BTreeSet::new();
    // Two checkpoints committed and compacted into the index.
    for n in 0..2 {
        let mut writer = store.begin().await.unwrap();
        writer.stage_keys(&ids(n * 10..n * 10 + 10)).await.unwrap();
        let path = format!("data/compacted-{n}.parquet");
        writer.record_in_flight(&path).await.unwrap();
        writer.stage_file(file(&path, 10)).await.unwrap();
        writer.seal().await.unwrap();
        files.insert(path);
    }
    Committer::new(store.clone(), table.clone(), PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    collect_garbage(&store, &table).await.unwrap();
    store.compact(&CompactionOptions::default()).await.unwrap();
    // One committed, not compacted, with an orphan collected.
    let mut writer = store.begin().await.unwrap();
    writer.stage_keys(&ids(20..30)).await.unwrap();
    writer
        .record_in_flight("data/orphan.parquet")
        .await
        .unwrap();
    writer
        .record_in_flight("data/committed.parquet")
        .await
        .unwrap();
    writer
        .stage_file(file("data/committed.parquet", 10))
        .await
        .unwrap();
    writer.seal().await.unwrap();
    files.insert("data/committed.parquet".to_string());
    Committer::new(store.clone(), table.clone(), PIPELINE)
        .commit_pending()
        .await
        .unwrap();
    collect_garbage(&store, &table).await.unwrap();
    // A lease (epoch, heartbeat, shard layout), and under it: one checkpoint
    // sealed but not committed, one left staged.
    let lease = Lease::acquire(&store, "pipeline", 1, lease_options())
        .await
        .unwrap();
    let mut writer = store.begin_fenced(lease.fence()).await.unwrap();
    writer.stage_keys(&ids(30..40)).await.unwrap();
    writer
        .record_in_flight("data/pending.parquet")
        .await
        .unwrap();
    writer
        .stage_file(file("data/pending.parquet", 10))
        .await
        .unwrap();
    writer.seal().await.unwrap();
    files.insert("data/pending.parquet".to_string());
    let mut staged = store.begin_fenced(lease.fence()).await.unwrap();
    staged.stage_keys(&ids(40..50)).await.unwrap();
    staged
        .record_in_flight("data/staged.parquet")
        .await
        .unwrap();
    lease.release().await.unwrap();
    // A newer epoch fences the staged checkpoint with a tombstone.
    let lease = Lease::acquire(&store, "pipeline", 1, lease_options())
        .await
        .unwrap();
    lease.release().await.unwrap();
    let mut objects = Vec::new();
    let listed: Vec<_> = bucket.list(None).collect().await;
    for meta in listed {
        let path = meta.unwrap().location;
        let bytes = bucket.get(&path).await.unwrap().bytes().await.unwrap();
        objects.push((path, bytes));
    }
    (objects, files)
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    FlipByte(prop::sample::Index, u8),
    Overwrite(Vec<u8>),
    /// Replaces the `n`-th JSON number, string or bool with another value.
    JsonValue(prop::sample::Index, JsonValue),
}

#[derive(Debug, Clone)]
enum JsonValue {
    Number(i64),
    Big(u64),
    Text(String),
    Null,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Damage::FlipByte(i, x)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Overwrite),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                any::<i64>().prop_map(JsonValue::Number),
                any::<u64>().prop_map(JsonValue::Big),
                "[a-z0-9/._-]{0,12}".prop_map(JsonValue::Text),
                Just(JsonValue::Null),
            ]
        )
            .prop_map(|(i, v)| Damage::JsonValue(i, v)),
    ]
}

/// Replaces one leaf value of a JSON document; `None` if it is not JSON.
fn replace_leaf(bytes: &[u8], at: prop::sample::Index, value: &JsonValue) -> Option<Vec<u8>> {
    fn count(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(map) => map.values().map(count).sum(),
            serde_json::Value::Array(items) => items.iter().map(count).sum(),
            _ => 1,
        }
    }
    /// Replaces leaf number `n` (in document order); returns how many
    /// leaves it passed.
    fn replace(value: &mut serde_json::Value, n: usize, new: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(map) => {
                let mut seen = 0;
                for child in map.values_mut() {
                    seen += replace(child, n.wrapping_sub(seen), new);
                }
                seen
            }
            serde_json::Value::Array(items) => {
                let mut seen = 0;
                for child in items.iter_mut() {
                    seen += replace(child, n.wrapping_sub(seen), new);
                }
                seen
            }
            leaf => {
                if n == 0 {
                    *leaf = new.clone();
                }
                1
            }
        }
    }
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let leaves = count(&doc);
    if leaves == 0 {
        return None;
    }
    let new = match value {
        JsonValue::Number(n) => serde_json::json!(n),
        JsonValue::Big(n) => serde_json::json!(n),
        JsonValue::Text(t) => serde_json::json!(t),
        JsonValue::Null => serde_json::Value::Null,
    };
    replace(&mut doc, at.index(leaves), &new);
    serde_json::to_vec(&doc).ok()
}

fn apply(damage: &Damage, bytes: &Bytes) -> Vec<u8> {
    match damage {
        Damage::Truncate(at) => bytes[..at.index(bytes.len().max(1))].to_vec(),
        Damage::FlipByte(at, x) => {
            let mut out = bytes.to_vec();
            if !out.is_empty() {
                let i = at.index(out.len());
                out[i] ^= x;
            }
            out
        }
        Damage::Overwrite(with) => with.clone(),
        Damage::JsonValue(at, value) => {
            replace_leaf(bytes, *at, value).unwrap_or_else(|| bytes.to_vec())
        }
    }
}

/// An error about a damaged record must name an object of the store: the
/// damaged one, or the one it disagrees with (a key file whose size differs
/// from what its manifest recorded names the key file).
fn check_error(err: &Error, damaged: &Path) {
    if matches!(
        err,
        Error::Corrupt { .. } | Error::UnsupportedFormatVersion { .. }
    ) {
        let shown = err.to_string();
        assert!(
            shown.contains("`store/"),
            "an error about a damaged record names no object: {shown} (damaged {damaged})"
        );
    }
}

async fn read_everything(bucket: Arc<InMemory>, damaged: &Path, files: &BTreeSet<String>) {
    let store = match CheckpointStore::open_existing(open_on(bucket)).await {
        Ok(store) => store,
        Err(e) => return check_error(&e, damaged),
    };
    if let Err(e) = store.load().await {
        check_error(&e, damaged);
    } else if let Ok(state) = store.load().await {
        for key_file in state.key_files() {
            if let Err(e) = store.read_keys(&key_file).await {
                check_error(&e, damaged);
            }
        }
    }
    for result in [
        store.status().await.map(|_| ()),
        store.orphans().await.map(|_| ()),
        store.latest_commit_intent().await.map(|_| ()),
        store.lease_status("pipeline").await.map(|_| ()),
    ] {
        if let Err(e) = result {
            check_error(&e, damaged);
        }
    }
    let options = lease_options();
    match Lease::acquire(&store, "pipeline", 1, options).await {
        Ok(lease) => {
            let _ = lease.release().await;
        }
        Err(e) => check_error(&e, damaged),
    }
    let table = MemoryTable::default();
    if let Err(e) = Committer::new(store.clone(), table.clone(), PIPELINE)
        .commit_pending()
        .await
    {
        check_error(&e, damaged);
    }
    let committed = table.appended();
    let distinct: BTreeSet<&String> = committed.iter().collect();
    assert_eq!(
        distinct.len(),
        committed.len(),
        "a file was committed twice: {committed:?}"
    );
    for path in &committed {
        assert!(
            files.contains(path),
            "a commit carried {path}, which no manifest had"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn damaged_records_never_panic_or_commit_wrongly(
        object in any::<prop::sample::Index>(),
        damage in damage(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            static BASE: std::sync::OnceLock<Base> = std::sync::OnceLock::new();
            let (objects, files) = match BASE.get() {
                Some(base) => base.clone(),
                None => {
                    let base = every_kind_of_record().await;
                    BASE.get_or_init(|| base).clone()
                }
            };
            let bucket = Arc::new(InMemory::new());
            let victim = object.index(objects.len());
            for (n, (path, bytes)) in objects.iter().enumerate() {
                let bytes = if n == victim {
                    Bytes::from(apply(&damage, bytes))
                } else {
                    bytes.clone()
                };
                bucket.put(path, PutPayload::from(bytes)).await.unwrap();
            }
            read_everything(bucket, &objects[victim].0, &files).await;
        });
    }
}

#[test]
fn the_base_store_holds_every_kind_of_record() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (objects, _) = runtime.block_on(every_kind_of_record());
    let paths: Vec<String> = objects.iter().map(|(p, _)| p.to_string()).collect();
    for part in [
        "store/tidemark.json",
        "/begun.json",
        "/inflight/",
        "/keys/",
        "store/sealed/",
        "store/committed/",
        "store/commits/",
        "store/index/",
        "store/index-keys/",
        "store/collected/",
        "/epochs/",
        "/heartbeats/",
        "store/layouts/",
    ] {
        assert!(
            paths.iter().any(|p| p.contains(part)),
            "no {part} object in {paths:#?}"
        );
    }
}
