//! The error type of the core crate.

use std::fmt;

/// Boxed source error for variants that wrap several kinds of failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout tidemark.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of stored object an error is about; named in messages so the user
/// knows which file to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `tidemark.json`, the store descriptor holding the key schema.
    Descriptor,
    /// A seal manifest (`sealed/{id}.json`).
    Manifest,
    /// A commit marker (`committed/{id}.json`).
    CommitMarker,
    /// A Parquet file of keys (staged or compacted).
    KeyFile,
    /// An in-flight write record.
    InFlightRecord,
    /// A writer's begin marker.
    BeginMarker,
    /// A generation of the compacted index.
    Index,
    /// A commit intent (`commits/{sequence}.json`).
    CommitIntent,
    /// A lease epoch (`lease/{scope}/epochs/{epoch}.json`).
    Lease,
    /// A lease heartbeat (`lease/{scope}/heartbeats/{epoch}.json`).
    LeaseHeartbeat,
    /// A shard layout record.
    ShardLayout,
    /// A garbage collection record (`collected/{id}.json`).
    Collected,
    /// A table state the user accepted (`accepted/{marker}.json`).
    Acceptance,
    /// A lost commit the user chose to reprocess (`forgotten/{sequence}.json`).
    ForgottenCommit,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ObjectKind::Descriptor => "store descriptor",
            ObjectKind::Manifest => "seal manifest",
            ObjectKind::CommitMarker => "commit marker",
            ObjectKind::KeyFile => "key file",
            ObjectKind::InFlightRecord => "in-flight write record",
            ObjectKind::BeginMarker => "begin marker",
            ObjectKind::Index => "index",
            ObjectKind::CommitIntent => "commit intent",
            ObjectKind::Lease => "lease record",
            ObjectKind::LeaseHeartbeat => "lease heartbeat",
            ObjectKind::ShardLayout => "shard layout",
            ObjectKind::Collected => "garbage collection record",
            ObjectKind::Acceptance => "table acceptance record",
            ObjectKind::ForgottenCommit => "forgotten commit record",
        };
        f.write_str(name)
    }
}

