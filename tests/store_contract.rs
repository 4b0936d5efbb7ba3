//! The checkpoint store contract: one suite, run against the in-memory store, the
//! local file system and a real S3-compatible server (moto) on localhost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Date64Array, Decimal128Array,
    FixedSizeBinaryArray, Int16Array, Int32Array, Int64Array, Int8Array, LargeBinaryArray,
    LargeStringArray, StringArray, TimestampMicrosecondArray, TimestampNanosecondArray,
    UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::future::join_all;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use support::{checkpointed_ids, Backend, Fault};
use tidemark::store::{
    canonical_key_type, CheckpointId, CheckpointState, CheckpointStore, CommitIntent,
    CompactionOptions, FileRecord, KeyColumn, KeySchema, Lease, LeaseOptions, StoreLocation,
    TableFileMetadata, KEPT_LEASE_EPOCHS,
};
use tidemark::Error;

fn int_keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).expect("key schema")
}

fn ids(values: impl IntoIterator<Item = i64>) -> Vec<ArrayRef> {
    vec![Arc::new(Int64Array::from_iter_values(values)) as ArrayRef]
}

async fn open(location: StoreLocation) -> CheckpointStore {
    CheckpointStore::open_at(location, int_keys())
        .await
        .expect("open store")
}

fn file_record(path: &str, rows: u64) -> FileRecord {
    FileRecord {
        path: path.to_string(),
        file_size_bytes: 1024,
        record_count: rows,
        table_metadata: TableFileMetadata {
            format: "test.file".into(),
            version: 1,
            body: serde_json::json!({ "path": path, "partition": { "day": 19000 } }),
        },
    }
}

/// Writes, seals and commits a checkpoint holding `keys`.
async fn committed_checkpoint(store: &CheckpointStore, keys: std::ops::Range<i64>) -> CheckpointId {
    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&ids(keys)).await.expect("stage");
    let id = writer.seal().await.expect("seal").checkpoint_id;
    store
        .mark_committed(&[id], &serde_json::json!({"sequence": 1}))
        .await
        .expect("commit");
    id
}

/// The intent of commit `sequence` of pipeline `p` to table `t`, carrying `id`.
fn intent(sequence: u64, id: CheckpointId) -> CommitIntent {
    CommitIntent {
        format_version: tidemark::store::FORMAT_VERSION,
        sequence,
        pipeline_id: "p".into(),
        table: "t".into(),
        checkpoints: vec![id],
        created_at: chrono::DateTime::UNIX_EPOCH,
    }
}

/// Claims commit `sequence` for checkpoint `id` and marks it committed, as a
/// committer whose table commit landed does.
async fn claim_and_mark(store: &CheckpointStore, sequence: u64, id: CheckpointId) {
    assert!(store
        .put_commit_intent(&intent(sequence, id))
        .await
        .expect("claim"));
    store
        .mark_committed(&[id], &serde_json::json!({ "sequence": sequence }))
        .await
        .expect("mark");
}

async fn put_raw(location: &StoreLocation, relative: &str, bytes: Vec<u8>) {
    let path = Path::from(format!("{}/{relative}", location.prefix).trim_start_matches('/'));
    location
        .object_store
        .put(&path, PutPayload::from(bytes))
        .await
        .expect("raw put");
}

async fn get_raw(location: &StoreLocation, relative: &str) -> Vec<u8> {
    let path = Path::from(format!("{}/{relative}", location.prefix).trim_start_matches('/'));
    location
        .object_store
        .get(&path)
        .await
        .expect("raw get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec()
}

// ---------------------------------------------------------------- the cases

async fn descriptor_pins_the_key_schema(backend: Backend) {
    let store = open(backend.location()).await;
    // Opening again with the same schema works; another schema is refused.
    open(backend.location()).await;
    let other = KeySchema::single("id", DataType::Utf8).expect("schema");
    let err = CheckpointStore::open_at(backend.location(), other)
        .await
        .expect_err("other schema");
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err}");
    let existing = CheckpointStore::open_existing(backend.location())
        .await
        .expect("open existing");
    assert_eq!(existing.key_schema(), store.key_schema());
}

async fn lifecycle_staged_checkpointed_committed(backend: Backend) {
    let store = open(backend.location()).await;
    let mut writer = store.begin().await.expect("begin");
    let id = writer.id();
    writer.stage_keys(&ids(0..100)).await.expect("stage");
    writer.stage_keys(&ids(100..150)).await.expect("stage");
    writer
        .record_in_flight("s3://table/data/a.parquet")
        .await
        .expect("in flight");
    writer
        .stage_file(file_record("s3://table/data/a.parquet", 150))
        .await
        .expect("stage file");
    writer.set_property("shard", "part-0001.parquet");

    // Staged work is invisible, from this handle and from another one.
    assert_eq!(
        store.checkpoint_state(id).await.expect("state"),
        CheckpointState::Staged
    );
    let other = open(backend.location()).await;
    assert_eq!(other.load().await.expect("load").key_count(), 0);
    assert!(other
        .load()
        .await
        .expect("load")
        .pending_commit()
        .is_empty());

    let manifest = writer.seal().await.expect("seal");
    assert_eq!(manifest.key_count(), 150);
    assert_eq!(
        manifest.files,
        vec![file_record("s3://table/data/a.parquet", 150)]
    );
    assert_eq!(
        manifest.properties.get("shard").map(String::as_str),
        Some("part-0001.parquet")
    );
    assert_eq!(
        other.checkpoint_state(id).await.expect("state"),
        CheckpointState::Checkpointed
    );
    let state = other.load().await.expect("load");
    assert_eq!(state.key_count(), 150);
    assert_eq!(state.pending_commit().len(), 1);
    assert_eq!(state.pending_commit()[0].files.len(), 1);
    assert_eq!(other.manifest(id).await.expect("manifest"), manifest);
    assert_eq!(checkpointed_ids(&other).await, (0..150).collect::<Vec<_>>());

    other
        .mark_committed(&[id], &serde_json::json!({"snapshot": 7}))
        .await
        .expect("commit");
    assert_eq!(
        store.checkpoint_state(id).await.expect("state"),
        CheckpointState::Committed
    );
    let state = store.load().await.expect("load");
    assert!(state.pending_commit().is_empty());
    assert_eq!(state.key_count(), 150, "committed keys stay skipped");
    // Marking again is a no-op.
    store
        .mark_committed(&[id], &serde_json::json!({"snapshot": 8}))
        .await
        .expect("again");
}

