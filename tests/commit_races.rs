//! Committers racing on one store, with the interleaving forced at an object
//! store call (a hook of the test store runs the other committer's steps): a regression test for a data loss of the commit protocol.
//! Also the committer's check of a table rolled back behind it, and the
//! acceptance it records.
//!
//! Committer A used to load the store state before it read the latest commit
//! intent. Committer B could then, in between, seal a new checkpoint, claim an
//! intent for it and an older checkpoint, and die before its table commit. A
//! saw the intent, found only the older checkpoint pending in its stale state,
//! took "some checkpoints are already marked" for "the table commit landed",
//! and marked both committed: rows that never reached the table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array};
use arrow_schema::DataType;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use support::{checkpointed_ids, FaultyStore, MemoryTable};
use tidemark::commit::{Committer, LostCommitsPolicy};
use tidemark::store::{
    CheckpointId, CheckpointStore, FileRecord, KeySchema, Lease, LeaseOptions, StoreLocation,
    TableFileMetadata, PIPELINE_SCOPE,
};
use tidemark::Error;

fn keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).unwrap()
}

/// Seals a checkpoint of `ids` with one data file named `file`.
async fn seal(store: &CheckpointStore, ids: Vec<i64>, file: &str) -> CheckpointId {
    let mut writer = store.begin().await.unwrap();
    writer
        .stage_keys(&[Arc::new(Int64Array::from(ids.clone())) as ArrayRef])
        .await
        .unwrap();
    writer.record_in_flight(file).await.unwrap();
    writer
        .stage_file(FileRecord {
            path: file.to_string(),
            file_size_bytes: 100,
            record_count: ids.len() as u64,
            table_metadata: TableFileMetadata {
                format: "test.file".into(),
                version: 1,
                body: serde_json::json!({ "path": file }),
            },
        })
        .await
        .unwrap();
    writer.seal().await.unwrap().checkpoint_id
}

#[tokio::test]
async fn a_stale_committer_never_marks_unapplied_checkpoints_committed() {
    let (inner, plain) = memory_store().await;
    seal(&plain, vec![1, 2], "data/x.parquet").await;

    // B, between A's reads: seals Y, claims an intent for X and Y, and dies
    // before its table commit.
    let table = MemoryTable::default();
    let dying = table.failing();
    let b_store = plain.clone();
    let hooked = Arc::new(FaultyStore::new(inner.clone()));
    hooked.before_list(
        "commits",
        Box::pin(async move {
            seal(&b_store, vec![3, 4], "data/y.parquet").await;
            let b = Committer::new(b_store, dying, "races");
            assert!(b.commit_pending().await.is_err(), "B was meant to die");
        }),
    );
    let a_store = store_on(hooked).await;
    let a = Committer::new(a_store, table.clone(), "races");
    let first = a.commit_pending().await.unwrap();
    // A finishes B's intent (or commits after it): either way, every
    // checkpoint marked committed has its files in the table.
    let second = a.commit_pending().await.unwrap();
    assert_eq!(
        first.rows_applied() + second.rows_applied(),
        4,
        "the rows appended: both checkpoints' two rows, once"
    );

    let state = plain.load().await.unwrap();
    let committed: HashMap<CheckpointId, Vec<String>> = state
        .checkpoints
        .iter()
        .filter(|c| c.committed)
        .map(|c| {
            let files = c.manifest.files.iter().map(|f| f.path.clone()).collect();
            (c.manifest.checkpoint_id, files)
        })
        .collect();
    assert_eq!(committed.len(), 2, "both checkpoints end committed");
    let in_table = table.appended();
    for files in committed.values() {
        for file in files {
            assert!(
                in_table.contains(file),
                "`{file}` is marked committed but not in the table: {in_table:?}"
            );
        }
    }
    assert_eq!(in_table.len(), 2, "each file once: {in_table:?}");
}

