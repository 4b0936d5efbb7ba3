//! The stored records of a checkpoint store and their versioned JSON encoding.
//!
//! Every JSON object carries `format_version`. A reader accepts every version from
//! [`MIN_FORMAT_VERSION`] to [`FORMAT_VERSION`]; the fixtures under
//! `tests/fixtures/store-v1/` pin version 1 so that a store written by an older
//! build keeps being read.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::KeyColumn;
use crate::error::{Error, ObjectKind, Result};

/// The format version this build writes. Version 2 added fingerprints to key
/// files (of every key but a single fixed-width column; see `keys`) and their
/// place in `KeyFileRef`: builds of version 1 would take such a file for a
/// corrupt one.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Identifies a checkpoint. Time-ordered (UUID v7) when tidemark makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(Uuid);

impl CheckpointId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        CheckpointId(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CheckpointId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for CheckpointId {
    fn from(uuid: Uuid) -> Self {
        CheckpointId(uuid)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CheckpointId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(CheckpointId)
            .map_err(|_| Error::UnknownCheckpoint { id: s.to_string() })
    }
}

/// Table-format metadata of a written data file, as the sink encodes it
/// (an Iceberg `DataFile`, a Delta `Add` action). The core stores it verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableFileMetadata {
    /// Which encoding `body` uses, e.g. `iceberg.data-file` or `delta.add`.
    pub format: String,
    /// Version of that encoding, owned by the connector that wrote it.
    pub version: u32,
    /// The metadata itself.
    pub body: serde_json::Value,
}

/// A data file written by a pipeline and waiting to be committed to a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Where the data file is, as the sink addresses it (usually a URL).
    pub path: String,
    /// Size of the file in bytes.
    pub file_size_bytes: u64,
    /// Number of rows in the file.
    pub record_count: u64,
    /// Table-format metadata needed to commit the file.
    pub table_metadata: TableFileMetadata,
}

/// A Parquet file of keys, relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFileRef {
    /// Path below the store root.
    pub path: String,
    /// Number of keys in it.
    pub row_count: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// CRC-32 of the file's bytes, checked on every read so that a truncated
    /// or altered key file is an error naming it, never a silent loss of keys.
    /// Absent in records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    /// The least and greatest key in the file. A read whose source keys all
    /// fall outside it does not open the file. Absent when a key is null, and
    /// in records written before it was recorded: such files are always read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<KeyRange>,
    /// Where the file's fingerprint column lies, so that a read can fetch it
    /// alone. Absent for key files without fingerprints and in records
    /// written before it was recorded: such files are fetched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<FingerprintBytes>,
}

/// The bytes of a key file that its fingerprints are read from: the
/// fingerprint column's chunk and the Parquet footer, which runs to the end of
/// the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintBytes {
    /// Offset of the column chunk's first byte.
    pub column_start: u64,
    /// Offset just past the column chunk's last byte.
    pub column_end: u64,
    /// Offset of the footer's first byte.
    pub footer_start: u64,
    /// CRC-32 of the column chunk's bytes followed by the footer's, checked on
    /// every such read.
    pub crc32: u32,
}

/// The least and greatest of a set of keys, each as the lowercase hex of its
/// encoded bytes (a fixed-width key's bits in big-endian order, a string or
/// binary key's bytes, a composite key's Arrow row). Hex keeps the bytes'
/// order, so ranges compare as strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The least key.
    pub least: String,
    /// The greatest key.
    pub greatest: String,
}

impl KeyRange {
    /// Whether some key could lie in both ranges.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        self.least <= other.greatest && other.least <= self.greatest
    }
}