async fn keys_keep_their_exact_types(backend: Backend) {
    let two53 = 1i64 << 53;
    let cases: Vec<ArrayRef> = vec![
        Arc::new(Int8Array::from(vec![Some(i8::MIN), None, Some(i8::MAX)])),
        Arc::new(Int16Array::from(vec![Some(i16::MIN), None, Some(i16::MAX)])),
        Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(i32::MAX)])),
        Arc::new(Int64Array::from(vec![
            Some(two53 - 1),
            Some(two53),
            Some(two53 + 1),
            Some(i64::MIN),
            Some(i64::MAX),
            None,
        ])),
        Arc::new(UInt8Array::from(vec![Some(0), None, Some(u8::MAX)])),
        Arc::new(UInt16Array::from(vec![Some(0), None, Some(u16::MAX)])),
        Arc::new(UInt32Array::from(vec![Some(0), None, Some(u32::MAX)])),
        Arc::new(UInt64Array::from(vec![
            Some(0),
            Some(u64::MAX),
            Some(u64::MAX - 1),
            None,
        ])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some(""),
            Some("ünïcode"),
        ])),
        Arc::new(LargeStringArray::from(vec![Some("x"), None, Some("y")])),
        Arc::new(BinaryArray::from(vec![
            Some(&b"\x00\xff"[..]),
            None,
            Some(&b""[..]),
        ])),
        Arc::new(LargeBinaryArray::from(vec![Some(&b"\x01"[..]), None])),
        Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                vec![Some([0u8; 16]), None, Some([255u8; 16])].into_iter(),
                16,
            )
            .expect("fixed size binary"),
        ),
        Arc::new(Date32Array::from(vec![Some(-719162), None, Some(2932896)])),
        Arc::new(Date64Array::from(vec![
            Some(-62135596800000),
            None,
            Some(1_700_000_000_000),
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(i64::MIN + 1), None, Some(i64::MAX)])
                .with_timezone("UTC"),
        ),
        Arc::new(TimestampNanosecondArray::from(vec![
            Some(1),
            None,
            Some(i64::MAX),
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(i128::from(i64::MAX) * 1000 + 7), None, Some(-1)])
                .with_precision_and_scale(38, 3)
                .expect("decimal"),
        ),
    ];
    for (n, array) in cases.into_iter().enumerate() {
        let keys = KeySchema::single("k", array.data_type().clone()).expect("supported type");
        let location = backend.location();
        let location = StoreLocation::from_object_store(
            location.object_store,
            location.prefix.clone().join(format!("t{n}").as_str()),
        );
        let store = CheckpointStore::open_at(location, keys)
            .await
            .expect("open");
        let mut writer = store.begin().await.expect("begin");
        writer
            .stage_keys(std::slice::from_ref(&array))
            .await
            .expect("stage");
        writer.seal().await.expect("seal");
        let state = store.load().await.expect("load");
        let files = state.key_files();
        assert_eq!(files.len(), 1);
        let batches = store.read_keys(&files[0]).await.expect("read");
        let read: Vec<ArrayRef> = batches.iter().map(|b| b.column(0).clone()).collect();
        let read = arrow::compute::concat(&read.iter().map(|a| a.as_ref()).collect::<Vec<_>>())
            .expect("concat");
        // Strings and binary come back in their one kept spelling; every
        // other type exactly as it went in.
        let kept = canonical_key_type(array.data_type());
        assert_eq!(read.data_type(), &kept, "type of case {n}");
        let expected = arrow::compute::cast(&array, &kept).expect("cast");
        assert_eq!(
            &read,
            &expected,
            "values of case {n} ({})",
            array.data_type()
        );
    }

    // A composite key keeps every column, nulls included.
    let keys = KeySchema::new(vec![
        KeyColumn::new("tenant", DataType::Utf8),
        KeyColumn::new("seq", DataType::UInt64),
        KeyColumn::new("at", DataType::Timestamp(TimeUnit::Millisecond, None)),
    ])
    .expect("composite");
    let location = backend.location();
    let location = StoreLocation::from_object_store(
        location.object_store,
        location.prefix.clone().join("composite"),
    );
    let store = CheckpointStore::open_at(location, keys.clone())
        .await
        .expect("open");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
        Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, Some(1)])),
        Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
            Some(1),
            Some(2),
            None,
        ])),
    ];
    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&columns).await.expect("stage");
    writer.seal().await.expect("seal");
    let files = store.load().await.expect("load").key_files();
    let batch = &store.read_keys(&files[0]).await.expect("read")[0];
    let expected = RecordBatch::try_new(keys.arrow_schema().clone(), columns).expect("batch");
    assert_eq!(batch, &expected);
}

async fn mismatched_key_columns_are_refused(backend: Backend) {
    let store = open(backend.location()).await;
    let mut writer = store.begin().await.expect("begin");
    let wrong_type: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(vec![1, 2]))];
    let err = writer
        .stage_keys(&wrong_type)
        .await
        .expect_err("wrong type");
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err}");
    assert!(err.to_string().contains("Int32"), "{err}");
    let too_many = vec![ids(0..2)[0].clone(), ids(0..2)[0].clone()];
    let err = writer.stage_keys(&too_many).await.expect_err("two columns");
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err}");
    let floats = KeySchema::single("score", DataType::Float64).expect_err("float key");
    assert!(floats.to_string().contains("floating-point"), "{floats}");
    assert_eq!(writer.staged_key_count(), 0);
    writer.stage_keys(&ids(0..3)).await.expect("right type");
    writer.seal().await.expect("seal");
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2]);
}

async fn sealed_checkpoints_take_nothing_more(backend: Backend) {
    let store = open(backend.location()).await;
    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&ids(0..10)).await.expect("stage");
    let manifest = writer.seal().await.expect("seal");
    assert_eq!(
        writer.seal().await.expect("seal again"),
        manifest,
        "sealing again is idempotent"
    );
    let err = writer
        .stage_keys(&ids(10..20))
        .await
        .expect_err("stage after seal");
    assert!(matches!(err, Error::AlreadySealed { .. }), "{err}");
    let err = writer
        .record_in_flight("x.parquet")
        .await
        .expect_err("in flight after seal");
    assert!(matches!(err, Error::AlreadySealed { .. }), "{err}");
    let err = store
        .begin_with_id(manifest.checkpoint_id)
        .await
        .expect_err("begin sealed id");
    assert!(matches!(err, Error::AlreadySealed { .. }), "{err}");
    assert_eq!(checkpointed_ids(&store).await, (0..10).collect::<Vec<_>>());
}

async fn unknown_and_unsealed_checkpoints_are_errors(backend: Backend) {
    let store = open(backend.location()).await;
    let unknown = CheckpointId::new();
    let commit = serde_json::json!({});
    assert!(matches!(
        store.checkpoint_state(unknown).await,
        Err(Error::UnknownCheckpoint { .. })
    ));
    assert!(matches!(
        store.manifest(unknown).await,
        Err(Error::UnknownCheckpoint { .. })
    ));
    assert!(matches!(
        store.mark_committed(&[unknown], &commit).await,
        Err(Error::UnknownCheckpoint { .. })
    ));

    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&ids(0..5)).await.expect("stage");
    let err = store
        .mark_committed(&[writer.id()], &commit)
        .await
        .expect_err("commit unsealed");
    assert!(matches!(err, Error::NotSealed { .. }), "{err}");
    assert!(matches!(
        store.manifest(writer.id()).await,
        Err(Error::NotSealed { .. })
    ));
    let err = writer
        .stage_file(file_record("never-announced.parquet", 1))
        .await
        .expect_err("not in flight");
    assert!(matches!(err, Error::NotInFlight { .. }), "{err}");
    // Nothing was lost: the writer still seals its keys.
    writer.seal().await.expect("seal");
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2, 3, 4]);
}

