//! Checkpointed reads: a source read through a checkpoint store, so that rows
//! whose key is already checkpointed never reach the caller, and the keys of the
//! rows that do reach it are staged in the run's checkpoint.
//!
//! The filter runs in one of two modes, chosen when the read opens:
//! - **in memory**: the checkpointed keys fit in the memory budget, so they are
//!   loaded into one hash set and the source streams through it once.
//! - **partitioned**: they do not fit, so the checkpointed keys and the source's
//!   keys are spilled to local files partitioned by hash, each partition is
//!   joined on its own (its keys only need to fit; one partition per core at
//!   a time), and the verdicts go to bitmaps of two bits per source row. The
//!   source is then streamed once more and the bitmaps applied. Memory is a
//!   partition per core plus the bitmaps.
//!
//! When the source left to read is much smaller than the checkpoint (a rerun
//! over a grown source, say: [`SMALL_SOURCE_RATIO`]), the in-memory mode holds
//! only the checkpointed keys that the source holds: the source's key columns
//! are read first into a set, and the key files are streamed through it. The
//! filter is then the size of the source, not of the history; the second read
//! checks that every key it passes was in the first.
//!
//! Both modes are exact, keep the source's row order, and apply the same
//! [`DuplicatePolicy`] to keys that appear more than once in the source.
//!
//! Before either, whole units are skipped: a unit that an earlier sealed
//! checkpoint recorded as read to its end ([`CheckpointedRead::take_finished_units`],
//! [`CheckpointWriter::record_finished_units`]) under the same content id
//! ([`SourceUnit::content_id`](crate::source::SourceUnit::content_id)) holds
//! only checkpointed keys, so it is not opened at all. A rerun over a source
//! that only grew reads only the new units; when no unit is left, the
//! checkpointed keys are not even loaded. The anti-join stays the check for
//! units read in part, changed, or without a content id.

mod partitioned;

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_buffer::{BooleanBuffer, BooleanBufferBuilder};
use arrow_cast::display::array_value_to_string;
use futures::stream::{BoxStream, StreamExt};

use crate::error::{Error, Result};
use crate::filter::codec::KeyCodec;
use crate::filter::fingerprints::FingerprintSet;
use crate::filter::key_set::KeySet;
use crate::filter::range::RangeBuilder;
use crate::filter::{check_source, filter_rows, key_columns, KeyFilter};
use crate::source::{read_units, read_units_mapped, BatchMap, Source};
use crate::store::keys::{fingerprints as fingerprints_of, has_fingerprints};
use crate::store::{unit_digest, CheckpointStore, CheckpointWriter, KeyRange, KeySchema};
use partitioned::Verdicts;

/// A source with this many times fewer rows than there are checkpointed keys
/// has its keys read first, and only the checkpointed keys among them are held.
pub const SMALL_SOURCE_RATIO: u64 = 8;

/// What to do with a key that appears more than once in one run's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Keep the first row with the key (in source order), drop the others. Every
    /// key is then processed once. The default.
    #[default]
    KeepFirst,
    /// Pass every row; each key is still staged, so later runs skip all of them.
    PassAll,
    /// Fail the read, naming the key. In the partitioned mode the error comes
    /// from [`CheckpointedRead::open`], before any row is returned.
    Error,
}

/// How a checkpointed read runs.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Memory the key filter may use, in bytes. Above it, keys are partitioned
    /// to local spill files. Default: 1 GiB.
    pub memory_budget_bytes: usize,
    /// Policy for keys repeated within the source.
    pub duplicates: DuplicatePolicy,
    /// Source units (files) decoded at once.
    pub parallelism: usize,
    /// Columns to return, in order (all when `None`). Key columns are read in
    /// any case.
    pub projection: Option<Vec<String>>,
    /// Where spill files go (the system temporary directory when `None`).
    pub spill_dir: Option<PathBuf>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            memory_budget_bytes: 1 << 30,
            duplicates: DuplicatePolicy::default(),
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            projection: None,
            spill_dir: None,
        }
    }
}

/// How the filter ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterMode {
    /// One in-memory hash set.
    InMemory,
    /// Hash partitions spilled to local files, joined one at a time.
    Partitioned {
        /// Number of partitions.
        partitions: usize,
    },
}

