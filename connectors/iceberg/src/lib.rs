//! # tidemark-iceberg
//!
//! The Iceberg side of tidemark. This first piece encodes an Iceberg [`DataFile`]
//! as a checkpoint store [`FileRecord`] and back, so a data file written by one
//! process can be committed by another: the record carries the data file in the
//! Iceberg spec's JSON form, with the partition spec id and table format version
//! needed to read it back.
//!
//! - [`IcebergSource`]: a table's current snapshot as a checkpointed-read source;
//! - [`IcebergWriter`]: data files written with iceberg's writers (field ids,
//!   statistics, partition transforms), each recorded in a checkpoint;
//! - [`IcebergSink`]: idempotent appends of checkpointed files, one snapshot per
//!   commit, with the pipeline's marker in a table property (see
//!   [`tidemark::commit`]).

mod merge;
mod pinned;
pub mod sink;
pub mod source;
pub mod storage;
pub mod writer;

pub use sink::{IcebergSink, SnapshotExpiry};
pub use source::IcebergSource;
pub use storage::{ObjectStorage, ObjectStorageFactory};
pub use writer::{IcebergWriter, IcebergWriterOptions};

use iceberg::spec::{
    deserialize_data_file_from_json, serialize_data_file_to_json, DataFile, FormatVersion, Schema,
    StructType,
};
use serde_json::{json, Value};
use tidemark::store::{FileRecord, TableFileMetadata};

/// `TableFileMetadata::format` of records made by this crate.
pub const DATA_FILE_FORMAT: &str = "iceberg.data-file";
/// `TableFileMetadata::version` this crate writes and reads.
pub const DATA_FILE_VERSION: u32 = 1;

/// Errors of the Iceberg connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The iceberg crate reported an error.
    #[error("iceberg: {context}: {source}")]
    Iceberg {
        /// What tidemark was doing.
        context: String,
        /// The iceberg error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The catalog has no such table.
    #[error("no Iceberg table `{table}` in the catalog")]
    TableNotFound {
        /// The table identifier.
        table: String,
    },

    /// The table cannot be committed to as it is.
    #[error("Iceberg table `{table}`: {reason}")]
    InvalidTable {
        /// The table identifier.
        table: String,
        /// Why.
        reason: String,
    },

    /// A batch does not fit the table's schema. Nothing of it was written.
    #[error("batch does not match Iceberg table `{table}`: {reason}")]
    SchemaMismatch {
        /// The table identifier.
        table: String,
        /// What differs.
        reason: String,
    },

    /// Recording a data file in the checkpoint failed.
    #[error("recording data file `{path}` in the checkpoint failed: {source}")]
    Checkpoint {
        /// The data file or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: Box<tidemark::Error>,
    },

    /// Every commit attempt failed with a retryable error.
    #[error("committing to Iceberg table `{table}` failed {attempts} times; last error: {last}")]
    CommitGaveUp {
        /// The table identifier.
        table: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },

    /// A file record is not one this connector can read.
    #[error("file record for `{path}` is not an Iceberg data file record: {reason}")]
    NotADataFileRecord {
        /// The data file path in the record.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Sealed files were written under a partition spec that is no longer
    /// the table's default: Iceberg appends files of the default spec only.
    #[error(
        "table `{table}`: data file `{path}` was written under partition spec {written} ({written_fields}), \
         but the table's default spec is now {current} ({current_fields}). Iceberg appends only files of \
         the default spec, so the sealed checkpoints cannot be committed as they are; nothing was committed. \
         Way out: evolve the partition spec back to the fields of spec {written} (pyiceberg and Spark then \
         reuse spec {written} as the default), run `tidemark gc` to commit the pending checkpoints, then \
         evolve the spec again. To avoid this, run `tidemark gc` before changing a table's partitioning"
    )]
    PartitionSpecChanged {
        /// The table.
        table: String,
        /// The first file of the old spec.
        path: String,
        /// The spec it was written under.
        written: i32,
        /// That spec's fields, e.g. `region=identity(region), id_bucket=bucket[4](id)`.
        written_fields: String,
        /// The table's default spec now.
        current: i32,
        /// Its fields.
        current_fields: String,
    },
}

/// Result alias of the Iceberg connector.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn iceberg(context: String, source: iceberg::Error) -> Self {
        Error::Iceberg {
            context,
            source: Box::new(source),
        }
    }
}

/// Encodes a data file written for a table with `partition_type` (the partition
/// spec's struct type) and `format_version` as a checkpoint file record.
pub fn data_file_to_record(
    data_file: DataFile,
    partition_spec_id: i32,
    partition_type: &StructType,
    format_version: FormatVersion,
) -> Result<FileRecord> {
    let path = data_file.file_path().to_string();
    let file_size_bytes = data_file.file_size_in_bytes();
    let record_count = data_file.record_count();
    let encoded = serialize_data_file_to_json(data_file, partition_type, format_version).map_err(
        |source| Error::Iceberg {
            context: format!("encoding data file `{path}`"),
            source: Box::new(source),
        },
    )?;
    let data_file: Value =
        serde_json::from_str(&encoded).map_err(|e| Error::NotADataFileRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok(FileRecord {
        path,
        file_size_bytes,
        record_count,
        table_metadata: TableFileMetadata {
            format: DATA_FILE_FORMAT.to_string(),
            version: DATA_FILE_VERSION,
            body: json!({
                "partition_spec_id": partition_spec_id,
                "format_version": format_version_number(format_version),
                "data_file": data_file,
            }),
        },
    })
}

/// The partition spec id a file record was written under.
pub fn recorded_spec_id(record: &FileRecord) -> Result<i32> {
    record
        .table_metadata
        .body
        .get("partition_spec_id")
        .and_then(Value::as_i64)
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| Error::NotADataFileRecord {
            path: record.path.clone(),
            reason: "no partition_spec_id".into(),
        })
}