async fn abandoned_in_flight_writes_are_recorded(backend: Backend) {
    let store = open(backend.location()).await;
    let mut writer = store.begin().await.expect("begin");
    writer
        .record_in_flight("data/kept.parquet")
        .await
        .expect("in flight");
    writer
        .record_in_flight("data/abandoned.parquet")
        .await
        .expect("in flight");
    writer
        .stage_file(file_record("data/kept.parquet", 3))
        .await
        .expect("stage");
    let manifest = writer.seal().await.expect("seal");
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(
        manifest.abandoned_writes,
        vec!["data/abandoned.parquet".to_string()]
    );
}

async fn concurrent_sealers_exactly_one_wins(backend: Backend) {
    let store = open(backend.location()).await;
    let id = CheckpointId::new();
    let mut writers = Vec::new();
    for n in 0..8i64 {
        // Each racer opens its own handle, as separate processes would.
        let handle = open(backend.location()).await;
        let mut writer = handle.begin_with_id(id).await.expect("begin");
        writer
            .stage_keys(&ids(n * 100..n * 100 + 10))
            .await
            .expect("stage");
        writers.push(writer);
    }
    let results = join_all(writers.iter_mut().map(|w| w.seal())).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one seal wins: {results:?}");
    let winner = winners[0].clone();
    for result in &results {
        if let Err(err) = result {
            match err {
                Error::AlreadySealed { sealed_by, .. } => {
                    assert_eq!(sealed_by, &winner.writer_id.to_string())
                }
                other => panic!("unexpected error {other}"),
            }
        }
    }
    let n = writers
        .iter()
        .position(|w| w.writer_id() == winner.writer_id)
        .expect("winner") as i64;
    assert_eq!(
        checkpointed_ids(&store).await,
        (n * 100..n * 100 + 10).collect::<Vec<_>>()
    );
    assert_eq!(store.manifest(id).await.expect("manifest"), winner);
}

/// Two attempts at one checkpoint (a retried shard): the loser of the race to
/// seal wrote a data file that no manifest names, and only its own in-flight
/// record says so. Orphan collection must find it from that record, since the
/// winner's manifest lists only the winner's abandoned writes.
async fn the_losing_sealers_writes_are_orphans(backend: Backend) {
    let store = open(backend.location()).await;
    let id = CheckpointId::new();
    let mut winner = store.begin_with_id(id).await.expect("begin");
    let mut loser = open(backend.location())
        .await
        .begin_with_id(id)
        .await
        .expect("begin");
    winner
        .record_in_flight("data/winner.parquet")
        .await
        .expect("in flight");
    winner
        .record_in_flight("data/winner-abandoned.parquet")
        .await
        .expect("in flight");
    loser
        .record_in_flight("data/loser.parquet")
        .await
        .expect("in flight");
    loser
        .record_in_flight_prefix("data/loser-dir/")
        .await
        .expect("in flight");
    winner
        .stage_file(file_record("data/winner.parquet", 3))
        .await
        .expect("stage");
    loser
        .stage_file(file_record("data/loser.parquet", 3))
        .await
        .expect("stage");
    let manifest = winner.seal().await.expect("seal");
    let err = loser.seal().await.expect_err("the loser's seal");
    assert!(matches!(err, Error::AlreadySealed { .. }), "{err}");
    assert_eq!(
        manifest.abandoned_writes,
        vec!["data/winner-abandoned.parquet".to_string()]
    );
    let orphans = store.orphans().await.expect("orphans");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].checkpoint, id);
    assert_eq!(
        orphans[0].files,
        vec![
            "data/loser.parquet".to_string(),
            "data/winner-abandoned.parquet".to_string()
        ]
    );
    assert_eq!(orphans[0].prefixes, vec!["data/loser-dir/".to_string()]);
    store
        .record_collected(id, &orphans[0].files)
        .await
        .expect("record collected");
    let left = store.orphans().await.expect("orphans");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].files.is_empty(), "{left:?}");
    assert_eq!(left[0].prefixes, vec!["data/loser-dir/".to_string()]);
}