/// What a checkpointed read did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStats {
    /// How the filter ran.
    pub mode: FilterMode,
    /// Keys checkpointed before this run.
    pub checkpointed_keys: u64,
    /// Source rows read.
    pub rows_read: u64,
    /// Rows dropped because their key was checkpointed, including the rows
    /// of skipped units (when the source knows their count).
    pub rows_skipped: u64,
    /// Units not opened: an earlier run read them to their end.
    pub units_skipped: u64,
    /// Rows dropped as repeats of a key earlier in this run.
    pub duplicates_dropped: u64,
    /// Rows returned (their keys are staged).
    pub rows_passed: u64,
    /// Most memory the filter held at once, in bytes.
    pub peak_filter_bytes: usize,
    /// Checkpointed keys the in-memory filter held: all of them, or only
    /// those the source also holds when it is small (see [`SMALL_SOURCE_RATIO`]).
    pub filter_keys: u64,
    /// Key files not read because no source key lies in their range (only a
    /// small source's keys are known before the key files are read).
    pub key_files_skipped: u64,
    /// Key files read but not decoded: none of their key fingerprints is a
    /// small source's (every key but a single fixed-width column, key files
    /// of format version 2).
    pub key_files_not_decoded: u64,
    /// Source units read to their end (a unit ends when the next one's first
    /// batch arrives, or the source ends).
    pub units_finished: u64,
}

/// The filter state of an open read.
#[derive(Debug)]
enum Plan {
    InMemory {
        /// Shared with the decoding tasks, which probe it.
        filter: Arc<KeyFilter>,
        /// The keys of a small source, read first: every key the second read
        /// passes must be among them.
        source_keys: Option<Arc<KeyFilter>>,
        /// Keys passed in this run, when the duplicate policy needs them.
        run_keys: Option<KeySet>,
    },
    Partitioned {
        verdicts: Verdicts,
        /// Unit and row position of the next batch.
        cursor: Option<(usize, u64)>,
    },
}

/// A source read through a checkpoint store. Call
/// [`next_batch`](Self::next_batch) until it returns `None`, then seal the writer.
pub struct CheckpointedRead {
    key_schema: KeySchema,
    codec: KeyCodec,
    plan: Plan,
    batches: BoxStream<'static, Result<(usize, Probed)>>,
    /// Indices of the returned columns in the read batches, when they differ.
    output_columns: Option<Vec<usize>>,
    duplicates: DuplicatePolicy,
    unit_names: Vec<String>,
    /// The unit of the latest batch read.
    current_unit: Option<usize>,
    /// Digests of the units' content ids, by unit.
    unit_digests: Vec<Option<String>>,
    /// Digests of units read to their end, not yet taken.
    finished_units: Vec<String>,
    stats: ReadStats,
}

