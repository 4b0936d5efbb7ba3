//! The partitioned filter: checkpointed keys and source keys are spilled to
//! local files by hash, each partition is joined alone, and every source row
//! gets a verdict in a bitmap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::{DuplicatePolicy, ReadOptions};
use crate::error::{Error, Result};
use crate::filter::codec::KeyCodec;
use crate::filter::key_set::KeySet;
use crate::filter::spill::{SpillFile, SpillWriter};
use crate::source::{read_units, Source};
use crate::store::{CheckpointStore, StoreState};

/// Bits of an ordinal that hold the row within its unit.
const ROW_BITS: u32 = 40;
/// Fewest and most partitions. The most bounds the open spill files.
const MIN_PARTITIONS: usize = 16;
const MAX_PARTITIONS: usize = 512;

/// What happens to one source row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Not checkpointed, first of its key in this run.
    Pass,
    /// Its key is checkpointed.
    Checkpointed,
    /// Its key appeared earlier in this run and the policy drops repeats.
    Duplicate,
}

/// Verdicts for every row of the units read.
#[derive(Debug)]
pub(super) struct Verdicts {
    units: HashMap<usize, UnitVerdicts>,
    /// Number of hash partitions used.
    pub(super) partitions: usize,
    /// Most memory held at once: one partition's sets plus the bitmaps.
    pub(super) peak_bytes: usize,
}

#[derive(Debug, Default)]
struct UnitVerdicts {
    rows: u64,
    checkpointed: Vec<u64>,
    duplicate: Vec<u64>,
}

impl Verdicts {
    /// The verdict for `row` of `unit`.
    pub(super) fn verdict(&self, unit: usize, row: u64) -> Verdict {
        let Some(v) = self.units.get(&unit) else {
            return Verdict::Pass;
        };
        if bit(&v.checkpointed, row) {
            Verdict::Checkpointed
        } else if bit(&v.duplicate, row) {
            Verdict::Duplicate
        } else {
            Verdict::Pass
        }
    }

    /// Rows seen in `unit` when the verdicts were made.
    pub(super) fn rows_of(&self, unit: usize) -> u64 {
        self.units.get(&unit).map_or(0, |v| v.rows)
    }
}

fn bit(words: &[u64], row: u64) -> bool {
    words
        .get((row / 64) as usize)
        .is_some_and(|w| w & (1 << (row % 64)) != 0)
}