/// A committer carrying the fence of a lease that a newer run took over
/// claims no sequence and asks the table for nothing: it fails with
/// `Fenced` before the intent, and, for an intent it claimed before the
/// takeover, before the table commit. The new holder commits everything.
#[tokio::test]
async fn a_fenced_committer_neither_claims_nor_applies() {
    let store = CheckpointStore::open_at(
        StoreLocation::from_object_store(Arc::new(InMemory::new()), Path::from("store")),
        keys(),
    )
    .await
    .unwrap();
    let options = LeaseOptions {
        ttl: Duration::from_secs(60),
        holder: "old".into(),
    };
    let table = MemoryTable::default();

    // Claimed under the old lease, then the table commit failed.
    seal(&store, vec![1, 2], "data/x.parquet").await;
    let old = Lease::acquire(&store, PIPELINE_SCOPE, 1, options.clone())
        .await
        .unwrap();
    let dying = table.failing();
    let err = Committer::new(store.clone(), dying, "races")
        .with_fence(old.fence())
        .commit_pending()
        .await
        .expect_err("the table commit fails");
    assert!(matches!(err, Error::Sink { .. }), "{err}");
    assert_eq!(
        store
            .latest_commit_intent()
            .await
            .unwrap()
            .unwrap()
            .sequence,
        1
    );
    let fence = old.fence();
    old.release().await.unwrap();
    let new = Lease::acquire(&store, PIPELINE_SCOPE, 1, options)
        .await
        .unwrap();

    // The old committer may neither apply intent 1 nor claim intent 2.
    let zombie = Committer::new(store.clone(), table.clone(), "races").with_fence(fence);
    let err = zombie.commit_pending().await.expect_err("fenced");
    assert!(
        matches!(
            err,
            Error::Fenced {
                operation: "committing to the table",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(table.marker(), None, "nothing reached the table");

    let current = Committer::new(store.clone(), table.clone(), "races").with_fence(new.fence());
    current.commit_pending().await.unwrap();
    seal(&store, vec![3], "data/y.parquet").await;
    let err = zombie.commit_pending().await.expect_err("fenced");
    assert!(
        matches!(
            err,
            Error::Fenced {
                operation: "claiming a commit sequence",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store
            .latest_commit_intent()
            .await
            .unwrap()
            .unwrap()
            .sequence,
        1
    );

    current.commit_pending().await.unwrap();
    assert_eq!(table.marker(), Some(2));
    assert_eq!(
        table.appended(),
        vec!["data/x.parquet".to_string(), "data/y.parquet".to_string()]
    );
}

/// A pipeline whose id is not a plain name is refused before it takes the
/// lease: nothing is written to the store, and the error names the rule.
#[tokio::test]
async fn an_unsafe_pipeline_id_is_refused_before_the_lease() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = CheckpointStore::open_at(
        StoreLocation::from_object_store(inner.clone(), Path::from("store")),
        keys(),
    )
    .await
    .unwrap();
    let before = inner.list(None).count().await;
    let pipeline = tidemark::pipeline::Pipeline::new(store, MemoryTable::default(), "../other");
    let err = pipeline.repair().await.expect_err("an unsafe id");
    assert!(
        matches!(err, Error::InvalidPipelineId { .. }),
        "refused for its id: {err}"
    );
    assert_eq!(
        inner.list(None).count().await,
        before,
        "nothing written before the refusal"
    );
}

/// A store in memory, and its object store.
async fn memory_store() -> (Arc<dyn ObjectStore>, CheckpointStore) {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let store = store_on(inner.clone()).await;
    (inner, store)
}

/// The store at `store/` of `objects` (the memory store, or a faulty or
/// hooked view of it).
async fn store_on(objects: Arc<dyn ObjectStore>) -> CheckpointStore {
    CheckpointStore::open_at(
        StoreLocation::from_object_store(objects, Path::from("store")),
        keys(),
    )
    .await
    .unwrap()
}

/// A checkpoint without files (every row filtered out) is marked committed
/// without a table commit: nothing stays pending, and the table has no empty
/// commit.
#[tokio::test]
async fn an_empty_checkpoint_is_marked_committed_without_a_table_commit() {
    let (_, store) = memory_store().await;
    let mut writer = store.begin().await.unwrap();
    writer
        .stage_keys(&[Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef])
        .await
        .unwrap();
    let id = writer.seal().await.unwrap().checkpoint_id;
    let table = MemoryTable::default();
    let report = Committer::new(store.clone(), table.clone(), "races")
        .commit_pending()
        .await
        .unwrap();
    assert!(report.commits.is_empty(), "no table commit: {report:?}");
    assert_eq!(table.marker(), None);
    assert!(store.load().await.unwrap().pending_commit().is_empty());
    assert_eq!(
        store.checkpoint_state(id).await.unwrap(),
        tidemark::store::CheckpointState::Committed
    );
}

/// More checkpoints than one commit may carry are committed in rounds of
/// the cap, every file once.
#[tokio::test]
async fn many_checkpoints_commit_in_rounds_of_the_cap() {
    let (_, store) = memory_store().await;
    for n in 0..40 {
        seal(&store, vec![n], &format!("data/{n}.parquet")).await;
    }
    let table = MemoryTable::default();
    let report = Committer::new(store.clone(), table.clone(), "races")
        .with_max_checkpoints_per_commit(2)
        .commit_pending()
        .await
        .unwrap();
    assert_eq!(report.commits.len(), 20, "commits of 2 checkpoints");
    assert_eq!(table.marker(), Some(20));
    let appended: std::collections::BTreeSet<String> = table.appended().into_iter().collect();
    assert_eq!(appended.len(), 40, "every file once");
    assert_eq!(table.appended().len(), 40);
}

/// A committer whose every claim is taken first by other committers (each
/// claiming a commit that names none of its pending checkpoints) gives up
/// after 16 lost races in one call, on its 17th claim, with
/// `ConcurrentChange`: it neither loops nor applies or marks anything.
#[tokio::test]
async fn a_committer_that_keeps_losing_its_claim_gives_up_after_sixteen_races() {
    let (inner, store) = memory_store().await;
    seal(&store, vec![1, 2], "data/x.parquet").await;
    let table = MemoryTable::default();
    let hooked = Arc::new(FaultyStore::new(inner.clone()));
    // More rivals than the bound allows: A would win the 21st claim.
    for sequence in 1..=20u64 {
        let rival = store.clone();
        let table_name = tidemark::commit::CommitSink::table(&table);
        hooked.before_put(
            &format!("commits/{sequence:020}.json"),
            Box::pin(async move {
                let intent = tidemark::store::CommitIntent {
                    format_version: tidemark::store::FORMAT_VERSION,
                    sequence,
                    pipeline_id: "races".into(),
                    table: table_name,
                    checkpoints: Vec::new(),
                    created_at: chrono::Utc::now(),
                };
                assert!(rival.put_commit_intent(&intent).await.unwrap());
            }),
        );
    }
    let a_store = store_on(hooked).await;
    let error = Committer::new(a_store, table.clone(), "races")
        .commit_pending()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ConcurrentChange { attempts: 17, .. }),
        "gives up on the 17th lost claim: {error:?}"
    );
    assert!(table.appended().is_empty(), "nothing applied");
    assert_eq!(table.marker(), None);
    assert_eq!(store.load().await.unwrap().pending_commit().len(), 1);
}

/// The table's setting that can drop the marker is asked for, and named in
/// the loss, only when the marker is behind what the store committed.
#[tokio::test]
async fn a_marker_behind_the_store_names_the_table_s_risk() {
    let (_, store) = memory_store().await;
    let risk = "the table expires its markers";
    let table = MemoryTable {
        marker_risk: Some(risk.into()),
        ..MemoryTable::default()
    };
    let committer = Committer::new(store.clone(), table.clone(), "races");
    for n in 0..2 {
        seal(&store, vec![n], &format!("data/{n}.parquet")).await;
        committer.commit_pending().await.unwrap();
    }
    let check = committer.check_table().await.unwrap();
    assert_eq!(check.marker_risk, None, "the marker is where the store is");
    assert_eq!(check.lost(), None);
    // The marker drops back to commit 1.
    table.state.lock().unwrap().0 = Some(1);
    let check = committer.check_table().await.unwrap();
    assert_eq!(check.marker_risk.as_deref(), Some(risk));
    let lost = check.lost().expect("commit 2 lost");
    assert_eq!((lost.first, lost.last), (2, 2));
    assert!(lost.why.ends_with(&format!("; {risk}")), "{}", lost.why);
}

/// Two committers claim the same sequence: the one whose intent lands
/// second loses the race, finishes the winner's intent and commits nothing
/// twice.
#[tokio::test]
async fn a_committer_that_loses_the_claim_finishes_the_winners_commit() {
    let (inner, store) = memory_store().await;
    seal(&store, vec![1, 2], "data/x.parquet").await;
    let table = MemoryTable::default();
    // B commits everything between A's marker read and A's intent.
    let b = Committer::new(store.clone(), table.clone(), "races");
    let hooked = Arc::new(FaultyStore::new(inner.clone()));
    hooked.before_put(
        "commits/",
        Box::pin(async move {
            b.commit_pending().await.unwrap();
        }),
    );
    let a_store = store_on(hooked).await;
    let report = Committer::new(a_store, table.clone(), "races")
        .commit_pending()
        .await
        .unwrap();
    assert_eq!(report.rows_applied(), 0, "A applied nothing: {report:?}");
    assert_eq!(table.appended(), ["data/x.parquet"], "the file once");
    assert_eq!(table.marker(), Some(1));
    assert!(store.load().await.unwrap().pending_commit().is_empty());
}

/// A table whose marker is ahead of every commit this store made (another
/// store committed into it) is refused: committing would skip or repeat.
#[tokio::test]
async fn a_table_marked_by_another_store_is_refused() {
    let (_, store) = memory_store().await;
    let table = MemoryTable::default();
    seal(&store, vec![1], "data/1.parquet").await;
    Committer::new(store.clone(), table.clone(), "races")
        .commit_pending()
        .await
        .unwrap();
    table.state.lock().unwrap().0 = Some(5);
    seal(&store, vec![2], "data/2.parquet").await;
    let err = Committer::new(store.clone(), table.clone(), "races")
        .commit_pending()
        .await
        .expect_err("a marker this store never wrote");
    assert!(matches!(err, Error::MarkerMismatch { .. }), "{err}");
    assert_eq!(table.appended(), ["data/1.parquet"], "nothing appended");
}

/// A commit whose checkpoints were partly marked (the committer died between
/// two marks) and whose table commit then left the table (rolled back): the
/// rest is not committed again on its own, the committer refuses.
#[tokio::test]
async fn a_partly_marked_commit_that_left_the_table_is_refused() {
    let (inner, store) = memory_store().await;
    seal(&store, vec![1], "data/1.parquet").await;
    seal(&store, vec![2], "data/2.parquet").await;
    let table = MemoryTable::default();
    let dying = Arc::new(FaultyStore::new(inner.clone()));
    dying.inject_after("committed/", support::Fault::CrashBefore, 1, 1);
    let dying_store = store_on(dying).await;
    Committer::new(dying_store, table.clone(), "races")
        .commit_pending()
        .await
        .expect_err("died between the two marks");
    assert_eq!(table.marker(), Some(1));
    // The table is rolled back to before that commit.
    *table.state.lock().unwrap() = (None, Vec::new());
    let err = Committer::new(store.clone(), table.clone(), "races")
        .commit_pending()
        .await
        .expect_err("the commit left the table");
    assert!(matches!(err, Error::MarkerMismatch { .. }), "{err}");
    assert!(table.appended().is_empty(), "nothing appended");
}

/// An unfinished intent of another pipeline, or of another table, is never
/// finished by this committer.
#[tokio::test]
async fn intents_of_another_pipeline_or_table_are_refused() {
    let (_, store) = memory_store().await;
    seal(&store, vec![1], "data/1.parquet").await;
    let table = MemoryTable::default();
    Committer::new(store.clone(), table.failing(), "races")
        .commit_pending()
        .await
        .expect_err("the first committer dies before its table commit");
    let other_pipeline = Committer::new(store.clone(), table.clone(), "other")
        .commit_pending()
        .await
        .expect_err("another pipeline's intent");
    assert!(
        matches!(other_pipeline, Error::CommitTargetMismatch { .. }),
        "{other_pipeline}"
    );
    let other_table = MemoryTable {
        name: "another-table".into(),
        ..table.clone()
    };
    let err = Committer::new(store.clone(), other_table, "races")
        .commit_pending()
        .await
        .expect_err("another table's intent");
    assert!(matches!(err, Error::CommitTargetMismatch { .. }), "{err}");
    assert!(table.appended().is_empty(), "nothing appended");
}

/// A contender that stalls between reading the latest lease epoch and
/// writing the next one can find that epoch pruned by newer holders, and win
/// it. It must notice the newer epochs, give the stale one back and take the
/// next free epoch, never hold an epoch below another holder's.
#[tokio::test]
async fn a_stalled_contender_never_holds_a_pruned_epoch() {
    let (inner, store) = memory_store().await;
    let options = LeaseOptions {
        ttl: Duration::from_secs(30),
        ..Default::default()
    };
    Lease::acquire(&store, PIPELINE_SCOPE, 1, options.clone())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // While A is about to write epoch 2, six runs take and release the lease
    // (epochs 2 to 7; the last prunes epochs below 3).
    let others = store.clone();
    let others_options = options.clone();
    let stalled = Arc::new(FaultyStore::new(inner.clone()));
    stalled.before_put(
        "epochs/00000000000000000002",
        Box::pin(async move {
            for _ in 0..6 {
                Lease::acquire(&others, PIPELINE_SCOPE, 1, others_options.clone())
                    .await
                    .unwrap()
                    .release()
                    .await
                    .unwrap();
            }
        }),
    );
    let a_store = store_on(stalled).await;
    let lease = Lease::acquire(&a_store, PIPELINE_SCOPE, 1, options)
        .await
        .unwrap();
    assert_eq!(
        lease.claim().epoch,
        8,
        "the next free epoch, not the pruned 2"
    );
    let stale = inner
        .head(&Path::from(
            "store/lease/pipeline/epochs/00000000000000000002.json",
        ))
        .await;
    assert!(stale.is_err(), "the stale epoch was given back");
    lease.fence().ensure_current("checking").await.unwrap();
}

/// A store and a table in memory with three commits of one checkpoint each
/// (keys 0, 1 and 2), and the committer that made them.
async fn three_commits() -> (
    Arc<dyn ObjectStore>,
    CheckpointStore,
    MemoryTable,
    Committer<MemoryTable>,
) {
    let (inner, store) = memory_store().await;
    let table = MemoryTable::default();
    let committer = Committer::new(store.clone(), table.clone(), "races");
    for n in 0..3 {
        seal(&store, vec![n], &format!("data/{n}.parquet")).await;
        committer.commit_pending().await.unwrap();
    }
    (inner, store, table, committer)
}

/// A table rolled back behind the store is refused; accepted, the
/// acceptance is recorded in the store, and later checks of the same table
/// state pass without being told again. Rolled back further, it is refused
/// again. Once a later commit moved the marker on, compaction deletes the
/// record.
#[tokio::test]
async fn an_accepted_rollback_is_recorded_until_the_marker_moves_on() {
    let (_, store, table, committer) = three_commits().await;
    assert_eq!(table.marker(), Some(3));
    table.roll_back_to(1);
    let lost = |result: tidemark::Result<tidemark::commit::TableCheck>| match result {
        Err(Error::TableDiverged { lost, .. }) => lost,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        lost(
            committer
                .ensure_table_agrees(LostCommitsPolicy::Refuse)
                .await
        ),
        "2..=3"
    );
    let accepted = committer
        .ensure_table_agrees(LostCommitsPolicy::Accept)
        .await
        .unwrap();
    assert_eq!(accepted.lost(), None);
    let record = store.acceptance(3).await.unwrap().expect("recorded");
    assert_eq!((record.marker, record.carried), (3, Some(1)));
    assert_eq!(record.commits, "2..=3");
    assert!(store.acceptance(2).await.unwrap().is_none());
    // A compaction while the marker is still 3 keeps it.
    let compact = || async {
        store
            .compact(&tidemark::store::CompactionOptions::default())
            .await
            .unwrap()
    };
    assert_eq!(compact().await.acceptances_pruned, 0);
    // The same state again, without accepting: it goes on.
    let check = committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    assert_eq!(check.accepted, Some(record));
    // Rolled back further than what was accepted.
    table.roll_back_to(0);
    assert_eq!(
        lost(
            committer
                .ensure_table_agrees(LostCommitsPolicy::Refuse)
                .await
        ),
        "1..=3"
    );
    // Restored to a state that holds commit 3 again: the acceptance is out
    // of date and goes, so the same rollback later is refused again.
    table.restore();
    let check = committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    assert_eq!(check.accepted, None);
    assert!(store.acceptance(3).await.unwrap().is_none(), "out of date");
    table.roll_back_to(1);
    assert_eq!(
        lost(
            committer
                .ensure_table_agrees(LostCommitsPolicy::Refuse)
                .await
        ),
        "2..=3"
    );
    committer
        .ensure_table_agrees(LostCommitsPolicy::Accept)
        .await
        .unwrap();
    // A commit on top moves the marker; a compaction then drops the record.
    seal(&store, vec![3], "data/3.parquet").await;
    committer.commit_pending().await.unwrap();
    assert_eq!(table.marker(), Some(4));
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    assert!(store.acceptance(3).await.unwrap().is_some());
    assert_eq!(compact().await.acceptances_pruned, 1);
    assert!(store.acceptance(3).await.unwrap().is_none(), "pruned");
}

/// A table rolled back behind the store, reprocessed: the lost commits' keys
/// (and only theirs) are forgotten, their checkpoints are not committed
/// again, the next commit carries the rows anew under a new sequence, later
/// checks pass, and the compaction after it deletes what the forgotten
/// commits left in the store. A lost commit whose keys compaction folded
/// into the index cannot be reprocessed, and then nothing is forgotten.
#[tokio::test]
async fn a_rolled_back_commit_is_reprocessed() {
    let (inner, store) = memory_store().await;
    let table = MemoryTable::default();
    let committer = Committer::new(store.clone(), table.clone(), "races");
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(seal(&store, vec![n], &format!("data/{n}.parquet")).await);
        committer.commit_pending().await.unwrap();
    }
    // Sealed before the rollback and not committed yet: a checkpoint that
    // read a source unit to its end. The unit's earlier rows could be in a
    // lost commit, so while that is forgotten the unit is not skipped.
    let mut writer = store.begin().await.unwrap();
    writer
        .stage_keys(&[Arc::new(Int64Array::from(vec![9])) as ArrayRef])
        .await
        .unwrap();
    writer.record_finished_units(["unit-b".to_string()]);
    let pending = writer.seal().await.unwrap().checkpoint_id;
    let finished = |state: &tidemark::store::StoreState| state.finished_units().contains("unit-b");
    assert!(finished(&store.load().await.unwrap()));
    table.roll_back_to(1);
    let check = committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    assert_eq!(check.lost(), None);
    let record = store.acceptance(3).await.unwrap().expect("recorded");
    assert!(record.reprocessed, "{record:?}");
    assert_eq!(record.commits, "2..=3");
    let forgotten: Vec<_> = store
        .forgotten_commits()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.sequence, f.checkpoints))
        .collect();
    assert_eq!(forgotten, vec![(2, vec![ids[1]]), (3, vec![ids[2]])]);
    assert_eq!(
        checkpointed_ids(&store).await,
        vec![0, 9],
        "keys 1 and 2 forgotten"
    );
    let state = store.load().await.unwrap();
    assert_eq!(state.forgotten, vec![ids[1], ids[2]]);
    assert!(!finished(&state), "the unit is read again");
    let pending_ids: Vec<CheckpointId> = state
        .pending_commit()
        .iter()
        .map(|m| m.checkpoint_id)
        .collect();
    assert_eq!(
        pending_ids,
        vec![pending],
        "the lost ones not committed again"
    );
    // The same table state later: it goes on without being told.
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    // Nothing made after the forgetting is committed yet: a compaction
    // keeps the forgotten commits' records.
    let report = store
        .compact(&tidemark::store::CompactionOptions::default())
        .await
        .unwrap();
    assert_eq!(report.forgotten_removed, 0, "{report:?}");
    assert_eq!(store.forgotten_commits().await.unwrap().len(), 2);

    // A run reads keys 1 and 2 again and commits them as commit 4.
    let again = seal(&store, vec![1, 2], "data/again.parquet").await;
    let report = committer.commit_pending().await.unwrap();
    let sequences: Vec<u64> = report.commits.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, vec![4]);
    assert_eq!(
        report.commits[0].checkpoints,
        vec![again],
        "the other has no files"
    );
    assert_eq!(table.marker(), Some(4));
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2, 9]);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();

    // Compaction folds the live checkpoints in (the one with unit-b and
    // commit 4's; commit 1's went in before) and deletes the forgotten
    // commits' records, checkpoints and intents.
    let report = store
        .compact(&tidemark::store::CompactionOptions::default())
        .await
        .unwrap();
    assert_eq!(report.checkpoints_compacted, 2, "{report:?}");
    assert_eq!(report.forgotten_removed, 2, "{report:?}");
    assert!(store.forgotten_commits().await.unwrap().is_empty());
    // Compacted, the distrusted checkpoint's finished unit is left out of
    // the index for good: a run reads it again.
    assert!(!finished(&store.load().await.unwrap()), "read again");
    let left: Vec<String> = inner
        .list(None)
        .map(|meta| meta.unwrap().location.to_string())
        .collect()
        .await;
    for id in &ids[1..] {
        let id = id.to_string();
        let mentions: Vec<&String> = left.iter().filter(|p| p.contains(&id)).collect();
        assert!(mentions.is_empty(), "left of forgotten {id}: {mentions:?}");
    }
    for sequence in [2u64, 3] {
        assert!(store.commit_intent(sequence).await.unwrap().is_none());
    }
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2, 9]);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();

    // Commit 4 is in the index now: it cannot be reprocessed.
    table.roll_back_to(3);
    let err = committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap_err();
    match &err {
        Error::CannotReprocess { commit, .. } => assert_eq!(*commit, 4),
        other => panic!("not refused: {other}"),
    }
    assert!(err.to_string().contains("--accept-table-state"), "{err}");
    assert!(store.forgotten_commits().await.unwrap().is_empty());
    assert!(store.acceptance(4).await.unwrap().is_none());
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2, 9]);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Accept)
        .await
        .unwrap();
}