impl std::fmt::Debug for CheckpointedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointedRead")
            .field("key_schema", &self.key_schema)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl CheckpointedRead {
    /// Opens a read of every unit of `source` through `store`.
    pub async fn open(
        store: &CheckpointStore,
        source: Arc<dyn Source>,
        options: ReadOptions,
    ) -> Result<Self> {
        let units = (0..source.units().len()).collect();
        Self::open_units(store, source, units, options).await
    }

    /// Opens a read of some units of `source` (a shard) through `store`. Fails
    /// before reading any row if the source lacks a key column, a key column's
    /// type differs from the store's, or a projected column does not exist.
    pub async fn open_units(
        store: &CheckpointStore,
        source: Arc<dyn Source>,
        units: Vec<usize>,
        options: ReadOptions,
    ) -> Result<Self> {
        let key_schema = store.key_schema().clone();
        let schema = source.schema();
        check_source(&key_schema, &schema)?;
        let (read_columns, output_columns) =
            read_columns(&key_schema, &schema, options.projection.as_deref())?;
        let state = store.load().await?;
        let checkpointed_keys = state.key_count();
        let unit_names = source.units().iter().map(|u| u.name.clone()).collect();
        let unit_digests: Vec<Option<String>> = source
            .units()
            .iter()
            .map(|u| u.content_id.as_deref().map(unit_digest))
            .collect();
        let codec = KeyCodec::new(&key_schema)?;
        let finished = state.finished_units();
        let (skipped, units): (Vec<usize>, Vec<usize>) = units.into_iter().partition(|&u| {
            unit_digests
                .get(u)
                .and_then(Option::as_deref)
                .is_some_and(|digest| finished.contains(digest))
        });

        let mut stats = ReadStats {
            mode: FilterMode::InMemory,
            checkpointed_keys,
            rows_read: 0,
            rows_skipped: skipped
                .iter()
                .filter_map(|&u| source.units().get(u).and_then(|unit| unit.row_count))
                .sum(),
            units_skipped: skipped.len() as u64,
            duplicates_dropped: 0,
            rows_passed: 0,
            peak_filter_bytes: 0,
            filter_keys: 0,
            key_files_skipped: 0,
            key_files_not_decoded: 0,
            units_finished: 0,
        };
        let source_rows = rows_of(source.as_ref(), &units);
        let small_source = source_rows
            .is_some_and(|rows| rows.saturating_mul(SMALL_SOURCE_RATIO) < checkpointed_keys);
        let mut source_keys = None;
        let in_memory = if units.is_empty() {
            // Nothing to read: the checkpointed keys are not needed.
            Some(KeyFilter::new(key_schema.clone())?)
        } else if small_source
            // The source's keys and the checkpointed keys among them, and
            // the source keys' fingerprints (about one key's worth more).
            && fits_in_memory(
                &codec,
                source_rows.map_or(u64::MAX, |rows| {
                    rows.saturating_mul(if has_fingerprints(&key_schema) { 3 } else { 2 })
                }),
                source_rows,
                &options,
            )
        {
            let read = read_source_keys(&key_schema, source.clone(), &units, source_rows, &options)
                .await?;
            let fingerprint_bytes = read
                .fingerprints
                .as_ref()
                .map_or(0, FingerprintSet::memory_bytes);
            // The bound above is a floor: past the budget, partitions take over.
            if read.keys.memory_bytes() + fingerprint_bytes > options.memory_budget_bytes {
                None
            } else {
                let wanted = Arc::new(read.keys);
                let matched = KeyFilter::load_matching(
                    store,
                    &state,
                    &wanted,
                    read.range.as_ref(),
                    read.fingerprints.map(Arc::new),
                )
                .await?;
                let held = wanted.memory_bytes() + fingerprint_bytes;
                if held + matched.filter.memory_bytes() > options.memory_budget_bytes {
                    None
                } else {
                    stats.key_files_skipped = matched.files_skipped;
                    stats.key_files_not_decoded = matched.files_not_decoded;
                    stats.peak_filter_bytes = held;
                    source_keys = Some(wanted);
                    Some(matched.filter)
                }
            }
        } else if fits_in_memory(&codec, checkpointed_keys, source_rows, &options) {
            KeyFilter::load_within(store, &state, options.memory_budget_bytes).await?
        } else {
            None
        };
        let plan = match in_memory {
            Some(filter) => {
                stats.filter_keys = filter.len() as u64;
                stats.peak_filter_bytes += filter.memory_bytes();
                // Sized for every source row up front (within the budget):
                // growing a table of millions of keys rehashes it several times.
                let rows = source_rows
                    .and_then(|r| usize::try_from(r).ok())
                    .unwrap_or(0)
                    .min(options.memory_budget_bytes / 16);
                let run_keys = (options.duplicates != DuplicatePolicy::PassAll)
                    .then(|| KeySet::expecting(rows, codec.is_words()));
                Plan::InMemory {
                    filter: Arc::new(filter),
                    source_keys,
                    run_keys,
                }
            }
            None => {
                let verdicts =
                    partitioned::judge(store, &state, &codec, source.clone(), &units, &options)
                        .await?;
                stats.mode = FilterMode::Partitioned {
                    partitions: verdicts.partitions,
                };
                stats.peak_filter_bytes = verdicts.peak_bytes;
                Plan::Partitioned {
                    verdicts,
                    cursor: None,
                }
            }
        };
        // In memory, each batch is probed in the task that decoded it, so the
        // probe runs beside the decoding of other units; the duplicate check,
        // which needs source order, stays in `next_batch`.
        let probe: BatchMap<Probed> = match &plan {
            Plan::InMemory {
                filter,
                source_keys,
                ..
            } => {
                let filter = filter.clone();
                let source_keys = source_keys.clone();
                Arc::new(move |batch| Probed::against(&filter, source_keys.as_deref(), batch))
            }
            Plan::Partitioned { .. } => Arc::new(|batch| Ok(Probed::unfiltered(batch))),
        };
        let batches = read_units_mapped(
            source,
            units,
            Some(read_columns),
            options.parallelism,
            probe,
        );
        Ok(CheckpointedRead {
            key_schema,
            codec,
            plan,
            batches,
            output_columns,
            duplicates: options.duplicates,
            unit_names,
            current_unit: None,
            unit_digests,
            finished_units: Vec::new(),
            stats,
        })
    }

    /// What the read has done so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// Digests of the units read to their end since the last call, for
    /// [`CheckpointWriter::record_finished_units`]. A unit ends when a batch
    /// of the next one arrives or the source ends, so every key it holds was
    /// staged by then, into the writer passed to
    /// [`next_batch`](Self::next_batch) or one before it. Record them in the
    /// checkpoint open at that moment: once it seals, later reads skip the
    /// units. Units without a content id are left out.
    pub fn take_finished_units(&mut self) -> Vec<String> {
        std::mem::take(&mut self.finished_units)
    }

    /// Counts `unit` as read to its end.
    fn finish_unit(&mut self, unit: usize) {
        self.stats.units_finished += 1;
        if let Some(Some(digest)) = self.unit_digests.get(unit) {
            self.finished_units.push(digest.clone());
        }
    }

    /// The next batch of rows whose key is not checkpointed, after staging their
    /// keys into `writer` (so a row the caller later filters out still counts
    /// as processed once the writer seals). `None` at the end of the source.
    pub async fn next_batch(
        &mut self,
        writer: &mut CheckpointWriter,
    ) -> Result<Option<RecordBatch>> {
        let Some((batch, keys)) = self.next_passed().await? else {
            return Ok(None);
        };
        writer.buffer_keys(&keys).await?;
        Ok(Some(batch))
    }

    /// The next batch of rows whose key is not checkpointed, staging nothing:
    /// what a run would process, for a look before it
    /// ([`UnprocessedTable`](crate::plan::UnprocessedTable)). Rows read this
    /// way stay unprocessed. Not public: the units it finishes must never be
    /// recorded in a checkpoint, since none of their keys were staged.
    pub(crate) async fn next_unstaged_batch(&mut self) -> Result<Option<RecordBatch>> {
        Ok(self.next_passed().await?.map(|(batch, _)| batch))
    }

    /// The next batch that passes the filter, with its key columns.
    async fn next_passed(&mut self) -> Result<Option<(RecordBatch, Vec<ArrayRef>)>> {
        while let Some(item) = self.batches.next().await {
            let (unit, probed) = item?;
            if let Some(previous) = self.current_unit.replace(unit) {
                if previous != unit {
                    self.finish_unit(previous);
                }
            }
            let batch = probed.batch;
            self.stats.rows_read += probed.rows_read;
            self.stats.rows_skipped += probed.rows_read - batch.num_rows() as u64;
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = key_columns(&self.key_schema, &batch)?;
            let keep = self.keep(unit, &batch, &keys)?;
            let passed = filter_rows(&batch, &keep)?;
            if passed.num_rows() == 0 {
                continue;
            }
            self.stats.rows_passed += passed.num_rows() as u64;
            // The key columns were checked above; filter them with the same mask
            // instead of looking them up and checking them again.
            let passed_keys = keys
                .iter()
                .map(|k| arrow_select::filter::filter(k, &keep))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|source| Error::Arrow {
                    context: "selecting the keys of passed rows",
                    source,
                })?;
            let returned = match &self.output_columns {
                Some(indices) => passed.project(indices).map_err(|source| Error::Arrow {
                    context: "projecting returned columns",
                    source,
                })?,
                None => passed,
            };
            return Ok(Some((returned, passed_keys)));
        }
        if let Some(last) = self.current_unit.take() {
            self.finish_unit(last);
        }
        Ok(None)
    }

    /// Which rows of a batch from `unit` pass, counting what is dropped.
    fn keep(
        &mut self,
        unit: usize,
        batch: &RecordBatch,
        keys: &[ArrayRef],
    ) -> Result<BooleanArray> {
        let n = batch.num_rows();
        match &mut self.plan {
            Plan::InMemory {
                filter, run_keys, ..
            } => {
                // Checkpointed rows were dropped in the decoding task.
                let Some(run_keys) = run_keys else {
                    return Ok(BooleanArray::new(BooleanBuffer::new_set(n), None));
                };
                let encoded = self.codec.encode(keys)?;
                let mut judge = DuplicateCheck {
                    duplicates: self.duplicates,
                    stats: &mut self.stats,
                    keep: BooleanBufferBuilder::new(n),
                };
                run_keys.insert_each(&encoded, |row, first| judge.judge(row, first, keys))?;
                let keep = BooleanArray::new(judge.keep.finish(), None);
                self.stats.peak_filter_bytes = self
                    .stats
                    .peak_filter_bytes
                    .max(filter.memory_bytes() + run_keys.memory_bytes());
                Ok(keep)
            }
            Plan::Partitioned { verdicts, cursor } => {
                let start = match cursor {
                    Some((u, row)) if *u == unit => *row,
                    _ => 0,
                };
                *cursor = Some((unit, start + n as u64));
                let mut keep = Vec::with_capacity(n);
                for row in start..start + n as u64 {
                    match verdicts.verdict(unit, row) {
                        partitioned::Verdict::Pass => keep.push(true),
                        partitioned::Verdict::Checkpointed => {
                            self.stats.rows_skipped += 1;
                            keep.push(false);
                        }
                        partitioned::Verdict::Duplicate => {
                            self.stats.duplicates_dropped += 1;
                            keep.push(false);
                        }
                    }
                }
                if verdicts.rows_of(unit) < start + n as u64 {
                    return Err(Error::InvalidSource {
                        location: self.unit_names.get(unit).cloned().unwrap_or_default(),
                        reason: "it returned more rows on the second read than on the first; \
                                 a source must be a fixed snapshot"
                            .into(),
                    });
                }
                Ok(BooleanArray::from(keep))
            }
        }
    }
}

