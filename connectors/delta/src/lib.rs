//! # tidemark-delta
//!
//! The Delta Lake side of tidemark:
//! - [`DeltaSource`]: a table version's files as a checkpointed-read source;
//! - [`DeltaWriter`]: Parquet data files written into a table's location, each
//!   recorded in a checkpoint as an in-flight write and then as its Add action;
//! - [`DeltaSink`]: idempotent appends of checkpointed files, one Delta version
//!   per commit carrying a `txn` action (see [`tidemark::commit`]).

mod protocol;
pub mod sink;
pub mod source;
mod stats;
pub mod writer;

pub use sink::{storage_options, DeltaSink};
pub use source::DeltaSource;
pub use writer::{DeltaWriter, DeltaWriterOptions, WriteStats};

use deltalake::kernel::Add;
use tidemark::store::{FileRecord, TableFileMetadata};

/// `TableFileMetadata::format` of records made by this crate.
pub const ADD_FORMAT: &str = "delta.add";
/// `TableFileMetadata::version` this crate writes and reads.
pub const ADD_VERSION: u32 = 1;

/// Errors of the Delta connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// delta-rs failed.
    #[error("Delta table `{table}`: {context} failed: {source}")]
    Delta {
        /// The table URL.
        table: String,
        /// What was being done.
        context: &'static str,
        /// The delta-rs error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },

    /// There is no Delta table at the URL.
    #[error("no Delta table at `{table}` (no `_delta_log`); create it first or ask for creation")]
    TableNotFound {
        /// The table URL.
        table: String,
    },

    /// The table cannot be written by this connector.
    #[error("Delta table `{table}` cannot be written: {reason}")]
    InvalidTable {
        /// The table URL.
        table: String,
        /// Why.
        reason: String,
    },

    /// The table's protocol asks for something this writer cannot do. Found
    /// when the writer is made, before any source row is read.
    #[error("Delta table `{table}` cannot be written: {reason}")]
    UnsupportedProtocol {
        /// The table URL.
        table: String,
        /// The features or checks at fault, and the way out.
        reason: String,
    },

    /// Rows of a batch break one of the table's CHECK constraints, column
    /// invariants or generated columns. Nothing of the batch was written.
    #[error(
        "Delta table `{table}`: {rows} row(s) of a batch break the {constraint}; nothing of the          batch was written, and nothing of this checkpoint will be committed. First such row:          {sample}. Fix the rows in the map or filter them out, then run again"
    )]
    ConstraintViolated {
        /// The table URL.
        table: String,
        /// The constraint, with its expression.
        constraint: String,
        /// How many rows of the batch break it.
        rows: usize,
        /// The first such row, `column = value, ...`.
        sample: String,
    },

    /// A batch does not fit the table's schema. Nothing of it was written.
    #[error("batch does not match Delta table `{table}`: {reason}")]
    SchemaMismatch {
        /// The table URL.
        table: String,
        /// What differs.
        reason: String,
    },

    /// Encoding a Parquet data file failed.
    #[error("writing data file `{path}` failed: {source}")]
    Parquet {
        /// The data file, relative to the table root.
        path: String,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow kernel failed.
    #[error("Delta table `{table}`: {context} failed: {source}")]
    Arrow {
        /// The table URL.
        table: String,
        /// What was being done.
        context: &'static str,
        /// The Arrow error.
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// An object store request on the table failed.
    #[error("object store request on `{path}` failed: {source}")]
    ObjectStore {
        /// The object.
        path: String,
        /// The object store error.
        #[source]
        source: deltalake::ObjectStoreError,
    },

    /// Recording a data file in the checkpoint failed.
    #[error("recording data file `{path}` in the checkpoint failed: {source}")]
    Checkpoint {
        /// The data file.
        path: String,
        /// The store's error.
        #[source]
        source: Box<tidemark::Error>,
    },

    /// Every commit attempt failed with a retryable error.
    #[error("committing to Delta table `{table}` failed {attempts} times; last error: {last}")]
    CommitGaveUp {
        /// The table URL.
        table: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },

    /// A file record is not one this connector can read.
    #[error("file record for `{path}` is not a Delta add record: {reason}")]
    NotAnAddRecord {
        /// The data file path in the record.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias of the Delta connector.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn delta(table: &str, context: &'static str, source: deltalake::DeltaTableError) -> Self {
        Error::Delta {
            table: table.to_string(),
            context,
            source: Box::new(source),
        }
    }

    fn arrow(table: &str, context: &'static str, source: arrow_schema::ArrowError) -> Self {
        Error::Arrow {
            table: table.to_string(),
            context,
            source,
        }
    }

    fn parquet(path: &str, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.to_string(),
            source,
        }
    }

    fn checkpoint(path: &str, source: tidemark::Error) -> Self {
        Error::Checkpoint {
            path: path.to_string(),
            source: Box::new(source),
        }
    }
}