/// The seal of a checkpoint: its presence makes the checkpoint's keys skipped and
/// its files committable. Written once, with put-if-not-exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Encoding version.
    pub format_version: u32,
    /// The checkpoint sealed.
    pub checkpoint_id: CheckpointId,
    /// The writer whose seal this is.
    pub writer_id: Uuid,
    /// When the writer began.
    pub begun_at: DateTime<Utc>,
    /// When it sealed.
    pub sealed_at: DateTime<Utc>,
    /// Keys processed under this checkpoint.
    pub key_files: Vec<KeyFileRef>,
    /// Data files to commit.
    pub files: Vec<FileRecord>,
    /// Data files recorded as in flight but never staged: nothing refers to them,
    /// and a garbage collector may delete them.
    pub abandoned_writes: Vec<String>,
    /// Free-form properties the pipeline attached (source shard, run id, ...).
    pub properties: BTreeMap<String, String>,
    /// Set when this is not a writer's seal but a tombstone: the holder of a
    /// newer lease sealed the checkpoint of a fenced writer empty, so that the
    /// fenced writer's own seal fails. A tombstone has no keys and no files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<LeaseClaim>,
    /// Digests ([`unit_digest`]) of the source units whose last rows this
    /// checkpoint holds: every row of such a unit was read, and its key is
    /// checkpointed by this checkpoint or an earlier one of the same run. A
    /// later read skips these units without opening them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finished_units: Vec<String>,
}

impl Manifest {
    /// Total number of keys in the checkpoint.
    pub fn key_count(&self) -> u64 {
        self.key_files.iter().map(|k| k.row_count).sum()
    }

    /// Total number of rows in the checkpoint's data files.
    pub fn row_count(&self) -> u64 {
        self.files.iter().map(|f| f.record_count).sum()
    }
}

/// Marks a sealed checkpoint's files as committed to the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// Encoding version.
    pub format_version: u32,
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// When it was marked.
    pub committed_at: DateTime<Utc>,
    /// What the sink reports about the commit (table, sequence, snapshot or version).
    pub commit: serde_json::Value,
}

/// Fixes which checkpoints the table commit numbered `sequence` carries, before
/// that commit is attempted. Written once, with put-if-not-exists, so that every
/// retry of the commit (by this process or another) applies the same files under
/// the same number, and the table's marker can tell whether it already landed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitIntent {
    /// Encoding version.
    pub format_version: u32,
    /// The commit sequence: 1 for a pipeline's first table commit, then +1.
    pub sequence: u64,
    /// The pipeline whose marker the table commit carries.
    pub pipeline_id: String,
    /// The table committed into, as the sink names it.
    pub table: String,
    /// The sealed checkpoints whose files the commit appends, in id order.
    pub checkpoints: Vec<CheckpointId>,
    /// When the intent was written.
    pub created_at: DateTime<Utc>,
}

/// Written before a data file is written, so that a crash leaves no untracked file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlightRecord {
    /// Encoding version.
    pub format_version: u32,
    /// The checkpoint the file belongs to.
    pub checkpoint_id: CheckpointId,
    /// The writer writing it.
    pub writer_id: Uuid,
    /// Where the data file will be.
    pub path: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// `true` if `path` is a prefix (a directory ending in `/`) under which the
    /// writer puts files whose names a table library chooses as it writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
}

/// Written when a writer begins a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeginMarker {
    /// Encoding version.
    pub format_version: u32,
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// The writer.
    pub writer_id: Uuid,
    /// When it began.
    pub begun_at: DateTime<Utc>,
    /// The lease the writer held, if it was fenced by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseClaim>,
}

/// A lease scope and epoch: who was allowed to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClaim {
    /// The lease's scope: `pipeline` for a whole pipeline, or a shard's name.
    pub scope: String,
    /// The epoch: 1 for the first holder, then +1 for every takeover.
    pub epoch: u64,
    /// The shard layout the holder ran under (see [`ShardLayout`]); 0 in
    /// claims made before layouts were recorded.
    #[serde(default)]
    pub layout: u64,
}

/// `layouts/{layout}.json`: how many shards the runs of a pipeline split the
/// source into, from this layout on. Written once, with put-if-not-exists;
/// the highest layout is current. Runs of the current shard count share it;
/// a run of another shard count starts the next layout, once no run of any
/// scope is live, and so fences every run of the older layouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardLayout {
    /// Encoding version.
    pub format_version: u32,
    /// The layout's number: 1 for the first, then +1 for every change.
    pub layout: u64,
    /// Shards of the runs under this layout (1: not sharded).
    pub shards: u32,
    /// The acquisition that wrote it.
    pub owner: Uuid,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// `lease/{scope}/epochs/{epoch}.json`: who took the lease at this epoch.
