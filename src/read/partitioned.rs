//! The partitioned filter: checkpointed keys and source keys are spilled to
//! local files by hash, each partition is joined alone, and every source row
//! gets a verdict in a bitmap.

use std::collections::HashMap;
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

fn set_bit(words: &mut Vec<u64>, row: u64) {
    let at = (row / 64) as usize;
    if words.len() <= at {
        words.resize(at + 1, 0);
    }
    words[at] |= 1 << (row % 64);
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
    let partitions = partition_count(codec, state.key_count(), options.memory_budget_bytes);

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

    // 3. Join each partition on its own.
    let mut peak = 0;
    for (checkpointed_path, source_path) in checkpointed.iter().zip(&source_keys) {
        let mut set = KeySet::new();
        SpillFile::read(checkpointed_path, false)?
            .for_each(|_, key| set.insert(key).map(|_| ()))?;
        let mut run = KeySet::new();
        SpillFile::read(source_path, true)?.for_each(|ordinal, key| {
            let unit = (ordinal >> ROW_BITS) as usize;
            let row = ordinal & ((1 << ROW_BITS) - 1);
            let v = unit_verdicts.entry(unit).or_default();
            if set.contains(key) {
                set_bit(&mut v.checkpointed, row);
            } else if options.duplicates != DuplicatePolicy::PassAll && !run.insert(key)? {
                if options.duplicates == DuplicatePolicy::Error {
                    return Err(Error::DuplicateKey {
                        key: format!("of row {row} of `{}`", unit_name(source.as_ref(), unit)),
                    });
                }
                set_bit(&mut v.duplicate, row);
            }
            Ok(())
        })?;
        peak = peak.max(set.memory_bytes() + run.memory_bytes());
    }
    let bitmaps: usize = unit_verdicts
        .values()
        .map(|v| (v.checkpointed.capacity() + v.duplicate.capacity()) * 8)
        .sum();
    Ok(Verdicts {
        units: unit_verdicts,
        partitions,
        peak_bytes: peak + bitmaps,
    })
}

/// Enough partitions that one holds about a quarter of the budget.
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