/// Encodes an add action as a checkpoint file record. The row count comes from
/// the action's statistics (`numRecords`), 0 if it has none.
pub fn add_to_record(add: &Add) -> Result<FileRecord> {
    let invalid = |reason: String| Error::NotAnAddRecord {
        path: add.path.clone(),
        reason,
    };
    let record_count = match &add.stats {
        Some(stats) => serde_json::from_str::<serde_json::Value>(stats)
            .map_err(|e| invalid(format!("stats are not JSON: {e}")))?
            .get("numRecords")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        None => 0,
    };
    let body = serde_json::to_value(add).map_err(|e| invalid(e.to_string()))?;
    Ok(FileRecord {
        path: add.path.clone(),
        file_size_bytes: u64::try_from(add.size)
            .map_err(|_| invalid(format!("negative size {}", add.size)))?,
        record_count,
        table_metadata: TableFileMetadata {
            format: ADD_FORMAT.to_string(),
            version: ADD_VERSION,
            body,
        },
    })
}

/// Decodes a file record made by [`add_to_record`].
pub fn record_to_add(record: &FileRecord) -> Result<Add> {
    let metadata = &record.table_metadata;
    if metadata.format != ADD_FORMAT || metadata.version != ADD_VERSION {
        return Err(Error::NotAnAddRecord {
            path: record.path.clone(),
            reason: format!(
                "it is `{}` version {}, expected `{ADD_FORMAT}` version {ADD_VERSION}",
                metadata.format, metadata.version
            ),
        });
    }
    serde_json::from_value(metadata.body.clone()).map_err(|e| Error::NotAnAddRecord {
        path: record.path.clone(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use super::*;

    #[test]
    fn an_add_action_survives_the_record_round_trip() {
        let add = Add {
            path: "day=2024-10-01/part-00000.parquet".into(),
            partition_values: HashMap::from([("day".to_string(), Some("2024-10-01".to_string()))]),
            size: 65_536,
            modification_time: 1_700_000_000_000,
            data_change: true,
            stats: Some(r#"{"numRecords":1000,"minValues":{"id":-9223372036854775807},"maxValues":{"id":9007199254740993},"nullCount":{"id":0}}"#.into()),
            ..Default::default()
        };
        let record = add_to_record(&add).unwrap();
        assert_eq!(record.record_count, 1000);
        assert_eq!(record.file_size_bytes, 65_536);
        let stored: FileRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        let decoded = record_to_add(&stored).unwrap();
        assert_eq!(
            serde_json::to_value(&decoded).unwrap(),
            serde_json::to_value(&add).unwrap()
        );
        // Statistics are kept as written: no integer passes through a float.
        assert!(decoded.stats.unwrap().contains("9007199254740993"));
    }

    #[test]
    fn bad_records_are_refused() {
        let mut add = Add {
            path: "x.parquet".into(),
            size: -1,
            ..Default::default()
        };
        assert!(add_to_record(&add)
            .unwrap_err()
            .to_string()
            .contains("negative size"));
        add.size = 1;
        add.stats = Some("{not json".into());
        assert!(add_to_record(&add)
            .unwrap_err()
            .to_string()
            .contains("stats are not JSON"));
        let mut record = FileRecord {
            path: "x.parquet".into(),
            file_size_bytes: 1,
            record_count: 1,
            table_metadata: TableFileMetadata {
                format: "iceberg.data-file".into(),
                version: 1,
                body: serde_json::json!({}),
            },
        };
        assert!(record_to_add(&record)
            .unwrap_err()
            .to_string()
            .contains("iceberg.data-file"));
        record.table_metadata.format = ADD_FORMAT.into();
        assert!(record_to_add(&record).is_err());
    }
}