/// Written once, with put-if-not-exists; the highest epoch is the holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Encoding version.
    pub format_version: u32,
    /// Scope and epoch.
    pub claim: LeaseClaim,
    /// Identifies the holder process (one id per acquisition).
    pub owner: Uuid,
    /// Human-readable holder: host and process id.
    pub holder: String,
    /// When it was taken.
    pub acquired_at: DateTime<Utc>,
    /// Until when it is held unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// `lease/{scope}/heartbeats/{epoch}.json`: the holder's latest renewal or release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseHeartbeat {
    /// Encoding version.
    pub format_version: u32,
    /// Scope and epoch.
    pub claim: LeaseClaim,
    /// The holder.
    pub owner: Uuid,
    /// When it was renewed.
    pub renewed_at: DateTime<Utc>,
    /// Until when it is held unless renewed again.
    pub expires_at: DateTime<Utc>,
    /// The holder let go: the next run may take over at once.
    pub released: bool,
}

/// `collected/{checkpoint}.json`: data files of a sealed checkpoint's in-flight
/// writes that never made it into its manifest and have been deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectedRecord {
    /// Encoding version.
    pub format_version: u32,
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// Paths and prefixes deleted, over every collection so far.
    pub deleted: Vec<String>,
    /// When the last collection ran.
    pub collected_at: DateTime<Utc>,
}

/// `accepted/{marker}.json`: the user accepted a table that lost commits of
/// the pipeline (rolled back or restored) as it is: the lost commits' keys
/// stay processed. Later checks of the same table state go on without being
/// told again; a table that loses more is refused again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptanceRecord {
    /// Encoding version.
    pub format_version: u32,
    /// The table's marker for the pipeline when it was accepted.
    pub marker: u64,
    /// The latest commit of the pipeline that the table's current state
    /// carried then (`None`: none).
    pub carried: Option<u64>,
    /// The commits accepted as lost (`3` or `3..=5`).
    pub commits: String,
    /// What the table showed.
    pub why: String,
    /// When it was accepted.
    pub accepted_at: DateTime<Utc>,
    /// The lost commits were reprocessed rather than kept: their keys were
    /// forgotten ([`ForgottenCommit`]), so a run reads their rows again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reprocessed: bool,
}

/// `forgotten/{sequence}.json`: the table lost commit `sequence` of the
/// pipeline (rolled back or restored) and the user chose to reprocess it.
/// The keys of its checkpoints no longer count as processed, so the next run
/// reads their rows again and commits them under a new sequence. Compaction
/// deletes the checkpoints' records, then this one, once a commit made
/// after the forgetting is marked committed and the distrusted checkpoints
/// are in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenCommit {
    /// Encoding version.
    pub format_version: u32,
    /// The lost commit.
    pub sequence: u64,
    /// The table's marker for the pipeline when it was forgotten. While the
    /// marker is the same and the table carries the commit again (restored),
    /// the commit is remembered instead.
    pub marker: u64,
    /// Its checkpoints (from its commit intent), whose keys are forgotten.
    pub checkpoints: Vec<CheckpointId>,
    /// Checkpoints sealed but not committed when it was forgotten: one of
    /// them may have read to its end a source unit whose earlier rows are in
    /// this commit, so their finished units are not trusted (neither while
    /// they wait nor once compacted), and the unit is read again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distrusted: Vec<CheckpointId>,
    /// What the table showed.
    pub why: String,
    /// When it was forgotten.
    pub forgotten_at: DateTime<Utc>,
}

/// `tidemark.json`: what every checkpoint of the store has in common.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Encoding version.
    pub format_version: u32,
    /// The key columns.
    pub key_columns: Vec<KeyColumn>,
    /// When the store was created.
    pub created_at: DateTime<Utc>,
}