/// Compaction deletes a forgotten commit's record only once a commit made
/// after the forgetting has landed, and not while one of its checkpoints has
/// orphans that gc has not collected (their in-flight records are the only
/// trace of those files).
#[tokio::test]
async fn forgotten_records_wait_for_a_later_commit_and_for_gc() {
    let (_inner, store) = memory_store().await;
    let table = MemoryTable::default();
    let committer = Committer::new(store.clone(), table.clone(), "races");
    seal(&store, vec![0], "data/0.parquet").await;
    committer.commit_pending().await.unwrap();
    // Commit 2's checkpoint began a data file that it never staged.
    let mut writer = store.begin().await.unwrap();
    writer
        .stage_keys(&[Arc::new(Int64Array::from(vec![1])) as ArrayRef])
        .await
        .unwrap();
    writer
        .record_in_flight("data/abandoned.parquet")
        .await
        .unwrap();
    writer.record_in_flight("data/1.parquet").await.unwrap();
    writer
        .stage_file(FileRecord {
            path: "data/1.parquet".to_string(),
            file_size_bytes: 100,
            record_count: 1,
            table_metadata: TableFileMetadata {
                format: "test.file".into(),
                version: 1,
                body: serde_json::json!({ "path": "data/1.parquet" }),
            },
        })
        .await
        .unwrap();
    let orphaned = writer.seal().await.unwrap().checkpoint_id;
    committer.commit_pending().await.unwrap();
    seal(&store, vec![2], "data/2.parquet").await;
    committer.commit_pending().await.unwrap();
    table.roll_back_to(1);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    let forgotten = |store: CheckpointStore| async move {
        let records = store.forgotten_commits().await.unwrap();
        records.into_iter().map(|f| f.sequence).collect::<Vec<_>>()
    };
    assert_eq!(forgotten(store.clone()).await, vec![2, 3]);

    // Nothing was committed since the forgetting: both records stay.
    let options = tidemark::store::CompactionOptions::default();
    let report = store.compact(&options).await.unwrap();
    assert_eq!(report.checkpoints_compacted, 1, "commit 1's: {report:?}");
    assert_eq!(report.forgotten_removed, 0, "{report:?}");
    assert_eq!(forgotten(store.clone()).await, vec![2, 3]);

    // Commit 4 carries keys 1 and 2 again: commit 3's record goes, commit
    // 2's waits for gc to collect the abandoned file.
    seal(&store, vec![1, 2], "data/again.parquet").await;
    committer.commit_pending().await.unwrap();
    assert_eq!(table.marker(), Some(4));
    let report = store.compact(&options).await.unwrap();
    assert_eq!(report.forgotten_removed, 1, "{report:?}");
    assert_eq!(forgotten(store.clone()).await, vec![2]);
    assert!(
        store.checkpoint_state(orphaned).await.is_ok(),
        "the orphaned checkpoint is kept for gc"
    );
}

