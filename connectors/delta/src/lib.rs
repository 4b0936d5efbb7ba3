//! # tidemark-delta
//!
//! The Delta Lake side of tidemark. This first piece encodes a Delta [`Add`]
//! action as a checkpoint store [`FileRecord`] and back, so a data file written by
//! one process can be committed by another with its partition values and
//! statistics intact.

pub mod source;

pub use source::DeltaSource;

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