/// A decoded batch, less the rows whose key is checkpointed when the
/// checkpointed keys are in memory.
struct Probed {
    batch: RecordBatch,
    /// Rows decoded, before the probe.
    rows_read: u64,
}

impl Probed {
    /// `batch` less its checkpointed rows. With `source_keys` (the keys of a
    /// small source, read first), fails if a row passes whose key was not
    /// among them: the filter holds only the checkpointed keys among those.
    fn against(
        filter: &KeyFilter,
        source_keys: Option<&KeyFilter>,
        batch: RecordBatch,
    ) -> Result<Self> {
        let rows_read = batch.num_rows() as u64;
        if let Some(source_keys) = source_keys {
            let unseen = source_keys.unprocessed(&batch)?;
            if unseen.true_count() > 0 {
                return Err(Error::InvalidSource {
                    location: "the source".into(),
                    reason: "it returned keys on the second read that the first read of its \
                             key columns did not; a source must be a fixed snapshot"
                        .into(),
                });
            }
        }
        if filter.is_empty() {
            return Ok(Probed { batch, rows_read });
        }
        let keep = filter.unprocessed(&batch)?;
        let batch = if keep.true_count() == batch.num_rows() {
            batch
        } else {
            filter_rows(&batch, &keep)?
        };
        Ok(Probed { batch, rows_read })
    }

