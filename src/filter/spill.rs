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
    bytes: Vec<u64>,
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
            bytes: vec![0; partitions],
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
                file.write_all(&record[..n])
                    .and_then(|_| file.write_all(b))
                    .map(|_| n += b.len())
            }
        }
        .map_err(|e| spill_error(path, e))?;
        self.bytes[p] += n as u64;
        Ok(())
    }

    /// Flushes every file; returns the paths and sizes of the partitions.
    pub(crate) fn finish(mut self) -> Result<Vec<(PathBuf, u64)>> {
        for (file, path) in self.files.iter_mut().zip(&self.paths) {
            file.flush().map_err(|e| spill_error(path, e))?;
        }
        Ok(self.paths.into_iter().zip(self.bytes).collect())
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