/// Committers racing to claim one commit sequence, each through its own
/// handle: exactly one claim wins, and the intent stored is the winner's.
async fn concurrent_claims_of_a_sequence_exactly_one_wins(backend: Backend) {
    let store = open(backend.location()).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(open(backend.location()).await);
    }
    let intents: Vec<CommitIntent> = (0..6)
        .map(|n| CommitIntent {
            table: format!("table-{n}"),
            ..intent(1, CheckpointId::new())
        })
        .collect();
    let claims = join_all(
        handles
            .iter()
            .zip(&intents)
            .map(|(handle, intent)| handle.put_commit_intent(intent)),
    )
    .await;
    let won: Vec<usize> = claims
        .iter()
        .enumerate()
        .filter(|(_, claim)| *claim.as_ref().expect("claim"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(won.len(), 1, "exactly one claim wins: {claims:?}");
    let stored = store.commit_intent(1).await.expect("read").expect("stored");
    assert_eq!(stored, intents[won[0]], "the winner's intent is stored");
    assert_eq!(
        store.latest_commit_intent().await.expect("latest"),
        Some(stored.clone())
    );
    // A later claim of the same sequence loses too.
    assert!(!store.put_commit_intent(&intents[0]).await.expect("claim"));
}

/// The committed sequence is the latest intent's once its first checkpoint is
/// marked committed, else the one before it: none while the first commit
/// waits for its marks.
async fn the_committed_sequence_follows_the_marks(backend: Backend) {
    let store = open(backend.location()).await;
    assert_eq!(store.committed_sequence().await.expect("sequence"), None);
    let mut marked = Vec::new();
    for sequence in 1..=3u64 {
        let keys = (sequence as i64) * 10;
        let mut writer = store.begin().await.expect("begin");
        writer
            .stage_keys(&ids(keys..keys + 5))
            .await
            .expect("stage");
        let id = writer.seal().await.expect("seal").checkpoint_id;
        assert!(store
            .put_commit_intent(&intent(sequence, id))
            .await
            .expect("claim"));
        assert_eq!(
            store.committed_sequence().await.expect("sequence"),
            marked.last().copied(),
            "commit {sequence} claimed, not marked yet"
        );
        store
            .mark_committed(&[id], &serde_json::json!({ "sequence": sequence }))
            .await
            .expect("mark");
        marked.push(sequence);
        assert_eq!(
            store.committed_sequence().await.expect("sequence"),
            Some(sequence),
            "commit {sequence} marked"
        );
    }
}

/// A lease held by a live run is refused to a second contender, and taken
/// at once after its holder released it: what `status` calls live, and what
/// keeps two runs of a pipeline apart.
async fn a_held_lease_is_refused_until_released(backend: Backend) {
    let store = open(backend.location()).await;
    let options = || lease_for(std::time::Duration::from_secs(60));
    let first = Lease::acquire(&store, "held", 1, options())
        .await
        .expect("first");
    let status = store
        .lease_status("held")
        .await
        .expect("status")
        .expect("a lease");
    assert!(
        !status.released() && status.is_live(store.now()),
        "{status:?}"
    );
    let second = open(backend.location()).await;
    let err = Lease::acquire(&second, "held", 1, options())
        .await
        .expect_err("a second holder");
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
    first.release().await.expect("release");
    let status = store
        .lease_status("held")
        .await
        .expect("status")
        .expect("a lease");
    assert!(
        status.released() && !status.is_live(store.now()),
        "{status:?}"
    );
    let taken = Lease::acquire(&second, "held", 1, options())
        .await
        .expect("taken at once after the release");
    taken.release().await.expect("release");
}

async fn a_takeover_seals_the_older_run_s_unfinished_checkpoints(backend: Backend) {
    let store = open(backend.location()).await;
    let options = || lease_for(std::time::Duration::from_secs(60));
    let old = Lease::acquire(&store, "takeover", 1, options())
        .await
        .expect("first");
    assert_eq!(old.fenced_checkpoints(), 0, "nothing to fence");
    let mut writer = store.begin_fenced(old.fence()).await.expect("begin");
    writer.stage_keys(&ids(0..10)).await.expect("stage");
    // The old run lets go (or its lease expires) with its checkpoint unsealed.
    old.release().await.expect("release");

    let new = Lease::acquire(&store, "takeover", 1, options())
        .await
        .expect("the takeover");
    assert_eq!(new.fenced_checkpoints(), 1, "the old run's checkpoint");
    let err = writer.seal().await.expect_err("the old writer is fenced");
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    let manifest = store.manifest(writer.id()).await.expect("sealed empty");
    assert_eq!(manifest.key_count(), 0, "{manifest:?}");
    new.release().await.expect("release");

    let again = Lease::acquire(&store, "takeover", 1, options())
        .await
        .expect("the next run");
    assert_eq!(again.fenced_checkpoints(), 0, "fenced once only");
    again.release().await.expect("release");
}

async fn a_dropped_lease_stops_renewing(backend: Backend) {
    let store = open(backend.location()).await;
    let ttl = std::time::Duration::from_secs(2);
    let lease = Lease::acquire(&store, "dropped", 1, lease_for(ttl))
        .await
        .expect("acquire");
    // Renewed every third of the ttl while held: live past its first expiry
    // (a renewal has a whole ttl less one third to land, on a busy machine).
    tokio::time::sleep(ttl * 3 / 2).await;
    let status = store.lease_status("dropped").await.expect("status");
    assert!(status.is_some_and(|s| s.is_live(store.now())), "renewed");
    // Dropped without a release (a run that panics): it is left to expire.
    drop(lease);
    tokio::time::sleep(ttl * 2).await;
    let status = store
        .lease_status("dropped")
        .await
        .expect("status")
        .expect("a lease");
    assert!(
        !status.released() && !status.is_live(store.now()),
        "expired, not renewed after the drop: {status:?}"
    );
    let next = Lease::acquire(&store, "dropped", 1, lease_for(ttl))
        .await
        .expect("taken over once expired");
    next.release().await.expect("release");
}

async fn lease_scopes_are_plain_names(backend: Backend) {
    let store = open(backend.location()).await;
    for scope in ["", "a/b", "../up", "a b", "shard:1", "x\ny"] {
        let err = Lease::acquire(
            &store,
            scope,
            1,
            lease_for(std::time::Duration::from_secs(60)),
        )
        .await
        .expect_err("not a plain name");
        assert!(
            matches!(err, Error::InvalidLeaseScope { .. }),
            "{scope:?}: {err}"
        );
        let err = store
            .lease_status(scope)
            .await
            .expect_err("not a plain name");
        assert!(
            matches!(err, Error::InvalidLeaseScope { .. }),
            "{scope:?}: {err}"
        );
    }
    assert_eq!(
        store.lease_scopes().await.expect("scopes"),
        Vec::<String>::new()
    );
    let lease = Lease::acquire(
        &store,
        "shard-1_of.2",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect("a plain name");
    lease.release().await.expect("release");
    assert_eq!(
        store.lease_scopes().await.expect("scopes"),
        vec!["shard-1_of.2"]
    );
}

async fn a_holder_that_dies_before_its_first_heartbeat_holds_the_lease_until_the_record_expires(
    backend: Backend,
) {
    let (location, faulty) = backend.faulty();
    let dying = open(location).await;
    faulty.inject("/heartbeats/", Fault::CrashBefore, 1);
    Lease::acquire(
        &dying,
        "unbeaten",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect_err("died before the heartbeat");

    let store = open(backend.location()).await;
    let status = store
        .lease_status("unbeaten")
        .await
        .expect("status")
        .expect("the epoch was taken");
    assert!(status.heartbeat.is_none(), "{status:?}");
    assert!(
        status.is_live(store.now()),
        "the epoch record alone holds the lease: {status:?}"
    );
    let err = Lease::acquire(
        &store,
        "unbeaten",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect_err("held by the record");
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
}

async fn a_lease_epoch_whose_put_landed_before_its_retry_is_taken(backend: Backend) {
    let (location, faulty) = backend.faulty();
    let store = open(location).await;
    faulty.inject("/epochs/", Fault::LandedBeforeRetry, 1);
    let lease = Lease::acquire(
        &store,
        "retried",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect("the epoch written by this acquisition is its own");
    assert_eq!(faulty.faults_fired(), 1);
    assert_eq!(lease.claim().epoch, 1);
    lease.release().await.expect("release");
}

async fn a_lease_epoch_taken_first_by_a_rival_is_not_shared(backend: Backend) {
    let (location, faulty) = backend.faulty();
    let store = open(location).await;
    // The rival takes epoch 1 after this acquisition read that none was
    // taken, and before its own put of epoch 1.
    let rival = open(backend.location()).await;
    faulty.before_put(
        "/epochs/00000000000000000001.json",
        Box::pin(async move {
            let lease = Lease::acquire(
                &rival,
                "contended",
                1,
                lease_for(std::time::Duration::from_secs(60)),
            )
            .await
            .expect("the rival");
            assert_eq!(lease.claim().epoch, 1);
            // Dropped without a release: its records hold it for a minute.
        }),
    );
    let err = Lease::acquire(
        &store,
        "contended",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect_err("the rival holds epoch 1");
    assert!(matches!(err, Error::LeaseHeld { epoch: 1, .. }), "{err}");
}

async fn old_lease_epochs_are_pruned_with_their_stray_heartbeats(backend: Backend) {
    let location = backend.location();
    let store = open(backend.location()).await;
    let take = || async {
        let lease = Lease::acquire(
            &store,
            "pruned",
            1,
            lease_for(std::time::Duration::from_secs(60)),
        )
        .await
        .expect("acquire");
        let epoch = lease.claim().epoch;
        lease.release().await.expect("release");
        epoch
    };
    take().await;
    take().await;
    // Epoch 1's record is gone but its heartbeat is not (a renewal that
    // raced the pruning of its epoch writes one).
    let raw = Path::from(
        format!(
            "{}/lease/pruned/epochs/00000000000000000001.json",
            location.prefix
        )
        .trim_start_matches('/'),
    );
    location
        .object_store
        .delete(&raw)
        .await
        .expect("raw delete");
    let mut last = 0;
    for _ in 0..KEPT_LEASE_EPOCHS {
        last = take().await;
    }
    assert_eq!(last, 2 + KEPT_LEASE_EPOCHS);
    let listed = |dir: &'static str| {
        let location = location.clone();
        async move {
            let prefix = Path::from(
                format!("{}/lease/pruned/{dir}", location.prefix).trim_start_matches('/'),
            );
            let mut names: Vec<String> = location
                .object_store
                .list(Some(&prefix))
                .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
                .try_collect()
                .await
                .expect("list");
            names.sort();
            names
        }
    };
    let kept: Vec<String> = (2..=last).map(|n| format!("{n:020}.json")).collect();
    assert_eq!(listed("epochs").await, kept, "the epochs kept");
    assert_eq!(listed("heartbeats").await, kept, "no stray heartbeat left");
}

async fn a_run_of_another_shard_count_waits_for_the_live_shards(backend: Backend) {
    let store = open(backend.location()).await;
    let ttl = || lease_for(std::time::Duration::from_secs(60));
    let shard = Lease::acquire(&store, "shard-0-of-2", 2, ttl())
        .await
        .expect("a shard of two");
    assert_eq!(shard.claim().layout, 1);
    // Its sibling joins the same layout.
    let sibling = Lease::acquire(&store, "shard-1-of-2", 2, ttl())
        .await
        .expect("the other shard of two");
    assert_eq!(sibling.claim().layout, 1);
    sibling.release().await.expect("release");
    let err = Lease::acquire(&store, "pipeline", 1, ttl())
        .await
        .expect_err("a shard of the old layout is live");
    match &err {
        Error::ShardLayoutInUse {
            shards: 1,
            current_shards: 2,
            scope,
            epoch: 1,
            ..
        } => assert_eq!(scope, "shard-0-of-2"),
        other => panic!("{other}"),
    }
    shard.release().await.expect("release");
    let whole = Lease::acquire(&store, "pipeline", 1, ttl())
        .await
        .expect("no shard is live");
    assert_eq!(whole.claim().layout, 2, "a new layout of one shard");
    whole.release().await.expect("release");
}

async fn a_shard_layout_record_is_checked_against_its_name(backend: Backend) {
    let location = backend.location();
    let store = open(backend.location()).await;
    let lease = Lease::acquire(
        &store,
        "pipeline",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect("acquire");
    lease.release().await.expect("release");
    let name = "layouts/00000000000000000001.json";
    let good: serde_json::Value =
        serde_json::from_slice(&get_raw(&location, name).await).expect("json");
    for (field, value, says) in [
        ("layout", 2, "names layout 2 of 1"),
        ("shards", 0, "of 0 shard"),
    ] {
        let mut altered = good.clone();
        altered[field] = value.into();
        put_raw(&location, name, serde_json::to_vec(&altered).expect("json")).await;
        let err = Lease::acquire(
            &store,
            "pipeline",
            1,
            lease_for(std::time::Duration::from_secs(60)),
        )
        .await
        .expect_err("an altered layout");
        assert!(matches!(err, Error::Corrupt { .. }), "{field}: {err}");
        assert!(err.to_string().contains(says), "{field}: {err}");
    }
}

async fn a_shard_s_takeover_leaves_its_siblings_checkpoints_alone(backend: Backend) {
    let store = open(backend.location()).await;
    let ttl = || lease_for(std::time::Duration::from_secs(60));
    // Shard 1 has had a run before: its next epoch is 2.
    let first = Lease::acquire(&store, "shard-1-of-2", 2, ttl())
        .await
        .expect("shard 1, epoch 1");
    first.release().await.expect("release");
    let sibling = Lease::acquire(&store, "shard-0-of-2", 2, ttl())
        .await
        .expect("shard 0, epoch 1");
    let mut writer = store.begin_fenced(sibling.fence()).await.expect("begin");
    writer.stage_keys(&ids(0..5)).await.expect("stage");

    let taken = Lease::acquire(&store, "shard-1-of-2", 2, ttl())
        .await
        .expect("shard 1, epoch 2");
    assert_eq!(taken.claim().epoch, 2);
    assert_eq!(
        taken.fenced_checkpoints(),
        0,
        "shard 0's run is not shard 1's"
    );
    let manifest = writer.seal().await.expect("shard 0 seals");
    assert_eq!(manifest.key_count(), 5);
    taken.release().await.expect("release");
    sibling.release().await.expect("release");
}

async fn a_shard_layout_started_first_by_a_rival_is_not_shared(backend: Backend) {
    let (location, faulty) = backend.faulty();
    let store = open(location).await;
    let ttl = || lease_for(std::time::Duration::from_secs(60));
    let whole = Lease::acquire(&store, "pipeline", 1, ttl())
        .await
        .expect("layout 1, one shard");
    whole.release().await.expect("release");
    // A run of three shards starts layout 2 after this run of two read that
    // layout 1 is current, and before its own put of layout 2.
    let rival = open(backend.location()).await;
    faulty.before_put(
        "layouts/00000000000000000002.json",
        Box::pin(async move {
            let lease = Lease::acquire(&rival, "shard-0-of-3", 3, ttl())
                .await
                .expect("the rival");
            assert_eq!(lease.claim().layout, 2);
            // Dropped without a release: its records hold it for a minute.
        }),
    );
    let err = Lease::acquire(&store, "shard-0-of-2", 2, ttl())
        .await
        .expect_err("the rival's layout is live");
    assert!(
        matches!(
            err,
            Error::ShardLayoutInUse {
                shards: 2,
                current_shards: 3,
                ..
            }
        ),
        "{err}"
    );
}

/// Lease options with time to live `ttl`.
/// `status` counts every state a checkpoint passes through, as another handle
/// sees it: staged (with its writers' lease and in-flight records), waiting
/// for a commit (with its rows), committed (rows), compacted (rows still
/// counted); commit intents, the latest and the last finished commit;
/// orphans; leases. A store is clean only with nothing staged, pending or
/// orphaned.
async fn the_status_counts_every_state(backend: Backend) {
    let store = open(backend.location()).await;
    let status = |store: CheckpointStore| async move { store.status().await.expect("status") };
    let fresh = status(open(backend.location()).await).await;
    assert!(fresh.is_clean(), "{fresh:?}");
    assert_eq!(
        (
            fresh.key_count,
            fresh.sealed,
            fresh.latest_commit,
            fresh.commit_intents
        ),
        (0, 0, None, 0)
    );
    assert_eq!(fresh.last_commit, None);
    let lease = Lease::acquire(
        &store,
        "status",
        1,
        lease_for(std::time::Duration::from_secs(60)),
    )
    .await
    .expect("lease");

    // A run in progress: staged only, not clean.
    let mut staged = store.begin_fenced(lease.fence()).await.expect("begin");
    staged.stage_keys(&ids(15..20)).await.expect("stage");
    staged
        .record_in_flight("data/3.parquet")
        .await
        .expect("in flight");
    let now = status(open(backend.location()).await).await;
    assert!(!now.is_clean(), "a staged checkpoint: {now:?}");
    assert_eq!(now.staged.len(), 1, "{now:?}");
    assert_eq!(now.staged[0].id, staged.id());
    assert_eq!(now.staged[0].in_flight_records, 1);
    assert_eq!(now.staged[0].leases.len(), 1, "{now:?}");
    assert_eq!(now.leases.len(), 1, "{now:?}");
    assert_eq!(now.leases[0].0, "status");
    assert!(now.leases[0].1.is_live(store.now()));

    // Checkpoint 1 committed (100 rows); checkpoint 2 waiting for commit 2
    // (40 rows) with a write it abandoned.
    let mut first = store.begin_fenced(lease.fence()).await.expect("begin");
    first.stage_keys(&ids(0..10)).await.expect("stage");
    first
        .record_in_flight("data/1.parquet")
        .await
        .expect("in flight");
    first
        .stage_file(file_record("data/1.parquet", 100))
        .await
        .expect("stage file");
    let first = first.seal().await.expect("seal").checkpoint_id;
    claim_and_mark(&store, 1, first).await;
    let mut second = store.begin_fenced(lease.fence()).await.expect("begin");
    second.stage_keys(&ids(10..15)).await.expect("stage");
    for path in ["data/2.parquet", "data/abandoned.parquet"] {
        second.record_in_flight(path).await.expect("in flight");
    }
    second
        .stage_file(file_record("data/2.parquet", 40))
        .await
        .expect("stage file");
    let second = second.seal().await.expect("seal").checkpoint_id;
    assert!(store
        .put_commit_intent(&intent(2, second))
        .await
        .expect("claim"));

    let now = status(open(backend.location()).await).await;
    assert_eq!(now.key_count, 15, "{now:?}");
    assert_eq!(now.pending_commit, vec![second]);
    assert_eq!(
        (now.committed, now.compacted, now.fenced, now.sealed),
        (1, 0, 0, 2),
        "{now:?}"
    );
    assert_eq!((now.rows_committed, now.rows_pending_commit), (100, 40));
    assert_eq!((now.latest_commit, now.commit_intents), (Some(2), 2));
    assert_eq!(
        now.last_commit.as_ref().map(|c| c.sequence),
        Some(1),
        "commit 2 waits for its mark"
    );
    assert_eq!(now.orphans.len(), 1, "{now:?}");
    assert_eq!(now.orphans[0].checkpoint, second);
    assert_eq!(
        now.orphans[0].files,
        vec!["data/abandoned.parquet".to_string()]
    );

    // Commit 2 lands and is marked; the run seals and lets go. Only the
    // orphan is left: not clean.
    store
        .mark_committed(&[second], &serde_json::json!({ "sequence": 2 }))
        .await
        .expect("mark");
    staged
        .stage_file(file_record("data/3.parquet", 7))
        .await
        .expect("stage file");
    let third = staged.seal().await.expect("seal").checkpoint_id;
    claim_and_mark(&store, 3, third).await;
    lease.release().await.expect("release");
    let now = status(open(backend.location()).await).await;
    assert!(
        now.staged.is_empty() && now.pending_commit.is_empty(),
        "{now:?}"
    );
    assert!(!now.is_clean(), "an orphan is left: {now:?}");
    assert_eq!((now.rows_committed, now.rows_pending_commit), (147, 0));
    assert_eq!(now.last_commit.as_ref().map(|c| c.sequence), Some(3));
    assert_eq!((now.committed, now.sealed, now.key_count), (3, 3, 20));
    assert!(!now.leases[0].1.is_live(store.now()), "released");

    // Compaction moves committed checkpoints into the index; their rows and
    // keys still count.
    store
        .compact(&CompactionOptions::default())
        .await
        .expect("compact");
    let now = status(open(backend.location()).await).await;
    assert!(now.compacted > 0, "{now:?}");
    assert_eq!(now.committed + now.compacted, 3, "{now:?}");
    assert_eq!(now.sealed, 3, "{now:?}");
    assert_eq!((now.rows_committed, now.key_count), (147, 20), "{now:?}");
}

fn lease_for(ttl: std::time::Duration) -> LeaseOptions {
    LeaseOptions {
        ttl,
        ..Default::default()
    }
}

async fn lost_seal_response_is_recovered(backend: Backend) {
    let (location, faulty) = backend.faulty();
    let store = open(location).await;
    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&ids(0..4)).await.expect("stage");
    faulty.inject("sealed/", Fault::LoseResponse, 1);
    writer.seal().await.expect_err("the response was lost");
    // The seal did land; retrying finds this writer's own manifest.
    let manifest = writer.seal().await.expect("retry");
    assert_eq!(manifest.key_count(), 4);
    let failed_before = {
        let mut w = store.begin().await.expect("begin");
        w.stage_keys(&ids(10..12)).await.expect("stage");
        faulty.inject("sealed/", Fault::FailBefore, 1);
        w.seal()
            .await
            .expect_err("failed before reaching the store");
        assert!(matches!(
            store.checkpoint_state(w.id()).await,
            Ok(CheckpointState::Staged)
        ));
        w.seal().await.expect("retry")
    };
    assert_eq!(failed_before.key_count(), 2);
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2, 3, 10, 11]);
}

async fn corrupt_objects_are_reported(backend: Backend) {
    let location = backend.location();
    let store = open(backend.location()).await;
    let mut writer = store.begin().await.expect("begin");
    writer.stage_keys(&ids(0..1000)).await.expect("stage");
    let manifest = writer.seal().await.expect("seal");
    let id = manifest.checkpoint_id;
    let manifest_path = format!("sealed/{id}.json");
    let good_manifest = get_raw(&location, &manifest_path).await;

    // Truncated manifest.
    put_raw(
        &location,
        &manifest_path,
        good_manifest[..good_manifest.len() / 2].to_vec(),
    )
    .await;
    let err = store.load().await.expect_err("truncated manifest");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("seal manifest"),
        "{err}"
    );
    // A manifest from a newer tidemark.
    let mut newer: serde_json::Value = serde_json::from_slice(&good_manifest).expect("json");
    newer["format_version"] = serde_json::json!(99);
    put_raw(
        &location,
        &manifest_path,
        serde_json::to_vec(&newer).expect("json"),
    )
    .await;
    let err = store.load().await.expect_err("newer manifest");
    assert!(
        matches!(err, Error::UnsupportedFormatVersion { found: 99, .. }),
        "{err}"
    );
    put_raw(&location, &manifest_path, good_manifest).await;

    // Truncated key file: reported, not read as fewer keys.
    let key_file = &manifest.key_files[0];
    let good_keys = get_raw(&location, &key_file.path).await;
    put_raw(
        &location,
        &key_file.path,
        good_keys[..good_keys.len() - 10].to_vec(),
    )
    .await;
    let err = store
        .read_keys(key_file)
        .await
        .expect_err("truncated key file");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("key file"),
        "{err}"
    );
    // A valid Parquet file with fewer rows than recorded: its size differs.
    let mut short = store.begin().await.expect("begin");
    short.stage_keys(&ids(0..10)).await.expect("stage");
    let short_manifest = short.seal().await.expect("seal");
    let short_bytes = get_raw(&location, &short_manifest.key_files[0].path).await;
    put_raw(&location, &key_file.path, short_bytes).await;
    let err = store.read_keys(key_file).await.expect_err("short key file");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("truncated or replaced"),
        "{err}"
    );
    // The same size, one byte altered: the checksum differs.
    let mut altered = good_keys.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x55;
    put_raw(&location, &key_file.path, altered).await;
    let err = store
        .read_keys(key_file)
        .await
        .expect_err("altered key file");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("altered"),
        "{err}"
    );
    // A record without a checksum (written before it was recorded) still has
    // its row count checked.
    let mut unchecked = key_file.clone();
    unchecked.crc32 = None;
    unchecked.row_count = 999;
    put_raw(&location, &key_file.path, good_keys.clone()).await;
    let err = store.read_keys(&unchecked).await.expect_err("row count");
    assert!(err.to_string().contains("999 were recorded"), "{err}");
    put_raw(&location, &key_file.path, good_keys).await;
    assert_eq!(
        store.read_keys(key_file).await.expect("restored")[0].num_rows(),
        1000
    );

    // A commit intent whose sequence is 0, or differs from its name: reported,
    // never used (sequence arithmetic would underflow on 0).
    let mut intent = serde_json::json!({
        "format_version": 1,
        "sequence": 0,
        "pipeline_id": "p",
        "table": "t",
        "checkpoints": [],
        "created_at": "2026-01-01T00:00:00Z",
    });
    put_raw(
        &location,
        "commits/00000000000000000000.json",
        serde_json::to_vec(&intent).expect("json"),
    )
    .await;
    let err = store.latest_commit_intent().await.expect_err("sequence 0");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    intent["sequence"] = 7.into();
    put_raw(
        &location,
        "commits/00000000000000000003.json",
        serde_json::to_vec(&intent).expect("json"),
    )
    .await;
    let err = store.latest_commit_intent().await.expect_err("misnamed");
    assert!(err.to_string().contains("names sequence 7"), "{err}");

    // A lease time to live that would overflow time arithmetic is refused.
    let huge = LeaseOptions {
        ttl: std::time::Duration::from_secs(u64::MAX),
        ..Default::default()
    };
    let err = Lease::acquire(&store, "pipeline", 1, huge)
        .await
        .expect_err("huge ttl");
    assert!(matches!(err, Error::InvalidLeaseTtl { .. }), "{err}");
    // From 1 s to a week is accepted (a pipeline run weekly may hold its
    // lease for days); zero and a second more than a week are not.
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    for ttl in [std::time::Duration::from_secs(1), week] {
        let lease = Lease::acquire(&store, "ttl-scope", 1, lease_for(ttl))
            .await
            .unwrap_or_else(|e| panic!("a time to live of {ttl:?}: {e}"));
        lease.release().await.expect("release");
    }
    for ttl in [
        std::time::Duration::ZERO,
        week + std::time::Duration::from_secs(1),
    ] {
        let err = Lease::acquire(&store, "ttl-scope", 1, lease_for(ttl))
            .await
            .expect_err("a time to live out of range");
        assert!(
            matches!(err, Error::InvalidLeaseTtl { .. }),
            "{ttl:?}: {err}"
        );
    }

    // Corrupt descriptor.
    put_raw(
        &location,
        "tidemark.json",
        b"{\"format_version\": 1".to_vec(),
    )
    .await;
    let err = CheckpointStore::open_existing(backend.location())
        .await
        .expect_err("corrupt descriptor");
    assert!(err.to_string().contains("store descriptor"), "{err}");
}