/// Every failure tidemark reports. Each variant names what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store URL or one of its options could not be understood.
    #[error("invalid store location `{url}`: {reason}")]
    InvalidLocation {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },

    /// An object store request failed (unreachable server, permissions, ...).
    #[error("object store {operation} of `{path}` failed: {source}")]
    Store {
        /// The request that failed: `get`, `put`, `list`, ...
        operation: &'static str,
        /// The object or prefix it was about.
        path: String,
        /// The object store's error.
        #[source]
        source: object_store::Error,
    },

    /// The key schema given is not one tidemark can checkpoint.
    #[error("invalid key schema: {0}")]
    InvalidKeySchema(String),

    /// Key columns handed to the store do not match the store's key schema.
    #[error("key columns do not match the store's key schema: expected {expected}, got {found}")]
    KeySchemaMismatch {
        /// The store's key schema.
        expected: String,
        /// What was given.
        found: String,
    },

    /// There is no checkpoint store at the location.
    #[error("no tidemark checkpoint store at `{url}` (no tidemark.json)")]
    NoStore {
        /// The location.
        url: String,
    },

    /// No checkpoint with this id exists in the store.
    #[error("checkpoint {id} is unknown to this store")]
    UnknownCheckpoint {
        /// The id asked for.
        id: String,
    },

    /// The checkpoint is sealed: nothing can be staged into it, and only its
    /// own writer may seal it (again, idempotently).
    #[error("checkpoint {id} is already sealed by writer {sealed_by}")]
    AlreadySealed {
        /// The checkpoint.
        id: String,
        /// The writer whose seal won.
        sealed_by: String,
    },

    /// Only sealed checkpoints can be marked committed.
    #[error("checkpoint {id} is not sealed, so it cannot be marked committed")]
    NotSealed {
        /// The checkpoint.
        id: String,
    },

    /// A data file was staged without first being recorded as an in-flight write.
    #[error("data file `{path}` was staged in checkpoint {id} without an in-flight record; call record_in_flight before writing it")]
    NotInFlight {
        /// The checkpoint.
        id: String,
        /// The data file.
        path: String,
    },

    /// A stored object could not be decoded: truncated, corrupted or not ours.
    #[error("corrupt {kind} at `{path}`: {source}")]
    Corrupt {
        /// What kind of object.
        kind: ObjectKind,
        /// Where it is.
        path: String,
        /// What was wrong with it.
        #[source]
        source: BoxError,
    },

    /// A stored object was written by a newer tidemark than this one.
    #[error(
        "{kind} at `{path}` has format version {found}; this build reads versions {min} to {max}"
    )]
    UnsupportedFormatVersion {
        /// What kind of object.
        kind: ObjectKind,
        /// Where it is.
        path: String,
        /// The version found.
        found: u32,
        /// Oldest version this build reads.
        min: u32,
        /// Newest version this build reads.
        max: u32,
    },

    /// The store kept changing underneath a read (for example a compaction
    /// removed objects between a listing and a read) more times than allowed.
    #[error("the store changed during {operation} {attempts} times in a row; try again")]
    ConcurrentChange {
        /// The operation that gave up.
        operation: &'static str,
        /// How many attempts were made.
        attempts: u32,
    },

    /// Encoding a record failed.
    #[error("encoding {kind} for `{path}` failed: {source}")]
    Encode {
        /// What kind of object.
        kind: ObjectKind,
        /// Where it was to be written.
        path: String,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// An Arrow compute kernel failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What tidemark was doing.
        context: &'static str,
        /// The Arrow error.
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// Encoding keys to Parquet failed.
    #[error("encoding keys as Parquet for `{path}` failed: {source}")]
    EncodeKeys {
        /// The key file being written.
        path: String,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// A source could not be listed or read.
    #[error("reading source `{location}` failed: {source}")]
    Source {
        /// The file, table or URL being read.
        location: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },

    /// A source is not usable as given (no files, schemas that differ, ...).
    #[error("invalid source `{location}`: {reason}")]
    InvalidSource {
        /// The file, table or URL given.
        location: String,
        /// Why it cannot be read.
        reason: String,
    },

    /// A key appeared twice in one run under [`DuplicatePolicy::Error`](crate::read::DuplicatePolicy::Error).
    #[error("key {key} appears more than once in this run's source (duplicate policy: error); nothing of this run was checkpointed")]
    DuplicateKey {
        /// The key, as text.
        key: String,
    },

    /// A SQL transform does not plan: a syntax error, an unknown column or
    /// function, a statement that is not a query, or a table other than the
    /// source.
    #[error("SQL transform `{sql}`: {reason}")]
    Sql {
        /// The statement, or the plan when no statement was given.
        sql: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A transform between a checkpointed read and a sink is not row-wise.
    #[error("`{operation}` cannot run between a checkpointed read and a sink: {why}")]
    NotRowWise {
        /// The operation refused.
        operation: String,
        /// Why it would break exactly-once.
        why: String,
    },

    /// Local spill files of the partitioned key filter failed.
    #[error("spilling keys to `{path}` failed: {source}")]
    Spill {
        /// The spill file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The pipeline's map (the user's per-row work) failed. Nothing of the
    /// run is sealed; the next run processes its rows again.
    #[error("the pipeline's map failed: {source}")]
    Map {
        /// The map's error.
        #[source]
        source: BoxError,
    },

    /// A background task of tidemark's own panicked or was cancelled.
    #[error("a background task {task} did not finish: {source}")]
    Task {
        /// What the task was doing.
        task: &'static str,
        /// Why it did not finish.
        #[source]
        source: tokio::task::JoinError,
    },

    /// An in-flight prefix is not a directory.
    #[error("in-flight prefix `{prefix}` must be a directory ending in `/`")]
    InvalidInFlightPrefix {
        /// The prefix given.
        prefix: String,
    },

    /// A table sink failed to read its marker or to commit.
    #[error("table `{table}`: {source}")]
    Sink {
        /// The table, as the sink names it.
        table: String,
        /// The sink's error.
        #[source]
        source: BoxError,
    },

    /// A store's commit intents belong to another pipeline or table.
    #[error("commit {sequence} in this store was made by pipeline `{found_pipeline}` for table `{found_table}`, not by pipeline `{pipeline}` for table `{table}`; a store serves one pipeline writing one table")]
    CommitTargetMismatch {
        /// The intent's sequence.
        sequence: u64,
        /// The pipeline committing now.
        pipeline: String,
        /// The table committed into now.
        table: String,
        /// The pipeline recorded in the intent.
        found_pipeline: String,
        /// The table recorded in the intent.
        found_table: String,
    },

    /// The table's marker for the pipeline does not follow the store's commits,
    /// so committing could lose or duplicate rows.
    #[error("table `{table}` records commit {} for pipeline `{pipeline}`, but the store's commit in progress is {store_sequence}: {why}", table_sequence.map_or("none".to_string(), |s| s.to_string()))]
    MarkerMismatch {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
        /// What the table's marker says, if it has one.
        table_sequence: Option<u64>,
        /// The sequence the store is about to commit or resume.
        store_sequence: u64,
        /// What it means and what to do.
        why: String,
    },

    /// The table no longer holds commits the store made: it was rolled back,
    /// restored, dropped and recreated, or replaced. A run refuses before it
    /// reads, because the keys of those commits count as processed while
    /// their rows are gone.
    #[error(
        "table `{table}` no longer holds commits {lost} of pipeline `{pipeline}`: {why}. \
         Their keys count as processed, so a run would never write those rows again; \
         nothing was read or written. {way_out}"
    )]
    TableDiverged {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
        /// The commit sequences the table lost (`3` or `3..=5`).
        lost: String,
        /// What the table shows.
        why: String,
        /// What the user can do.
        way_out: String,
    },

    /// The user asked to reprocess commits a table lost, but the store can
    /// no longer tell which keys one of them carried. Nothing was forgotten,
    /// read or written.
    #[error(
        "cannot reprocess commit {commit} of pipeline `{pipeline}`, which table `{table}` lost: \
         {reason}. Nothing was forgotten, read or written. Accept the table as it is with \
         `tidemark run --accept-table-state` (the lost commits' keys stay processed), or start \
         over on this table: a new store (or a new pipeline id), then `tidemark adopt` to record \
         the rows the table holds now as processed"
    )]
    CannotReprocess {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
        /// The lost commit whose keys cannot be found.
        commit: u64,
        /// Why not.
        reason: String,
    },

    /// The table holds commits again whose keys were forgotten to reprocess
    /// them, while sealed checkpoints wait for their commit: those may hold
    /// the same rows, read again.
    #[error(
        "table `{table}` holds commits {commits} of pipeline `{pipeline}` again (it was restored), \
         but their keys were forgotten to reprocess them, and {pending} sealed checkpoint(s) \
         wait for their commit, which may hold those rows read again. Nothing was read or \
         written. Return the table to the state it had when they were forgotten (without those \
         commits) and run again: the waiting checkpoints then commit those rows"
    )]
    ForgottenCommitsRegained {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
        /// The commits the table holds again (`3` or `3..=5`).
        commits: String,
        /// Checkpoints sealed and waiting for their commit, or still being
        /// written.
        pending: usize,
    },

    /// Commits forgotten to reprocess them, with no commit made since, and a
    /// table whose history no longer tells whether it holds them again: the
    /// user says which.
    #[error(
        "the history of table `{table}` no longer tells whether it holds commits {commits} of \
         pipeline `{pipeline}` again, whose keys were forgotten to reprocess them (their rows \
         are not committed anew yet). Nothing was read or written. If the table does not hold \
         them, run with `--reprocess-lost-commits` (`LostCommitsPolicy::Reprocess`) to write \
         their rows; if it does, run with `--accept-table-state` (`LostCommitsPolicy::Accept`) \
         to count their keys as processed again"
    )]
    ForgottenCommitsUndecided {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
        /// The forgotten commits (`3` or `3..=5`).
        commits: String,
    },

    /// Another run holds the lease: two runs of one pipeline (or shard) must
    /// not process the same keys at once.
    #[error("lease `{scope}` is held by {holder} (epoch {epoch}) until {expires_at}; another run of this pipeline is active. Wait for it, or for the lease to expire if it died")]
    LeaseHeld {
        /// The lease scope.
        scope: String,
        /// The holder's epoch.
        epoch: u64,
        /// The holder (host and process).
        holder: String,
        /// When the lease expires unless renewed.
        expires_at: String,
    },

    /// A run of another shard count is live: the runs of one pipeline split
    /// the source one way at a time, so that no two live runs read the same
    /// keys.
    #[error("cannot run with {shards} shard(s) while lease `{scope}` of a run with {current_shards} shard(s) is held by {holder} (epoch {epoch}) until {expires_at}. Run with {current_shards} shard(s), or wait for that run to finish (or for its lease to expire if it died)")]
    ShardLayoutInUse {
        /// The shard count asked for.
        shards: u32,
        /// The shard count of the current layout.
        current_shards: u32,
        /// The live scope.
        scope: String,
        /// Its epoch.
        epoch: u64,
        /// Its holder (host and process).
        holder: String,
        /// When its lease expires unless renewed.
        expires_at: String,
    },

    /// This writer's lease was taken over by a newer run: it must stop without
    /// sealing or committing anything.
    #[error("fenced: lease `{scope}` epoch {epoch} was taken over by {by}; this run stopped before {operation} and sealed nothing")]
    Fenced {
        /// The lease scope.
        scope: String,
        /// This run's epoch.
        epoch: u64,
        /// What took over: a newer epoch of the scope, or a run of another
        /// shard count (a newer shard layout).
        by: String,
        /// What this run was about to do.
        operation: &'static str,
    },

    /// A pipeline id breaks the rule of [`crate::redact::PIPELINE_ID_RULE`].
    #[error("invalid pipeline id \"{id}\": use {rule}")]
    InvalidPipelineId {
        /// The id, escaped.
        id: String,
        /// The rule.
        rule: &'static str,
    },

    /// A lease's time to live is zero or too long.
    #[error("invalid lease time to live of {secs} s: use 1 s to {max_secs} s")]
    InvalidLeaseTtl {
        /// The TTL given, in whole seconds.
        secs: u64,
        /// The longest allowed.
        max_secs: u64,
    },

    /// A lease scope is not a plain name.
    #[error("invalid lease scope `{scope}`: use letters, digits, `.`, `_` and `-`")]
    InvalidLeaseScope {
        /// The scope given.
        scope: String,
    },
}

impl Error {
    /// Wraps an object store error with the request and path it came from.
    pub(crate) fn store(
        operation: &'static str,
        path: impl fmt::Display,
        source: object_store::Error,
    ) -> Self {
        Error::Store {
            operation,
            path: path.to_string(),
            source,
        }
    }

    /// Wraps a decoding failure of a stored object.
    pub(crate) fn corrupt(
        kind: ObjectKind,
        path: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Corrupt {
            kind,
            path: path.to_string(),
            source: source.into(),
        }
    }
}