/// A run's automatic compaction keeps the checkpoints of the latest commits
/// out of the index (and waits for the usual number beside them), so a
/// table that loses those commits can still have them reprocessed.
#[tokio::test]
async fn the_latest_commits_stay_reprocessable_through_automatic_compaction() {
    use tidemark::store::{
        CompactionOptions, AUTO_COMPACTION_CHECKPOINTS, AUTO_COMPACTION_KEPT_COMMITS,
    };
    let (_, store) = memory_store().await;
    let table = MemoryTable::default();
    let committer = Committer::new(store.clone(), table.clone(), "races");
    let kept = AUTO_COMPACTION_KEPT_COMMITS as i64;
    let total = AUTO_COMPACTION_CHECKPOINTS as i64 + kept;
    let automatic = CompactionOptions::automatic();
    for n in 0..total {
        seal(&store, vec![n], &format!("data/{n}.parquet")).await;
        committer.commit_pending().await.unwrap();
        let report = store.compact(&automatic).await.unwrap();
        let expected = if n + 1 == total {
            AUTO_COMPACTION_CHECKPOINTS
        } else {
            0
        };
        assert_eq!(report.checkpoints_compacted, expected, "after commit {n}");
    }
    assert_eq!(store.load().await.unwrap().checkpoints.len() as i64, kept);
    table.roll_back_to((total - kept) as u64);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    assert_eq!(
        checkpointed_ids(&store).await,
        (0..total - kept).collect::<Vec<_>>()
    );
}

