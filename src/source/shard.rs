//! Shards: a stable split of a source's units (files) across workers.

use std::fmt;

use crate::error::{Error, Result};

use super::Source;

/// Shard `index` of `count`. A unit belongs to the shard chosen by a stable
/// hash of its name, so a file stays in the same shard as the source grows
/// and on every machine.
///
/// Each shard holds its own lease, so shards run at the same time in separate
/// processes or machines that share the store, and two runs of the same shard
/// are fenced. Repeated keys are dropped within a shard; a key that appears in
/// files of two different shards is processed by both, so shard only sources
/// whose keys do not repeat across files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` (from 0) of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::InvalidSource {
                location: format!("shard {index}/{count}"),
                reason: "a shard index must be below the shard count, which must be at least 1"
                    .to_string(),
            });
        }
        Ok(Shard { index, count })
    }

    /// The whole source as one shard.
    pub fn all() -> Self {
        Shard { index: 0, count: 1 }
    }

    /// The shard's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The number of shards.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The lease scope of this shard: `pipeline` when unsharded.
    pub fn lease_scope(&self) -> String {
        if self.count == 1 {
            crate::store::PIPELINE_SCOPE.to_string()
        } else {
            format!("shard-{}-of-{}", self.index, self.count)
        }
    }

    /// Whether the unit called `name` belongs to this shard.
    pub fn contains(&self, name: &str) -> bool {
        stable_hash(name) % u64::from(self.count) == u64::from(self.index)
    }

    /// The indices of `source`'s units in this shard.
    pub fn units_of(&self, source: &dyn Source) -> Vec<usize> {
        source
            .units()
            .iter()
            .enumerate()
            .filter(|(_, u)| self.contains(&u.name))
            .map(|(i, _)| i)
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a: fixed forever, unlike the hashers of the standard library.
fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_in_exactly_one_shard() {
        let names: Vec<String> = (0..200)
            .map(|i| format!("s3://b/drop/part-{i}.parquet"))
            .collect();
        let shards: Vec<Shard> = (0..3).filter_map(|i| Shard::new(i, 3).ok()).collect();
        for name in &names {
            assert_eq!(shards.iter().filter(|s| s.contains(name)).count(), 1);
        }
        assert!(shards
            .iter()
            .all(|s| names.iter().filter(|n| s.contains(n)).count() > 40));
        assert!(Shard::new(3, 3).is_err());
        assert_eq!(Shard::all().lease_scope(), "pipeline");
    }
}