async fn compaction_bounds_the_cost_of_a_load(backend: Backend) {
    let (location, faulty) = backend.faulty();
    let store = open(location).await;
    let checkpoints = 24i64;
    for n in 0..checkpoints {
        committed_checkpoint(&store, n * 50..n * 50 + 50).await;
    }
    // One sealed but uncommitted checkpoint must survive compaction untouched.
    let mut pending = store.begin().await.expect("begin");
    pending
        .stage_keys(&ids(100_000..100_005))
        .await
        .expect("stage");
    pending
        .record_in_flight("data/pending.parquet")
        .await
        .expect("in flight");
    pending
        .stage_file(file_record("data/pending.parquet", 5))
        .await
        .expect("stage");
    let pending_id = pending.seal().await.expect("seal").checkpoint_id;
    let before = checkpointed_ids(&store).await;

    faulty.reset_counts();
    store.load().await.expect("load");
    let uncompacted_requests = faulty.requests();
    assert!(
        uncompacted_requests > checkpoints as usize,
        "{uncompacted_requests}"
    );

    let options = CompactionOptions {
        max_keys_per_file: 500,
        max_runs: 2,
        ..Default::default()
    };
    let report = store.compact(&options).await.expect("compact");
    assert_eq!(report.checkpoints_compacted, checkpoints as usize);
    assert_eq!(report.keys_compacted, (checkpoints * 50) as u64);
    assert_eq!(report.key_files_written, 3);

    faulty.reset_counts();
    let state = store.load().await.expect("load");
    // 4 lists (forgotten commits, seals, commit markers, index generations)
    // + the index + the one uncompacted manifest.
    assert_eq!(faulty.requests(), 6, "requests after compaction");
    // This handle decoded that generation: a second load does not get it again.
    faulty.reset_counts();
    store.load().await.expect("load");
    assert_eq!(faulty.requests(), 5, "requests of a second load");
    assert_eq!(state.compacted_count(), checkpoints as usize);
    assert_eq!(state.pending_commit().len(), 1);
    assert_eq!(state.pending_commit()[0].checkpoint_id, pending_id);
    assert_eq!(
        checkpointed_ids(&store).await,
        before,
        "compaction keeps every key"
    );

    // Index files are sorted runs.
    let first = &state.index.as_ref().expect("index").runs[0].key_files;
    let first_batch = &store.read_keys(&first[0]).await.expect("read")[0];
    let values = first_batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64");
    assert!(
        values.values().windows(2).all(|w| w[0] <= w[1]),
        "run is sorted"
    );

    // Compacted checkpoints still answer as committed; marking again is a no-op.
    let old = state.index.as_ref().expect("index").checkpoints[0];
    assert_eq!(
        store.checkpoint_state(old).await.expect("state"),
        CheckpointState::Committed
    );
    store
        .mark_committed(&[old], &serde_json::json!({}))
        .await
        .expect("idempotent");

    let mut expected_extra = Vec::new();
    // More history: a second run of 100 keys beside the first of 1 200 (more
    // than twice the new keys: kept as it is).
    committed_checkpoint(&store, 200_000..200_100).await;
    assert_eq!(store.compact(&options).await.expect("compact").runs, 2);
    store
        .mark_committed(&[pending_id], &serde_json::json!({}))
        .await
        .expect("commit pending");
    // A third would exceed max_runs: the newest run is merged with the 5 new
    // keys, the oldest (larger) run stays.
    let report = store.compact(&options).await.expect("compact");
    assert_eq!(report.runs, 2, "merged: {report:?}");
    let run_sizes: Vec<u64> = store
        .load()
        .await
        .expect("load")
        .index
        .expect("index")
        .runs
        .iter()
        .map(|run| run.key_count())
        .collect();
    assert_eq!(
        run_sizes,
        [1_200, 105],
        "the oldest run kept, the newest merged"
    );
    // With room for one run only, everything merges.
    committed_checkpoint(&store, 300_000..300_010).await;
    let one_run = CompactionOptions {
        max_runs: 1,
        ..options.clone()
    };
    let report = store.compact(&one_run).await.expect("compact");
    assert_eq!(report.runs, 1, "merged: {report:?}");
    expected_extra.extend(300_000..300_010);
    let mut expected = before.clone();
    expected.extend(200_000..200_100);
    expected.extend(expected_extra);
    expected.sort_unstable();
    assert_eq!(checkpointed_ids(&store).await, expected);
    assert!(store.load().await.expect("load").checkpoints.is_empty());
    // Nothing to do now.
    assert_eq!(
        store.compact(&options).await.expect("compact").generation,
        None
    );
}