/// Commits forgotten for reprocessing, then found in the table again (it was
/// restored before the run committed their rows anew): their keys count as
/// processed again. If checkpoints that may hold those rows read again wait
/// for their commit, the run is refused instead, and goes on once the table
/// is back in the state it had when they were forgotten.
#[tokio::test]
async fn forgotten_commits_found_in_the_table_again_are_remembered() {
    let (_, store, table, committer) = three_commits().await;
    let agrees = |policy| {
        let committer = &committer;
        async move { committer.ensure_table_agrees(policy).await }
    };
    table.roll_back_to(1);
    agrees(LostCommitsPolicy::Reprocess).await.unwrap();
    assert_eq!(checkpointed_ids(&store).await, vec![0]);
    table.restore();
    agrees(LostCommitsPolicy::Refuse).await.unwrap();
    assert!(store.forgotten_commits().await.unwrap().is_empty());
    assert!(store.acceptance(3).await.unwrap().is_none());
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2], "remembered");

    // Forgotten again, and read again into a checkpoint not committed yet.
    table.roll_back_to(1);
    agrees(LostCommitsPolicy::Reprocess).await.unwrap();
    seal(&store, vec![1, 2], "data/again.parquet").await;
    table.restore();
    match agrees(LostCommitsPolicy::Refuse).await {
        Err(Error::ForgottenCommitsRegained {
            commits, pending, ..
        }) => assert_eq!((commits.as_str(), pending), ("2..=3", 1)),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(store.forgotten_commits().await.unwrap().len(), 2);
    // Back to the state they were forgotten in: the run goes on and
    // commits the rows once.
    table.roll_back_to(1);
    agrees(LostCommitsPolicy::Refuse).await.unwrap();
    let report = committer.commit_pending().await.unwrap();
    assert_eq!(report.commits.len(), 1);
    assert_eq!(table.marker(), Some(4));
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2]);
    agrees(LostCommitsPolicy::Refuse).await.unwrap();
}

