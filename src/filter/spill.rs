//! Hash-partitioned spill files on local disk, for key sets larger than memory.
//!
//! Each partition file holds records `[tag][ordinal?][payload]`: tag 0 is the
//! null key, 1 a word (8 bytes little-endian), 2 bytes (u32 length, then the
//! bytes). Source spills carry the row's ordinal (u64) so that a verdict can be
//! written back to the row.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::codec::Key;
use crate::error::{Error, Result};

const TAG_NULL: u8 = 0;
const TAG_WORD: u8 = 1;
const TAG_BYTES: u8 = 2;

/// Writes keys into `partitions` files under a directory.
#[derive(Debug)]
pub(crate) struct SpillWriter {
    files: Vec<BufWriter<File>>,
    paths: Vec<PathBuf>,
    with_ordinals: bool,
}

impl SpillWriter {
    /// Creates the partition files `{dir}/{name}-{p}`.
    pub(crate) fn create(
        dir: &Path,
        name: &str,
        partitions: usize,
        with_ordinals: bool,
    ) -> Result<Self> {
        let mut files = Vec::with_capacity(partitions);
        let mut paths = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let path = dir.join(format!("{name}-{p}"));
            let file = File::create(&path).map_err(|e| spill_error(&path, e))?;
            files.push(BufWriter::with_capacity(64 * 1024, file));
            paths.push(path);
        }
        Ok(SpillWriter {
            files,
            paths,
            with_ordinals,
        })
    }

    /// Appends `key` (and the row's ordinal, for source spills) to its partition.
    pub(crate) fn write(&mut self, key: Key<'_>, ordinal: u64) -> Result<()> {
        let p = partition_of(key, self.files.len());
        let mut record = [0u8; 17];
        let mut n = 0;
        let tag = match key {
            Key::Null => TAG_NULL,
            Key::Word(_) => TAG_WORD,
            Key::Bytes(_) => TAG_BYTES,
        };
        record[n] = tag;
        n += 1;
        if self.with_ordinals {
            record[n..n + 8].copy_from_slice(&ordinal.to_le_bytes());
            n += 8;
        }
        let file = &mut self.files[p];
        let path = &self.paths[p];
        match key {
            Key::Null => file.write_all(&record[..n]),
            Key::Word(w) => {
                record[n..n + 8].copy_from_slice(&w.to_le_bytes());
                n += 8;
                file.write_all(&record[..n])
            }
            Key::Bytes(b) => {
                let len = u32::try_from(b.len()).map_err(|_| {
                    spill_error(path, std::io::Error::other("key longer than 4 GiB"))
                })?;
                record[n..n + 4].copy_from_slice(&len.to_le_bytes());
                n += 4;
                file.write_all(&record[..n]).and_then(|_| file.write_all(b))
            }
        }
        .map_err(|e| spill_error(path, e))
    }

    /// Flushes every file; returns the paths of the partitions, in order.
    pub(crate) fn finish(mut self) -> Result<Vec<PathBuf>> {
        for (file, path) in self.files.iter_mut().zip(&self.paths) {
            file.flush().map_err(|e| spill_error(path, e))?;
        }
        Ok(self.paths)
    }
}

/// The partition of `key` among `partitions`.
pub(crate) fn partition_of(key: Key<'_>, partitions: usize) -> usize {
    (key.partition_hash() % partitions as u64) as usize
}

/// One partition file read back into memory.
#[derive(Debug)]
pub(crate) struct SpillFile {
    data: Vec<u8>,
    with_ordinals: bool,
    path: PathBuf,
}

impl SpillFile {
    /// Reads a partition file written with or without ordinals.
    pub(crate) fn read(path: &Path, with_ordinals: bool) -> Result<Self> {
        let mut data = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| spill_error(path, e))?;
        Ok(SpillFile {
            data,
            with_ordinals,
            path: path.to_path_buf(),
        })
    }

    /// Records in the file if each holds a word key: exact for a file of word
    /// keys, an upper bound otherwise.
    pub(crate) fn word_records(&self) -> usize {
        let record = if self.with_ordinals { 17 } else { 9 };
        self.data.len() / record
    }

    /// Memory the file holds, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.data.capacity()
    }

    /// Calls `f(ordinal, key)` for every record in order (ordinal 0 when the file
    /// has none).
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, Key<'_>) -> Result<()>) -> Result<()> {
        let data = &self.data;
        let mut at = 0;
        let truncated = || spill_error(&self.path, std::io::Error::other("truncated spill file"));
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let slice = data.get(*at..*at + n).ok_or_else(truncated)?;
            *at += n;
            Ok(slice)
        };
        while at < data.len() {
            let tag = take(&mut at, 1)?[0];
            let ordinal = if self.with_ordinals {
                u64::from_le_bytes(take(&mut at, 8)?.try_into().map_err(|_| truncated())?)
            } else {
                0
            };
            let key = match tag {
                TAG_NULL => Key::Null,
                TAG_WORD => Key::Word(u64::from_le_bytes(
                    take(&mut at, 8)?.try_into().map_err(|_| truncated())?,
                )),
                TAG_BYTES => {
                    let len =
                        u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| truncated())?)
                            as usize;
                    Key::Bytes(take(&mut at, len)?)
                }
                _ => {
                    return Err(spill_error(
                        &self.path,
                        std::io::Error::other(format!("unknown record tag {tag}")),
                    ))
                }
            };
            f(ordinal, key)?;
        }
        Ok(())
    }
}