/// A compaction fence publishes the generation after the current one, a copy
/// of it, so that a compaction planned from the current one fails to publish.
async fn a_compaction_fence_publishes_the_next_generation(backend: Backend) {
    let store = open(backend.location()).await;
    let fenced = store
        .fence_compaction()
        .await
        .expect("fence")
        .expect("index");
    assert_eq!((fenced.generation, fenced.checkpoints.len()), (1, 0));
    let first = committed_checkpoint(&store, 0..10).await;
    let options = CompactionOptions {
        min_checkpoints: 1,
        ..Default::default()
    };
    assert_eq!(
        store.compact(&options).await.expect("compact").generation,
        Some(2)
    );
    let fenced = store
        .fence_compaction()
        .await
        .expect("fence")
        .expect("index");
    assert_eq!(fenced.generation, 3);
    let index = store.load().await.expect("load").index.expect("index");
    assert_eq!(
        (index.generation, index.checkpoints.clone()),
        (3, vec![first])
    );
    assert_eq!(index.runs, fenced.runs);
    assert_eq!(
        checkpointed_ids(&store).await,
        (0..10).collect::<Vec<i64>>()
    );
}

/// A handle keeps the index generation it decoded; an object written again at
/// that generation's path (same size, other content) is read again.
async fn an_index_generation_written_again_is_read_again(backend: Backend) {
    let location = backend.location();
    let store = open(location.clone()).await;
    let first = committed_checkpoint(&store, 0..10).await;
    let second = committed_checkpoint(&store, 10..20).await;
    let options = CompactionOptions {
        min_checkpoints: 1,
        ..Default::default()
    };
    assert_eq!(
        store.compact(&options).await.expect("compact").generation,
        Some(1)
    );
    let index = store.load().await.expect("load").index.expect("index");
    assert_eq!(index.checkpoints, [first, second]);

    let relative = format!("index/{:020}.json", 1);
    let written = String::from_utf8(get_raw(&location, &relative).await).expect("utf-8");
    let swapped = written
        .replace(&first.to_string(), "FIRST")
        .replace(&second.to_string(), &first.to_string())
        .replace("FIRST", &second.to_string());
    assert_eq!(swapped.len(), written.len());
    put_raw(&location, &relative, swapped.into_bytes()).await;
    let index = store.load().await.expect("load").index.expect("index");
    assert_eq!(
        index.checkpoints,
        [second, first],
        "read again, not served from memory"
    );
}