/// The table restored to carry part of the forgotten commits again, or all
/// of them after a run that died between forgetting and recording its
/// choice: what it carries is remembered, the rest stays forgotten.
#[tokio::test]
async fn forgotten_commits_are_remembered_as_far_as_the_table_carries_them() {
    let (_, store, table, committer) = three_commits().await;
    table.roll_back_to(1);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    // Restored to carry commit 2 again, not 3.
    table.roll_back_to(2);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    let sequences: Vec<u64> = store
        .forgotten_commits()
        .await
        .unwrap()
        .iter()
        .map(|f| f.sequence)
        .collect();
    assert_eq!(sequences, vec![3]);
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1]);
    // A run that died after forgetting, before recording its choice.
    store.remove_acceptance(3).await.unwrap();
    table.restore();
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
    assert!(store.forgotten_commits().await.unwrap().is_empty());
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2]);
}

/// A compaction that planned from the state before the lost commits were
/// forgotten cannot fold their checkpoints into the index afterwards: the
/// forgetting publishes an index generation of its own, so the compaction's
/// publication fails, and the keys stay forgotten.
#[tokio::test]
async fn a_compaction_planned_before_a_forgetting_cannot_fold_it_in() {
    let (inner, store, table, _) = three_commits().await;
    table.roll_back_to(1);
    let hooked = Arc::new(FaultyStore::new(inner.clone()));
    let forgetting = Committer::new(store.clone(), table.clone(), "races");
    hooked.before_put(
        "index/00000000000000000001",
        Box::pin(async move {
            forgetting
                .ensure_table_agrees(LostCommitsPolicy::Reprocess)
                .await
                .unwrap();
        }),
    );
    let compacting = store_on(hooked).await;
    let err = compacting
        .compact(&tidemark::store::CompactionOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConcurrentChange { .. }), "{err}");
    assert_eq!(store.forgotten_commits().await.unwrap().len(), 2);
    assert_eq!(checkpointed_ids(&store).await, vec![0], "still forgotten");
    let index = store.load().await.unwrap().index.expect("the fence");
    assert!(index.checkpoints.is_empty(), "{index:?}");
}