    /// `batch` whole, for the partitioned filter (which judges by row position).
    fn unfiltered(batch: RecordBatch) -> Self {
        Probed {
            rows_read: batch.num_rows() as u64,
            batch,
        }
    }
}

/// The in-memory check for keys repeated within the run: the verdicts on
/// the keys of one batch, as the run's key set takes them in.
struct DuplicateCheck<'a> {
    duplicates: DuplicatePolicy,
    stats: &'a mut ReadStats,
    keep: BooleanBufferBuilder,
}

impl DuplicateCheck<'_> {
    /// Appends the verdict on the key of `row`, counting what is dropped.
    /// Fails on a repeated key under [`DuplicatePolicy::Error`], naming it
    /// from `columns` (the batch's key columns).
    #[inline]
    fn judge(&mut self, row: usize, first: bool, columns: &[ArrayRef]) -> Result<()> {
        if !first {
            if self.duplicates == DuplicatePolicy::Error {
                return Err(Error::DuplicateKey {
                    key: describe_key(columns, row),
                });
            }
            self.stats.duplicates_dropped += 1;
        }
        self.keep.append(first);
        Ok(())
    }
}

/// Whether `held` keys (and, for the duplicate policy, the source's
/// `source_rows` keys) can fit in the budget, by a lower bound of their size.
/// If the bound passes, a load still stops at the budget and the read falls
/// back to partitions.
fn fits_in_memory(
    codec: &KeyCodec,
    held: u64,
    source_rows: Option<u64>,
    options: &ReadOptions,
) -> bool {
    // A word key takes at least 8 bytes and a slot byte; a byte key at least its
    // 8-byte slot, its control byte and one byte.
    let per_key = if codec.is_words() { 9 } else { 10 };
    let mut keys = held;
    if options.duplicates != DuplicatePolicy::PassAll {
        keys = keys.saturating_add(source_rows.unwrap_or(0));
    }
    keys.saturating_mul(per_key) <= options.memory_budget_bytes as u64
}