/// One generation of the compacted index: the keys of committed checkpoints,
/// folded into a few sorted files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexGeneration {
    /// Encoding version.
    pub format_version: u32,
    /// Generation number; the highest one present is current.
    pub generation: u64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Every checkpoint whose keys the index holds (all committed).
    pub checkpoints: Vec<CheckpointId>,
    /// Checkpoints first folded in by this generation; their staged objects are
    /// deleted by the next compaction, so readers of this generation's
    /// predecessor have one compaction interval to finish.
    pub newly_compacted: Vec<CheckpointId>,
    /// Sorted runs of keys. Within a run, files are in ascending key order and
    /// do not overlap; runs may overlap each other.
    pub runs: Vec<KeyRun>,
    /// Rows of the data files of every checkpoint in the index (what reached
    /// the table through them), so that the total survives compaction. Absent
    /// in indexes written before it was recorded, which count 0.
    #[serde(default)]
    pub committed_rows: u64,
    /// The finished source units ([`Manifest::finished_units`]) of every
    /// checkpoint in the index, sorted and without repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finished_units: Vec<String>,
}

impl IndexGeneration {
    /// Every key file of every run.
    pub fn key_files(&self) -> impl Iterator<Item = &KeyFileRef> {
        self.runs.iter().flat_map(|r| r.key_files.iter())
    }
}

/// A sorted run of keys split over one or more files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRun {
    /// The files, in ascending key order.
    pub key_files: Vec<KeyFileRef>,
}

impl KeyRun {
    /// Keys in the run.
    pub fn key_count(&self) -> u64 {
        self.key_files.iter().map(|f| f.row_count).sum()
    }
}

/// The digest under which a source unit's content id
/// ([`SourceUnit::content_id`](crate::source::SourceUnit::content_id)) is
/// recorded: the first 128 bits of its SHA-256, in hex. Fixed size, whatever
/// the length of the id, and stable across versions.
pub fn unit_digest(content_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(content_id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes a record as JSON.
pub(crate) fn encode<T: Serialize>(kind: ObjectKind, path: &str, record: &T) -> Result<Bytes> {
    serde_json::to_vec_pretty(record)
        .map(Bytes::from)
        .map_err(|e| Error::Encode {
            kind,
            path: path.to_string(),
            source: Box::new(e),
        })
}

/// Decodes a record, checking its format version first so that a newer store is
/// reported as such rather than as corrupt.
pub(crate) fn decode<T: DeserializeOwned>(kind: ObjectKind, path: &str, bytes: &[u8]) -> Result<T> {
    /// Only the version: the rest of the document is skipped, not built.
    #[derive(Deserialize)]
    struct Versioned {
        format_version: Option<u64>,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(kind, path, e))?;
    let version = versioned
        .format_version
        .ok_or_else(|| Error::corrupt(kind, path, "no format_version field"))?;
    if !(MIN_FORMAT_VERSION as u64..=FORMAT_VERSION as u64).contains(&version) {
        return Err(Error::UnsupportedFormatVersion {
            kind,
            path: path.to_string(),
            found: u32::try_from(version).unwrap_or(u32::MAX),
            min: MIN_FORMAT_VERSION,
            max: FORMAT_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(kind, path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_checkpoint_id_reads_back_from_its_text() {
        let id = CheckpointId::new();
        let text = id.to_string();
        assert_eq!(text, id.as_uuid().to_string());
        assert_eq!(text.parse::<CheckpointId>().unwrap(), id);
        assert_eq!(CheckpointId::from(id.as_uuid()), id);
        assert_ne!(CheckpointId::new(), id, "each id is new");
        let error = "not-an-id".parse::<CheckpointId>().unwrap_err();
        assert!(
            matches!(&error, Error::UnknownCheckpoint { id } if id == "not-an-id"),
            "{error}"
        );
    }

    #[test]
    fn key_ranges_overlap_when_a_key_could_lie_in_both() {
        let range = |least: &str, greatest: &str| KeyRange {
            least: least.into(),
            greatest: greatest.into(),
        };
        let middle = range("10", "20");
        for (other, overlaps) in [
            (range("00", "09"), false),
            (range("00", "10"), true),
            (range("12", "15"), true),
            (range("00", "30"), true),
            (range("20", "30"), true),
            (range("21", "30"), false),
        ] {
            assert_eq!(middle.overlaps(&other), overlaps, "{other:?}");
            assert_eq!(other.overlaps(&middle), overlaps, "{other:?}");
        }
    }

    #[test]
    fn a_unit_digest_is_the_first_128_bits_of_sha_256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a3...
        assert_eq!(unit_digest("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(unit_digest(&"x".repeat(10_000)).len(), 32);
    }
}