/// Decodes a file record made by [`data_file_to_record`] for a table whose
/// current schema is `schema` and whose partition spec has `partition_type`.
pub fn record_to_data_file(
    record: &FileRecord,
    partition_type: &StructType,
    schema: &Schema,
) -> Result<DataFile> {
    let invalid = |reason: String| Error::NotADataFileRecord {
        path: record.path.clone(),
        reason,
    };
    let metadata = &record.table_metadata;
    if metadata.format != DATA_FILE_FORMAT || metadata.version != DATA_FILE_VERSION {
        return Err(invalid(format!(
            "it is `{}` version {}, expected `{DATA_FILE_FORMAT}` version {DATA_FILE_VERSION}",
            metadata.format, metadata.version
        )));
    }
    let spec_id = recorded_spec_id(record)?;
    let data_file = metadata
        .body
        .get("data_file")
        .ok_or_else(|| invalid("no data_file".into()))?;
    let data_file = with_ordered_partition(data_file, partition_type).map_err(invalid)?;
    deserialize_data_file_from_json(&data_file, spec_id, partition_type, schema).map_err(|source| {
        Error::Iceberg {
            context: format!("decoding data file `{}`", record.path),
            source: Box::new(source),
        }
    })
}

/// The data file's JSON text with its `partition` object's keys in the order of
/// the partition type. iceberg decodes that object by position, while a JSON
/// object read back into a `serde_json::Value` has its keys sorted by name; for
/// a spec like `(region, id_bucket)` the values would come back swapped.
fn with_ordered_partition(
    data_file: &Value,
    partition_type: &StructType,
) -> std::result::Result<String, String> {
    let Value::Object(fields) = data_file else {
        return Err("data_file is not a JSON object".into());
    };
    let partition = match fields.get("partition") {
        Some(Value::Object(partition)) => partition,
        Some(_) => return Err("partition is not a JSON object".into()),
        None => return Err("no partition".into()),
    };
    let mut ordered = Vec::with_capacity(partition_type.fields().len());
    for field in partition_type.fields() {
        let value = partition.get(&field.name).unwrap_or(&Value::Null);
        ordered.push(format!("{}:{value}", Value::from(field.name.as_str())));
    }
    let mut rest = fields.clone();
    rest.remove("partition");
    let rest = Value::Object(rest).to_string();
    let rest = rest
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or_default();
    let separator = if rest.is_empty() { "" } else { "," };
    Ok(format!(
        "{{\"partition\":{{{}}}{separator}{rest}}}",
        ordered.join(",")
    ))
}

fn format_version_number(version: FormatVersion) -> u8 {
    match version {
        FormatVersion::V1 => 1,
        FormatVersion::V2 => 2,
        FormatVersion::V3 => 3,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::Arc;

    use iceberg::spec::{
        DataContentType, DataFileBuilder, DataFileFormat, Datum, Literal, NestedField,
        PrimitiveType, Struct, StructType, Type,
    };

    use super::*;

    #[test]
    fn a_data_file_survives_the_record_round_trip() {
        let schema = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "day",
                    Type::Primitive(PrimitiveType::Date),
                )),
            ])
            .build()
            .unwrap();
        let partition_type = StructType::new(vec![Arc::new(NestedField::optional(
            1000,
            "day",
            Type::Primitive(PrimitiveType::Date),
        ))]);
        let data_file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path("s3://bucket/table/data/day=2024-10-01/00000.parquet".into())
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::from_iter([Some(Literal::date(20_000))]))
            .partition_spec_id(3)
            .record_count(1_000)
            .file_size_in_bytes(65_536)
            .value_counts(HashMap::from([(1, 1_000)]))
            .null_value_counts(HashMap::from([(1, 0)]))
            .lower_bounds(HashMap::from([(1, Datum::long(i64::MIN + 1))]))
            .upper_bounds(HashMap::from([(1, Datum::long((1i64 << 53) + 1))]))
            .build()
            .unwrap();

        let record =
            data_file_to_record(data_file.clone(), 3, &partition_type, FormatVersion::V2).unwrap();
        assert_eq!(
            record.path,
            "s3://bucket/table/data/day=2024-10-01/00000.parquet"
        );
        assert_eq!(record.record_count, 1_000);
        assert_eq!(record.file_size_bytes, 65_536);
        // Through JSON, as the store keeps it.
        let stored: FileRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        let decoded = record_to_data_file(&stored, &partition_type, &schema).unwrap();
        assert_eq!(decoded, data_file);
    }

    #[test]
    fn a_record_of_another_format_is_refused() {
        let record = FileRecord {
            path: "x.parquet".into(),
            file_size_bytes: 1,
            record_count: 1,
            table_metadata: TableFileMetadata {
                format: "delta.add".into(),
                version: 1,
                body: json!({}),
            },
        };
        let schema = Schema::builder().build().unwrap();
        let err = record_to_data_file(&record, &StructType::new(vec![]), &schema).unwrap_err();
        assert!(err.to_string().contains("`delta.add` version 1"), "{err}");
    }
}