/// A table restored over the commit that carried reprocessed rows anew: it
/// holds the reprocessed commits' own rows again. Before compaction settled
/// them, they are remembered, and forgetting the later commit then writes
/// nothing twice; once settled, forgetting the later commit is refused, as
/// it would write those rows a second time. Accepting goes on.
#[tokio::test]
async fn a_table_restored_over_a_reprocessing_commit_is_not_written_twice() {
    for settled in [false, true] {
        let (_, store, table, committer) = three_commits().await;
        table.roll_back_to(1);
        committer
            .ensure_table_agrees(LostCommitsPolicy::Reprocess)
            .await
            .unwrap();
        seal(&store, vec![1, 2], "data/again.parquet").await;
        committer.commit_pending().await.unwrap();
        assert_eq!(table.marker(), Some(4));
        if settled {
            let report = store
                .compact(&tidemark::store::CompactionOptions::default())
                .await
                .unwrap();
            assert_eq!(report.forgotten_removed, 2, "{report:?}");
            assert_eq!(store.reprocessed_commits().await.unwrap().len(), 2);
            // Rolled back below the reprocessed commits themselves: the table
            // holds neither them nor the commit that carried them anew, and
            // the store no longer holds their records.
            table.roll_back_to(1);
            match committer
                .ensure_table_agrees(LostCommitsPolicy::Reprocess)
                .await
            {
                Err(Error::CannotReprocess { commit, reason, .. }) => {
                    assert_eq!(commit, 2);
                    assert!(reason.contains("no longer holds its record"), "{reason}");
                }
                other => panic!("not refused: {other:?}"),
            }
            table.restore();
        }
        // Restored to the state after commit 3: commit 4 is lost.
        table.roll_back_to(3);
        let result = committer
            .ensure_table_agrees(LostCommitsPolicy::Reprocess)
            .await;
        if settled {
            match result {
                Err(Error::CannotReprocess { commit, reason, .. }) => {
                    assert_eq!(commit, 4);
                    assert!(reason.contains("commit 2"), "{reason}");
                }
                other => panic!("not refused: {other:?}"),
            }
            committer
                .ensure_table_agrees(LostCommitsPolicy::Accept)
                .await
                .unwrap();
        } else {
            result.unwrap();
            let sequences: Vec<u64> = store
                .forgotten_commits()
                .await
                .unwrap()
                .iter()
                .map(|f| f.sequence)
                .collect();
            assert_eq!(sequences, vec![4], "2 and 3 remembered, 4 forgotten");
        }
        assert_eq!(
            checkpointed_ids(&store).await,
            vec![0, 1, 2],
            "settled: {settled}: keys 1 and 2 stay processed"
        );
    }
}