fn spill_error(path: &Path, source: std::io::Error) -> Error {
    Error::Spill {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    /// A key that owns its bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Null,
        Word(u64),
        Bytes(Vec<u8>),
    }

    impl Owned {
        fn key(&self) -> Key<'_> {
            match self {
                Owned::Null => Key::Null,
                Owned::Word(w) => Key::Word(*w),
                Owned::Bytes(b) => Key::Bytes(b),
            }
        }

        fn of(key: Key<'_>) -> Self {
            match key {
                Key::Null => Owned::Null,
                Key::Word(w) => Owned::Word(w),
                Key::Bytes(b) => Owned::Bytes(b.to_vec()),
            }
        }
    }

    /// Keys of every kind: nulls, words at both ends of the range, and bytes
    /// from empty to longer than the writer's 64 KiB buffer.
    fn sample() -> Vec<Owned> {
        let mut keys = vec![Owned::Null, Owned::Word(0), Owned::Word(u64::MAX)];
        keys.extend((1..400u64).map(|i| Owned::Word(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        keys.extend((0..300usize).map(|len| Owned::Bytes(vec![(len % 251) as u8; len])));
        keys.extend([
            Owned::Bytes(Vec::new()),
            Owned::Null,
            Owned::Bytes((0..70_000u32).map(|i| (i % 253) as u8).collect()),
        ]);
        keys
    }

    fn read_back(path: &Path, with_ordinals: bool) -> Vec<(u64, Owned)> {
        let mut records = Vec::new();
        SpillFile::read(path, with_ordinals)
            .expect("read")
            .for_each(|ordinal, key| {
                records.push((ordinal, Owned::of(key)));
                Ok(())
            })
            .expect("records");
        records
    }

    #[test]
    fn every_record_comes_back_in_its_partition_in_order() {
        let keys = sample();
        for with_ordinals in [false, true] {
            let dir = tempfile::tempdir().expect("dir");
            let partitions = 7;
            let mut writer =
                SpillWriter::create(dir.path(), "keys", partitions, with_ordinals).expect("create");
            // Ordinals with bits in every byte, so that a byte lost shows.
            let ordinal = |i: usize| (i as u64 + 1).wrapping_mul(0x0102_0304_0506_0708);
            for (i, key) in keys.iter().enumerate() {
                writer.write(key.key(), ordinal(i)).expect("write");
            }
            let paths = writer.finish().expect("finish");
            assert_eq!(paths.len(), partitions);
            let mut total = 0;
            for (p, path) in paths.iter().enumerate() {
                assert_eq!(path, &dir.path().join(format!("keys-{p}")));
                let expected: Vec<(u64, Owned)> = keys
                    .iter()
                    .enumerate()
                    .filter(|(_, key)| partition_of(key.key(), partitions) == p)
                    .map(|(i, key)| (if with_ordinals { ordinal(i) } else { 0 }, key.clone()))
                    .collect();
                let records = read_back(path, with_ordinals);
                assert_eq!(records, expected, "partition {p}, ordinals {with_ordinals}");
                total += records.len();
            }
            assert_eq!(total, keys.len());
        }
    }

    #[test]
    fn keys_spread_evenly_over_the_partitions() {
        // The budget of the partitioned filter assumes each partition holds
        // its share of the keys; one partition holding all of them would
        // hold the whole set in memory.
        let partitions = 16;
        let words: Vec<Owned> = (0..32_000u64).map(Owned::Word).collect();
        let strings: Vec<Owned> = (0..32_000u64)
            .map(|i| Owned::Bytes(format!("key-{i}").into_bytes()))
            .collect();
        for keys in [words, strings] {
            let mut counts = vec![0usize; partitions];
            for key in &keys {
                counts[partition_of(key.key(), partitions)] += 1;
            }
            let share = keys.len() / partitions;
            for (p, &count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(share) * 100 <= share * 15,
                    "partition {p} holds {count} keys of {}: {counts:?}",
                    keys.len()
                );
            }
        }
    }

    #[test]
    fn a_damaged_spill_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        for (contents, problem) in [
            (vec![TAG_WORD, 1, 2, 3], "truncated spill file"),
            (vec![TAG_BYTES, 5, 0, 0, 0, b'a'], "truncated spill file"),
            (vec![TAG_NULL, 9], "unknown record tag 9"),
        ] {
            let path = dir.path().join("damaged");
            std::fs::write(&path, &contents).expect("write");
            let error = SpillFile::read(&path, false)
                .expect("read")
                .for_each(|_, _| Ok(()))
                .expect_err("a damaged file");
            let message = error.to_string();
            assert!(
                message.contains(problem) && message.contains(&path.display().to_string()),
                "{message}"
            );
        }
        let missing = dir.path().join("missing");
        let error = SpillFile::read(&missing, true).expect_err("no file");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