async fn keys_read_across_handles_and_reopen(backend: Backend) {
    let store = open(backend.location()).await;
    let mut all = BTreeSet::new();
    for n in 0..3 {
        let handle = open(backend.location()).await;
        committed_checkpoint(&handle, n * 10..n * 10 + 10).await;
        all.extend(n * 10..n * 10 + 10);
    }
    assert_eq!(
        checkpointed_ids(&store).await,
        all.into_iter().collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------ the backends

macro_rules! contract_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            contract_suite!(@cases $make;
                descriptor_pins_the_key_schema,
                lifecycle_staged_checkpointed_committed,
                keys_keep_their_exact_types,
                mismatched_key_columns_are_refused,
                sealed_checkpoints_take_nothing_more,
                unknown_and_unsealed_checkpoints_are_errors,
                abandoned_in_flight_writes_are_recorded,
                concurrent_sealers_exactly_one_wins,
                the_losing_sealers_writes_are_orphans,
                concurrent_claims_of_a_sequence_exactly_one_wins,
                the_committed_sequence_follows_the_marks,
                a_held_lease_is_refused_until_released,
                a_takeover_seals_the_older_run_s_unfinished_checkpoints,
                a_dropped_lease_stops_renewing,
                lease_scopes_are_plain_names,
                a_holder_that_dies_before_its_first_heartbeat_holds_the_lease_until_the_record_expires,
                a_lease_epoch_whose_put_landed_before_its_retry_is_taken,
                a_lease_epoch_taken_first_by_a_rival_is_not_shared,
                old_lease_epochs_are_pruned_with_their_stray_heartbeats,
                a_run_of_another_shard_count_waits_for_the_live_shards,
                a_shard_layout_record_is_checked_against_its_name,
                a_shard_s_takeover_leaves_its_siblings_checkpoints_alone,
                a_shard_layout_started_first_by_a_rival_is_not_shared,
                lost_seal_response_is_recovered,
                corrupt_objects_are_reported,
                compaction_bounds_the_cost_of_a_load,
                an_index_generation_written_again_is_read_again,
                a_compaction_fence_publishes_the_next_generation,
                keys_read_across_handles_and_reopen,
                the_status_counts_every_state,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                super::$case($make).await
            }
        )*
    };
}

contract_suite!(memory, Backend::memory());
contract_suite!(local, Backend::local());
contract_suite!(s3, Backend::s3());