/// Spills, joins partition by partition, and returns every row's verdict.
pub(super) async fn judge(
    store: &CheckpointStore,
    state: &StoreState,
    codec: &KeyCodec,
    source: Arc<dyn Source>,
    units: &[usize],
    options: &ReadOptions,
) -> Result<Verdicts> {
    let dir = match &options.spill_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("tidemark-spill-")
            .tempdir_in(dir),
        None => tempfile::Builder::new().prefix("tidemark-spill-").tempdir(),
    }
    .map_err(|source| Error::Spill {
        path: options
            .spill_dir
            .as_ref()
            .map_or_else(|| "temporary directory".into(), |d| d.display().to_string()),
        source,
    })?;
    // Each worker joins one partition at a time: each gets its share of the budget.
    let workers = options.parallelism.max(1);
    let partitions = partition_count(
        codec,
        state.key_count(),
        options.memory_budget_bytes / workers,
    );

    // 1. Checkpointed keys, partitioned.
    let mut checkpointed = SpillWriter::create(dir.path(), "checkpointed", partitions, false)?;
    let mut key_files = stream::iter(state.key_files())
        .map(|file| async move { store.read_keys(&file).await })
        .buffered(options.parallelism.max(1));
    while let Some(batches) = key_files.try_next().await? {
        for batch in batches {
            let keys = codec.encode(batch.columns())?;
            for i in 0..keys.len() {
                checkpointed.write(keys.key(i), 0)?;
            }
        }
    }
    let checkpointed = checkpointed.finish()?;

    // 2. Source keys with their row ordinals, partitioned.
    let key_names: Vec<String> = store
        .key_schema()
        .columns()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut unit_verdicts: HashMap<usize, UnitVerdicts> = HashMap::new();
    let mut source_keys = SpillWriter::create(dir.path(), "source", partitions, true)?;
    let mut batches = read_units(
        source.clone(),
        units.to_vec(),
        Some(key_names),
        options.parallelism,
    );
    while let Some((unit, batch)) = batches.try_next().await? {
        if unit >= 1 << (64 - ROW_BITS) {
            return Err(Error::InvalidSource {
                location: unit_name(source.as_ref(), unit),
                reason: "the partitioned filter takes at most 2^24 units".into(),
            });
        }
        let v = unit_verdicts.entry(unit).or_default();
        let keys = codec.encode(batch.columns())?;
        for i in 0..keys.len() {
            let row = v.rows + i as u64;
            if row >= 1 << ROW_BITS {
                return Err(Error::InvalidSource {
                    location: unit_name(source.as_ref(), unit),
                    reason: "the partitioned filter takes at most 2^40 rows per unit".into(),
                });
            }
            source_keys.write(keys.key(i), ((unit as u64) << ROW_BITS) | row)?;
        }
        v.rows += keys.len() as u64;
    }
    let source_keys = source_keys.finish()?;

    // 3. Join each partition on its own, on every core: a key's rows all
    //    fall in one partition, in source order, so partitions are independent.
    let bitmaps: HashMap<usize, SharedBitmaps> = unit_verdicts
        .iter()
        .map(|(&unit, v)| (unit, SharedBitmaps::for_rows(v.rows)))
        .collect();
    let pairs: Vec<(&PathBuf, &PathBuf)> = checkpointed.iter().zip(&source_keys).collect();
    let next = AtomicUsize::new(0);
    let workers = workers.min(pairs.len().max(1));
    let judge_partitions = || -> Result<usize> {
        let mut peak = 0;
        while let Some(&(checkpointed_path, source_path)) =
            pairs.get(next.fetch_add(1, Ordering::Relaxed))
        {
            let held = SpillFile::read(checkpointed_path, false)?;
            let mut set = KeySet::expecting(expected_keys(&held, codec), codec.is_words());
            held.for_each(|_, key| set.insert(key).map(|_| ()))?;
            let loading = set.memory_bytes() + held.memory_bytes();
            drop(held);
            let source_file = SpillFile::read(source_path, true)?;
            let mut run = KeySet::expecting(expected_keys(&source_file, codec), codec.is_words());
            source_file.for_each(|ordinal, key| {
                let unit = (ordinal >> ROW_BITS) as usize;
                let row = ordinal & ((1 << ROW_BITS) - 1);
                let bitmaps = bitmaps.get(&unit).ok_or_else(|| Error::InvalidSource {
                    location: unit_name(source.as_ref(), unit),
                    reason: "a spill record names a unit that was not read".into(),
                })?;
                if set.contains(key) {
                    bitmaps.checkpointed.set(row);
                } else if options.duplicates != DuplicatePolicy::PassAll && !run.insert(key)? {
                    if options.duplicates == DuplicatePolicy::Error {
                        return Err(Error::DuplicateKey {
                            key: format!("of row {row} of `{}`", unit_name(source.as_ref(), unit)),
                        });
                    }
                    bitmaps.duplicate.set(row);
                }
                Ok(())
            })?;
            let joining = set.memory_bytes() + run.memory_bytes() + source_file.memory_bytes();
            peak = peak.max(loading).max(joining);
        }
        Ok(peak)
    };
    let peaks: Vec<Result<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(judge_partitions))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(Error::Spill {
                        path: dir.path().display().to_string(),
                        source: std::io::Error::other("a partition's join panicked"),
                    })
                })
            })
            .collect()
    });
    // Each worker holds one partition at a time, so together at most their sum.
    let mut held = 0;
    for peak in peaks {
        held += peak?;
    }
    for (unit, shared) in bitmaps {
        if let Some(v) = unit_verdicts.get_mut(&unit) {
            v.checkpointed = shared.checkpointed.into_words();
            v.duplicate = shared.duplicate.into_words();
        }
    }
    let bitmaps: usize = unit_verdicts
        .values()
        .map(|v| (v.checkpointed.capacity() + v.duplicate.capacity()) * 8)
        .sum();
    Ok(Verdicts {
        units: unit_verdicts,
        partitions,
        peak_bytes: held + bitmaps,
    })
}

/// Keys in a partition file, to size its set up front: exact for word keys
/// (records of one size), none for byte keys, whose sets grow as they fill.
fn expected_keys(file: &SpillFile, codec: &KeyCodec) -> usize {
    if codec.is_words() {
        file.word_records()
    } else {
        0
    }
}

/// One unit's verdict bitmaps, set from several threads at once.
struct SharedBitmaps {
    checkpointed: AtomicBitmap,
    duplicate: AtomicBitmap,
}

impl SharedBitmaps {
    fn for_rows(rows: u64) -> Self {
        SharedBitmaps {
            checkpointed: AtomicBitmap::for_rows(rows),
            duplicate: AtomicBitmap::for_rows(rows),
        }
    }
}

/// A bitmap of one bit per row that threads set together.
struct AtomicBitmap(Vec<AtomicU64>);

impl AtomicBitmap {
    fn for_rows(rows: u64) -> Self {
        AtomicBitmap((0..rows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets `row`'s bit (rows past the end were never read, and are left out).
    fn set(&self, row: u64) {
        if let Some(word) = self.0.get((row / 64) as usize) {
            word.fetch_or(1 << (row % 64), Ordering::Relaxed);
        }
    }

    fn into_words(self) -> Vec<u64> {
        self.0.into_iter().map(AtomicU64::into_inner).collect()
    }
}

/// Enough partitions that one holds about a quarter of `budget` (a worker's
/// share of the read's).
fn partition_count(codec: &KeyCodec, keys: u64, budget: usize) -> usize {
    // Rough bytes per key in a hash set: a word and a slot at a typical load
    // factor; byte keys add their length (UUID-like strings: 36).
    let per_key: u64 = if codec.is_words() { 20 } else { 64 };
    let wanted = keys.saturating_mul(per_key).saturating_mul(4) / (budget.max(1) as u64);
    (wanted as usize).clamp(MIN_PARTITIONS, MAX_PARTITIONS)
}

fn unit_name(source: &dyn Source, unit: usize) -> String {
    source
        .units()
        .get(unit)
        .map_or_else(|| format!("unit {unit}"), |u| u.name.clone())
}