/// Keys are forgotten, or remembered again, only while no run of another
/// lease scope is live (it reads with the keys it loaded before), and
/// remembered only while no checkpoint waits for its commit or is being
/// written (it may hold their rows read again). The committer's own live
/// lease does not stop it.
#[tokio::test]
async fn keys_are_forgotten_or_remembered_only_while_no_other_run_is_live() {
    let (_, store, table, committer) = three_commits().await;
    let options = LeaseOptions {
        ttl: Duration::from_secs(60),
        holder: "test".into(),
    };
    let own = Lease::acquire(&store, PIPELINE_SCOPE, 1, options.clone())
        .await
        .unwrap();
    let committer = committer.with_fence(own.fence());
    let forgotten = || async {
        let records = store.forgotten_commits().await.unwrap();
        records.iter().map(|f| f.sequence).collect::<Vec<u64>>()
    };
    let held_by_other = |result: tidemark::Result<_>| match result {
        Err(Error::LeaseHeld { scope, .. }) => assert_eq!(scope, "other-run"),
        other => panic!("not refused for the other run: {other:?}"),
    };

    table.roll_back_to(1);
    let other = Lease::acquire(&store, "other-run", 1, options.clone())
        .await
        .unwrap();
    held_by_other(
        committer
            .ensure_table_agrees(LostCommitsPolicy::Reprocess)
            .await,
    );
    assert!(forgotten().await.is_empty(), "nothing forgotten");
    other.release().await.unwrap();
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    assert_eq!(forgotten().await, vec![2, 3]);

    // Restored: the table holds commits 2 and 3 again.
    table.restore();
    let other = Lease::acquire(&store, "other-run", 1, options)
        .await
        .unwrap();
    held_by_other(
        committer
            .ensure_table_agrees(LostCommitsPolicy::Refuse)
            .await,
    );
    other.release().await.unwrap();
    // One checkpoint sealed and waiting, one being written.
    seal(&store, vec![7], "data/7.parquet").await;
    let _writing = store.begin().await.unwrap();
    match committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
    {
        Err(Error::ForgottenCommitsRegained {
            commits, pending, ..
        }) => assert_eq!((commits.as_str(), pending), ("2..=3", 2)),
        other => panic!("not refused for the pending checkpoints: {other:?}"),
    }
    assert_eq!(forgotten().await, vec![2, 3], "still forgotten");
}

/// Commits forgotten, then a table whose history no longer tells what it
/// carries, before their rows were committed anew: a plain run is refused
/// and asks; reprocessing keeps them forgotten; accepting remembers them.
#[tokio::test]
async fn forgotten_commits_beside_a_history_that_cannot_tell_are_the_users_call() {
    let (_, store, table, committer) = three_commits().await;
    table.roll_back_to(1);
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    table.lose_history();
    match committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
    {
        Err(err @ Error::ForgottenCommitsUndecided { .. }) => {
            let message = err.to_string();
            assert!(message.contains("commits 2..=3"), "{message}");
            assert!(message.contains("--reprocess-lost-commits"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    committer
        .ensure_table_agrees(LostCommitsPolicy::Reprocess)
        .await
        .unwrap();
    assert_eq!(store.forgotten_commits().await.unwrap().len(), 2);
    assert_eq!(checkpointed_ids(&store).await, vec![0], "still forgotten");
    committer
        .ensure_table_agrees(LostCommitsPolicy::Accept)
        .await
        .unwrap();
    assert!(store.forgotten_commits().await.unwrap().is_empty());
    assert_eq!(checkpointed_ids(&store).await, vec![0, 1, 2], "remembered");
    committer
        .ensure_table_agrees(LostCommitsPolicy::Refuse)
        .await
        .unwrap();
}

/// Two compactions, one publishing while the other prunes. A has published
/// its generation and is deleting what it superseded when B, starting from
/// A's generation, publishes the next one with key files of its own. A must
/// leave B's files alone: they belong to a newer generation than A's, which
/// A's own two generations do not name. Every checkpointed key stays readable.
#[tokio::test]
async fn a_compaction_pruning_keeps_the_key_files_of_a_newer_one() {
    let (inner, plain) = memory_store().await;
    let table = MemoryTable::default();
    let options = tidemark::store::CompactionOptions {
        min_checkpoints: 1,
        keep_latest_commits: 0,
        ..Default::default()
    };
    let commit = |store: CheckpointStore, table: MemoryTable| async move {
        Committer::new(store, table, "races")
            .commit_pending()
            .await
            .unwrap();
    };
    // Generation 1, then a committed checkpoint for A's generation 2.
    seal(&plain, vec![1, 2], "data/x.parquet").await;
    commit(plain.clone(), table.clone()).await;
    let first = plain.compact(&options).await.unwrap();
    assert_eq!(first.generation, Some(1));
    seal(&plain, vec![3, 4], "data/y.parquet").await;
    commit(plain.clone(), table.clone()).await;

    // B, once A has published generation 2 and lists index key files to
    // prune: commits a third checkpoint and compacts it into generation 3.
    let b_store = plain.clone();
    let b_table = table.clone();
    let b_options = options.clone();
    let hooked = Arc::new(FaultyStore::new(inner.clone()));
    hooked.before_list(
        "index-keys",
        Box::pin(async move {
            seal(&b_store, vec![5, 6], "data/z.parquet").await;
            commit(b_store.clone(), b_table).await;
            let b = b_store.compact(&b_options).await.unwrap();
            assert_eq!(b.generation, Some(3), "B builds on A's generation");
        }),
    );
    let a_store = store_on(hooked).await;
    let a = a_store.compact(&options).await.unwrap();
    assert_eq!(a.generation, Some(2));

    let state = plain.load().await.unwrap();
    assert_eq!(state.index.as_ref().map(|i| i.generation), Some(3));
    assert_eq!(
        checkpointed_ids(&plain).await,
        vec![1, 2, 3, 4, 5, 6],
        "every key readable from generation 3's files"
    );
}