/// The keys of a small source, read first.
struct SourceKeys {
    keys: KeyFilter,
    /// Their range, when the key type has one.
    range: Option<KeyRange>,
    /// Their fingerprints, when the store's key files carry them.
    fingerprints: Option<FingerprintSet>,
}

/// The keys of `units` of `source`, read from their key columns alone.
async fn read_source_keys(
    key_schema: &KeySchema,
    source: Arc<dyn Source>,
    units: &[usize],
    rows: Option<u64>,
    options: &ReadOptions,
) -> Result<SourceKeys> {
    let columns = key_schema
        .columns()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let codec = KeyCodec::new(key_schema)?;
    let expected = rows.unwrap_or(0);
    let mut keys = KeyFilter::expecting(key_schema.clone(), expected)?;
    let mut range = RangeBuilder::default();
    let mut fingerprints = has_fingerprints(key_schema)
        .then(|| FingerprintSet::expecting(usize::try_from(expected).unwrap_or(usize::MAX)));
    let mut batches = read_units(source, units.to_vec(), Some(columns), options.parallelism);
    while let Some(item) = batches.next().await {
        let (_, batch) = item?;
        // The key columns as the store keeps them, as key files were written.
        let stored = key_schema.batch(&key_columns(key_schema, &batch)?)?;
        let encoded = codec.encode(stored.columns())?;
        range.add(&encoded);
        keys.insert_encoded(&encoded)?;
        if let Some(set) = &mut fingerprints {
            match fingerprints_of(stored.columns()) {
                Some(words) => set.insert(words)?,
                // A key without its fingerprint would let a key file that
                // holds it go unread: use none.
                None => fingerprints = None,
            }
        }
    }
    // Probed by every key of the key files read next.
    keys.add_presence_bitmap(options.memory_budget_bytes);
    Ok(SourceKeys {
        keys,
        range: range.finish(),
        fingerprints,
    })
}

/// Rows in `units` of `source`, when every one knows its count.
fn rows_of(source: &dyn Source, units: &[usize]) -> Option<u64> {
    units
        .iter()
        .map(|&u| source.units().get(u).and_then(|unit| unit.row_count))
        .sum()
}

/// The columns to read (projection plus keys) and where the returned ones are.
fn read_columns(
    key_schema: &KeySchema,
    schema: &arrow_schema::Schema,
    projection: Option<&[String]>,
) -> Result<(Vec<String>, Option<Vec<usize>>)> {
    let Some(projection) = projection else {
        let all = schema.fields().iter().map(|f| f.name().clone()).collect();
        return Ok((all, None));
    };
    for column in projection {
        if schema.field_with_name(column).is_err() {
            return Err(Error::InvalidSource {
                location: "projection".into(),
                reason: format!("column `{column}` is not in the source"),
            });
        }
    }
    let mut read: Vec<String> = projection.to_vec();
    for key in key_schema.columns() {
        if !read.contains(&key.name) {
            read.push(key.name.clone());
        }
    }
    let output = (read.len() != projection.len()).then(|| (0..projection.len()).collect());
    Ok((read, output))
}

/// A key of row `i` as text, for messages.
fn describe_key(keys: &[ArrayRef], i: usize) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|k| array_value_to_string(k, i).unwrap_or_else(|_| "?".into()))
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(", "))
    }
}
