//! The key schema of a store, and how key columns are stored as Parquet.
//!
//! Keys keep their exact Arrow type from source to store and back: integers are
//! never routed through floating point. **Null rule:** a null in a key column is
//! a value like any other and equals only null, for every type and in every
//! column of a composite key. A row whose key is `(1, null)` is processed once,
//! and is then skipped like any other key.
//!
//! **Fingerprints.** A key file of any key but a single fixed-width column
//! (which is its own fingerprint) also holds a column of 64-bit fingerprints
//! ([`FINGERPRINT_COLUMN`]: XXH64, a hash with a fixed specification, of the
//! bytes [`fingerprints`] defines). A read whose source is much smaller than
//! the checkpoint probes them first: a key file none of whose fingerprints is
//! among the source keys' holds none of those keys, and its keys are never
//! decoded. Equal fingerprints prove nothing; the keys are then decoded and
//! compared exactly. Files written before fingerprints (format version 1) are
//! read whole, as before.

use std::hash::Hasher;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

use super::records::FingerprintBytes;
use crate::error::{Error, ObjectKind, Result};

/// One column of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    /// Column name, as in the source.
    pub name: String,
    /// Exact Arrow type.
    pub data_type: DataType,
}

impl KeyColumn {
    /// A key column named `name` of type `data_type`.
    pub fn new(name: impl Into<String>, data_type: DataType) -> Self {
        KeyColumn {
            name: name.into(),
            data_type,
        }
    }
}

/// The columns that identify a source row, in order. Composite keys have several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    columns: Vec<KeyColumn>,
    arrow: SchemaRef,
}

impl KeySchema {
    /// A key schema from columns. Fails on an empty list, duplicate names, or a
    /// type that cannot serve as a key (floating point, nested types, ...).
    ///
    /// Every Arrow spelling of one logical type is one key type: `Utf8`,
    /// `LargeUtf8`, `Utf8View` and dictionaries of them are kept as `Utf8`
    /// (binary likewise as `Binary`), so a source that changes its encoding
    /// between runs still matches the keys it checkpointed.
    pub fn new(columns: Vec<KeyColumn>) -> Result<Self> {
        if columns.is_empty() {
            return Err(Error::InvalidKeySchema(
                "a key needs at least one column".into(),
            ));
        }
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].iter().any(|c| c.name == column.name) {
                return Err(Error::InvalidKeySchema(format!(
                    "column `{}` appears twice",
                    column.name
                )));
            }
            check_key_type(&column.name, &column.data_type)?;
        }
        let columns: Vec<KeyColumn> = columns
            .into_iter()
            .map(|c| KeyColumn {
                data_type: canonical_key_type(&c.data_type),
                name: c.name,
            })
            .collect();
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect();
        Ok(KeySchema {
            arrow: Arc::new(Schema::new(fields)),
            columns,
        })
    }

    /// A single-column key.
    pub fn single(name: &str, data_type: DataType) -> Result<Self> {
        Self::new(vec![KeyColumn::new(name, data_type)])
    }

    /// The key columns `names` of a source schema, with the source's types.
    pub fn from_source(schema: &Schema, names: &[&str]) -> Result<Self> {
        let columns = names
            .iter()
            .map(|name| {
                let field = schema.field_with_name(name).map_err(|_| {
                    Error::InvalidKeySchema(format!(
                        "key column `{name}` is not in the source schema (columns: {})",
                        column_names(schema)
                    ))
                })?;
                Ok(KeyColumn {
                    name: name.to_string(),
                    data_type: field.data_type().clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(columns)
    }

    /// The key columns in order.
    pub fn columns(&self) -> &[KeyColumn] {
        &self.columns
    }

    /// The Arrow schema of key files: the key columns, all nullable.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// Checks that `arrays` are the key columns of this schema (same count, same
    /// logical types, same length) and bundles them as a batch with the key
    /// schema, strings and binary in their one kept spelling.
    pub fn batch(&self, arrays: &[ArrayRef]) -> Result<RecordBatch> {
        let found_types: Vec<DataType> = arrays
            .iter()
            .map(|a| canonical_key_type(a.data_type()))
            .collect();
        let expected_types: Vec<DataType> =
            self.columns.iter().map(|c| c.data_type.clone()).collect();
        if found_types != expected_types {
            return Err(Error::KeySchemaMismatch {
                expected: self.to_string(),
                found: format!("{found_types:?}"),
            });
        }
        let arrays = arrays
            .iter()
            .zip(&self.columns)
            .map(|(array, column)| to_key_type(array, &column.data_type))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.arrow.clone(), arrays).map_err(|e| Error::KeySchemaMismatch {
            expected: self.to_string(),
            found: e.to_string(),
        })
    }

    /// Checks that `other` describes the same key: same names and exact types.
    pub fn ensure_same(&self, other: &KeySchema) -> Result<()> {
        if self.columns == other.columns {
            Ok(())
        } else {
            Err(Error::KeySchemaMismatch {
                expected: self.to_string(),
                found: other.to_string(),
            })
        }
    }
}

impl std::fmt::Display for KeySchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(")?;
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {}", c.name, c.data_type)?;
        }
        f.write_str(")")
    }
}

/// Types that identify a row exactly and survive a Parquet round trip unchanged.
fn check_key_type(name: &str, data_type: &DataType) -> Result<()> {
    use DataType::*;
    let supported = matches!(
        canonical_key_type(data_type),
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Utf8
            | LargeUtf8
            | Binary
            | LargeBinary
            | FixedSizeBinary(_)
            | Date32
            | Date64
            | Timestamp(_, _)
            | Decimal128(_, _)
            | Decimal256(_, _)
            | Time32(TimeUnit::Second | TimeUnit::Millisecond)
            | Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
    );
    if supported {
        return Ok(());
    }
    let hint = match data_type {
        Float16 | Float32 | Float64 => "floating-point values have no exact identity (NaN, -0.0, rounding); use an integer, decimal or string key",
        Dictionary(_, _) => "only dictionaries of strings or binary can be keys",
        _ => "supported: integers, booleans, strings, binary, dates, times, timestamps, decimals",
    };
    Err(Error::InvalidKeySchema(format!(
        "key column `{name}` has type {data_type}, which cannot be a key: {hint}"
    )))
}

/// The one type a key of `data_type` is kept as: strings as `Utf8`, binary as
/// `Binary` (whatever their offsets, views or dictionary encoding), every other
/// type as it is.
pub fn canonical_key_type(data_type: &DataType) -> DataType {
    use DataType::*;
    match data_type {
        Utf8 | LargeUtf8 | Utf8View => Utf8,
        Binary | LargeBinary | BinaryView => Binary,
        Dictionary(_, values) if matches!(canonical_key_type(values), Utf8 | Binary) => {
            canonical_key_type(values)
        }
        other => other.clone(),
    }
}

/// `array` as the key type `data_type` (a no-op when it already is; strings
/// and binary of another spelling are converted, which keeps every value).
pub(crate) fn to_key_type(array: &ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    if array.data_type() == data_type {
        return Ok(array.clone());
    }
    arrow_cast::cast(array, data_type).map_err(|source| Error::Arrow {
        context: "converting a key column to its checkpointed type",
        source,
    })
}

/// The column of key fingerprints in key files of every key schema but a
/// single fixed-width column.
pub(crate) const FINGERPRINT_COLUMN: &str = "_tidemark_fingerprint";

/// Seed of the fingerprint hash. Part of the store format: changing it makes
/// every stored fingerprint wrong.
const FINGERPRINT_SEED: u64 = 0x7469_6465_6d61_726b;

/// The fingerprint of a null single-column key. Any value serves: a match is
/// only ever a reason to compare the keys themselves.
const NULL_FINGERPRINT: u64 = 0;

/// The fingerprint of each key of `columns` (key columns of one batch, null
/// keys included), or `None` when a column's type has no fingerprint
/// encoding.
///
/// The encoding is part of the store format. A single string or binary column
/// hashes each value's bytes (a null hashes to [`NULL_FINGERPRINT`]). Other
/// keys hash, column after column, a byte 0 for a null, or a byte 1 and then
/// the value: a string or binary value as its length (8 bytes, little-endian)
/// and its bytes, a boolean as one byte, any other fixed-width value as its
/// little-endian bytes.
pub(crate) fn fingerprints(columns: &[ArrayRef]) -> Option<Vec<u64>> {
    let rows = columns.first().map_or(0, |c| c.len());
    if let [column] = columns {
        if let Some(values) = ValueBytes::of(column.as_ref()).filter(ValueBytes::is_variable) {
            return Some(
                (0..rows)
                    .map(|i| {
                        values
                            .get(i)
                            .map_or(NULL_FINGERPRINT, |b| XxHash64::oneshot(FINGERPRINT_SEED, b))
                    })
                    .collect(),
            );
        }
    }
    let values = columns
        .iter()
        .map(|c| ValueBytes::of(c.as_ref()))
        .collect::<Option<Vec<_>>>()?;
    Some(
        (0..rows)
            .map(|i| {
                let mut hasher = XxHash64::with_seed(FINGERPRINT_SEED);
                for column in &values {
                    match column.get(i) {
                        None => hasher.write_u8(0),
                        Some(bytes) => {
                            hasher.write_u8(1);
                            if column.is_variable() {
                                hasher.write(&(bytes.len() as u64).to_le_bytes());
                            }
                            hasher.write(bytes);
                        }
                    }
                }
                hasher.finish()
            })
            .collect(),
    )
}

/// The bytes of each value of a key column, as fingerprints take them. Key
/// columns come in the types the store keeps (`canonical_key_type`): strings
/// as `Utf8`, binaries as `Binary`.
enum ValueBytes<'a> {
    /// Strings and binaries, whose length goes before their bytes.
    Variable(Box<dyn Fn(usize) -> Option<&'a [u8]> + 'a>),
    /// Booleans, one byte each.
    Boolean(&'a arrow_array::BooleanArray),
    /// Other fixed-width values: `width` little-endian bytes each.
    Fixed {
        values: arrow_buffer::Buffer,
        /// Position of the array's first value in `values`.
        offset: usize,
        width: usize,
        nulls: Option<arrow_buffer::NullBuffer>,
    },
}

impl<'a> ValueBytes<'a> {
    fn of(array: &'a dyn Array) -> Option<Self> {
        fn variable<'a>(get: impl Fn(usize) -> Option<&'a [u8]> + 'a) -> Option<ValueBytes<'a>> {
            Some(ValueBytes::Variable(Box::new(get)))
        }
        match array.data_type() {
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                variable(move |i| a.is_valid(i).then(|| a.value(i).as_bytes()))
            }
            DataType::Binary => {
                let a = array.as_binary::<i32>();
                variable(move |i| a.is_valid(i).then(|| a.value(i)))
            }
            DataType::FixedSizeBinary(_) => {
                let a = array.as_fixed_size_binary();
                variable(move |i| a.is_valid(i).then(|| a.value(i)))
            }
            DataType::Boolean => Some(ValueBytes::Boolean(array.as_boolean())),
            t if t.is_primitive() => {
                let data = array.to_data();
                Some(ValueBytes::Fixed {
                    values: data.buffers().first()?.clone(),
                    offset: data.offset(),
                    width: t.primitive_width()?,
                    nulls: array.logical_nulls(),
                })
            }
            _ => None,
        }
    }

    fn is_variable(&self) -> bool {
        matches!(self, ValueBytes::Variable(_))
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        match self {
            ValueBytes::Variable(get) => get(i),
            ValueBytes::Boolean(a) => {
                a.is_valid(i)
                    .then(|| if a.value(i) { &[1u8][..] } else { &[0u8][..] })
            }
            ValueBytes::Fixed {
                values,
                offset,
                width,
                nulls,
            } => nulls.as_ref().is_none_or(|n| n.is_valid(i)).then(|| {
                let start = (offset + i) * width;
                values
                    .as_slice()
                    .get(start..start + width)
                    .unwrap_or_default()
            }),
        }
    }
}

/// Whether key files of `schema` carry fingerprints: every key schema but a
/// single fixed-width column of at most 8 bytes, which is its own fingerprint.
pub(crate) fn has_fingerprints(schema: &KeySchema) -> bool {
    match schema.columns() {
        [column] => {
            let t = &column.data_type;
            !(t.is_primitive() && t.primitive_width().is_some_and(|w| w <= 8))
        }
        _ => true,
    }
}

/// A key file's bytes, and where its fingerprints lie in them.
pub(crate) struct EncodedKeyFile {
    pub(crate) bytes: Bytes,
    pub(crate) fingerprints: Option<FingerprintBytes>,
}

/// Encodes a batch of keys as one Parquet file, with the keys' fingerprints
/// when the key schema has them.
pub(crate) fn encode_key_file(
    schema: &KeySchema,
    batch: &RecordBatch,
    path: &str,
) -> Result<EncodedKeyFile> {
    let encode_err = |e: parquet::errors::ParquetError| Error::EncodeKeys {
        path: path.to_string(),
        source: Box::new(e),
    };
    // One row group, so that the fingerprints are one column chunk.
    let mut props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(None);
    let mut file_schema = schema.arrow_schema().clone();
    let mut batch = batch.clone();
    let values = if has_fingerprints(schema) {
        fingerprints(batch.columns())
    } else {
        None
    };
    if let Some(values) = values {
        let mut fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(FINGERPRINT_COLUMN, DataType::UInt64, false));
        file_schema = Arc::new(Schema::new(fields));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from(values)));
        batch =
            RecordBatch::try_new(file_schema.clone(), columns).map_err(|source| Error::Arrow {
                context: "adding fingerprints to a key file",
                source,
            })?;
        // Random 64-bit values do not compress.
        props = props.set_column_compression(
            ColumnPath::from(FINGERPRINT_COLUMN),
            Compression::UNCOMPRESSED,
        );
    }
    let fingerprinted = file_schema.fields().len() > schema.columns().len();
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, file_schema, Some(props.build())).map_err(encode_err)?;
    writer.write(&batch).map_err(encode_err)?;
    let metadata = writer.close().map_err(encode_err)?;
    let fingerprints = if fingerprinted {
        fingerprint_bytes(&metadata, &buffer)
    } else {
        None
    };
    Ok(EncodedKeyFile {
        bytes: Bytes::from(buffer),
        fingerprints,
    })
}

/// Where the fingerprint column (the last) and the footer lie in a key file
/// of one row group, and their checksum; `None` for other layouts, which are
/// fetched whole.
fn fingerprint_bytes(
    metadata: &parquet::file::metadata::ParquetMetaData,
    file: &[u8],
) -> Option<FingerprintBytes> {
    let [row_group] = metadata.row_groups() else {
        return None;
    };
    let (start, length) = row_group.columns().last()?.byte_range();
    let end = start.checked_add(length)?;
    // The file ends with the footer's length (4 bytes) and the magic `PAR1`.
    let size = file.len();
    let footer_length =
        u32::from_le_bytes(file.get(size.checked_sub(8)?..size - 4)?.try_into().ok()?);
    let footer_start = size.checked_sub(8)?.checked_sub(footer_length as usize)?;
    let column = file.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
    Some(FingerprintBytes {
        column_start: start,
        column_end: end,
        footer_start: footer_start as u64,
        crc32: fingerprint_crc32(column, file.get(footer_start..)?),
    })
}

/// The checksum a record keeps of a key file's fingerprint column chunk and
/// footer: CRC-32 of the one followed by the other.
fn fingerprint_crc32(column: &[u8], footer: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(column);
    crc.update(footer);
    crc.finalize()
}

/// The pieces of a key file fetched to read its fingerprints: the column
/// chunk and the footer. Parquet's reader reads nothing else of the file when
/// it decodes that one column; anything else is an error.
struct FingerprintPieces {
    file_size: u64,
    pieces: [(u64, Bytes); 2],
}

impl FingerprintPieces {
    fn slice(&self, start: u64, length: Option<usize>) -> parquet::errors::Result<Bytes> {
        for (at, bytes) in &self.pieces {
            let Some(from) = start.checked_sub(*at).and_then(|f| usize::try_from(f).ok()) else {
                continue;
            };
            let to = length.map_or(Some(bytes.len()), |l| from.checked_add(l));
            if let Some(to) = to.filter(|&to| from <= to && to <= bytes.len()) {
                return Ok(bytes.slice(from..to));
            }
        }
        Err(parquet::errors::ParquetError::General(format!(
            "bytes from {start} of the key file were not fetched with its fingerprints"
        )))
    }
}

impl parquet::file::reader::Length for FingerprintPieces {
    fn len(&self) -> u64 {
        self.file_size
    }
}

impl parquet::file::reader::ChunkReader for FingerprintPieces {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(bytes::Buf::reader(self.slice(start, None)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

/// Decodes the fingerprints of a key file from the pieces fetched for them
/// (`column` and `footer`, at the offsets `at` records), after checking them
/// against the recorded checksum.
pub(crate) fn fingerprints_from_pieces(
    at: &FingerprintBytes,
    file_size: u64,
    column: Bytes,
    footer: Bytes,
    path: &str,
    expected_rows: u64,
) -> Result<Vec<u64>> {
    let found = fingerprint_crc32(&column, &footer);
    if found != at.crc32 {
        return Err(Error::corrupt(
            ObjectKind::KeyFile,
            path,
            format!(
                "CRC-32 {found:08x} of its fingerprints where the manifest recorded {:08x}: altered",
                at.crc32
            ),
        ));
    }
    let pieces = FingerprintPieces {
        file_size,
        pieces: [(at.column_start, column), (at.footer_start, footer)],
    };
    read_fingerprints(pieces, path, expected_rows)?.ok_or_else(|| {
        Error::corrupt(
            ObjectKind::KeyFile,
            path,
            "the manifest records fingerprints, but the file has no fingerprint column",
        )
    })
}

/// Decodes the fingerprint column of a key file, or `None` if it has none.
fn read_fingerprints<R: parquet::file::reader::ChunkReader + 'static>(
    file: R,
    path: &str,
    expected_rows: u64,
) -> Result<Option<Vec<u64>>> {
    let corrupt = |e: String| Error::corrupt(ObjectKind::KeyFile, path, e);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corrupt(e.to_string()))?;
    let Some(index) = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == FINGERPRINT_COLUMN)
    else {
        return Ok(None);
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(KEY_BATCH_ROWS)
        .build()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut values = Vec::with_capacity(usize::try_from(expected_rows).unwrap_or(0));
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        let column = batch
            .column(0)
            .as_primitive_opt::<arrow_array::types::UInt64Type>()
            .ok_or_else(|| corrupt(format!("{FINGERPRINT_COLUMN} is not a UInt64 column")))?;
        values.extend_from_slice(column.values());
    }
    if values.len() as u64 != expected_rows {
        return Err(corrupt(format!(
            "holds {} fingerprints, but {expected_rows} keys were recorded",
            values.len()
        )));
    }
    Ok(Some(values))
}

/// Rows per batch when a key file is decoded.
const KEY_BATCH_ROWS: usize = 1 << 16;

/// A key file's bytes, fetched and checked against its record, not yet
/// decoded: its fingerprints can be read without its keys.
#[derive(Debug, Clone)]
pub(crate) struct FetchedKeyFile {
    pub(crate) schema: KeySchema,
    pub(crate) bytes: Bytes,
    pub(crate) path: String,
    pub(crate) expected_rows: u64,
}

impl FetchedKeyFile {
    /// The file's fingerprints, in row order, or `None` for a file without
    /// them (a key schema that has none, or a file of format version 1).
    pub(crate) fn fingerprints(&self) -> Result<Option<Vec<u64>>> {
        read_fingerprints(self.bytes.clone(), &self.path, self.expected_rows)
    }

    /// Decodes the keys, checking the file's columns against the key schema
    /// and its row count against the one recorded when it was staged.
    pub(crate) fn keys(&self) -> Result<Vec<RecordBatch>> {
        decode_key_file(
            &self.schema,
            self.bytes.clone(),
            &self.path,
            self.expected_rows,
        )
    }
}

/// Decodes a key file, checking its columns against the key schema and its row
/// count against the one recorded when it was staged.
pub(crate) fn decode_key_file(
    schema: &KeySchema,
    bytes: Bytes,
    path: &str,
    expected_rows: u64,
) -> Result<Vec<RecordBatch>> {
    let corrupt = |e: String| Error::corrupt(ObjectKind::KeyFile, path, e);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut file_types: Vec<(&str, DataType)> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), canonical_key_type(f.data_type())))
        .collect();
    // The fingerprints, last, are not keys.
    if has_fingerprints(schema)
        && file_types.last() == Some(&(FINGERPRINT_COLUMN, DataType::UInt64))
    {
        file_types.pop();
    }
    let expected_types: Vec<(&str, DataType)> = schema
        .columns()
        .iter()
        .map(|c| (c.name.as_str(), c.data_type.clone()))
        .collect();
    if file_types != expected_types {
        return Err(corrupt(format!(
            "columns {file_types:?} differ from the key schema {schema}"
        )));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), 0..expected_types.len());
    // Large batches: a key file is decoded whole, and each batch costs a
    // conversion and an encoding on the way into a key set.
    let reader = builder
        .with_projection(mask)
        .with_batch_size(KEY_BATCH_ROWS)
        .build()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut batches = Vec::new();
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        rows += batch.num_rows() as u64;
        // Normalise to the store's schema (nullable fields, no file metadata,
        // key types of stores made before string keys had one spelling).
        let columns = batch
            .columns()
            .iter()
            .zip(schema.columns())
            .map(|(array, column)| to_key_type(array, &column.data_type))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(schema.arrow_schema().clone(), columns)
            .map_err(|e| corrupt(e.to_string()))?;
        batches.push(batch);
    }
    if rows != expected_rows {
        return Err(corrupt(format!(
            "holds {rows} keys, but {expected_rows} were recorded"
        )));
    }
    Ok(batches)
}

/// The names of `schema`'s columns, comma-separated, for messages.
pub(crate) fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error messages name a key schema by this form.
    #[test]
    fn a_key_schema_displays_its_columns_in_order() -> Result<()> {
        let single = KeySchema::single("id", DataType::Int64)?;
        assert_eq!(single.to_string(), "(id: Int64)");
        let composite = KeySchema::new(vec![
            KeyColumn::new("tenant", DataType::Utf8),
            KeyColumn::new("id", DataType::Int64),
            KeyColumn::new("day", DataType::Date32),
        ])?;
        assert_eq!(
            composite.to_string(),
            "(tenant: Utf8, id: Int64, day: Date32)"
        );
        Ok(())
    }

    fn fetched(schema: &KeySchema, bytes: Bytes, rows: u64) -> FetchedKeyFile {
        FetchedKeyFile {
            schema: schema.clone(),
            bytes,
            path: "keys/0.parquet".into(),
            expected_rows: rows,
        }
    }

    /// A key file of string keys carries their fingerprints, which match the
    /// ones computed from the keys; decoding yields the keys alone.
    #[test]
    fn string_key_files_carry_fingerprints() -> Result<()> {
        let schema = KeySchema::single("id", DataType::Utf8)?;
        let ids: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![
            Some("a"),
            None,
            Some("a much longer key than the others"),
        ]));
        let batch = schema.batch(std::slice::from_ref(&ids))?;
        let encoded = encode_key_file(&schema, &batch, "k")?;
        let file = fetched(&schema, encoded.bytes.clone(), 3);
        let expected = fingerprints(std::slice::from_ref(&ids));
        assert_eq!(file.fingerprints()?, expected);

        // Read from the fingerprint column and the footer alone, as the
        // record places them.
        let Some(at) = encoded.fingerprints else {
            panic!("a key file of one row group records where its fingerprints lie");
        };
        let bytes = encoded.bytes;
        let size = bytes.len() as u64;
        let piece = |from: u64, to: u64| bytes.slice(from as usize..to as usize);
        let column = piece(at.column_start, at.column_end);
        let footer = piece(at.footer_start, size);
        let alone = fingerprints_from_pieces(&at, size, column.clone(), footer.clone(), "k", 3)?;
        assert_eq!(Some(alone), expected);
        // A damaged piece fails its checksum.
        let mut damaged = column.to_vec();
        damaged[0] ^= 1;
        let error = fingerprints_from_pieces(&at, size, damaged.into(), footer.clone(), "k", 3);
        assert!(matches!(error, Err(Error::Corrupt { .. })), "{error:?}");
        // A record whose ranges miss the column is refused, not misread.
        let shifted = FingerprintBytes {
            column_start: at.column_start + 1,
            crc32: fingerprint_crc32(&column[1..], &footer),
            ..at.clone()
        };
        let error = fingerprints_from_pieces(&shifted, size, column.slice(1..), footer, "k", 3);
        assert!(matches!(error, Err(Error::Corrupt { .. })), "{error:?}");
        let expected = expected.unwrap_or_default();
        assert_eq!(expected[1], NULL_FINGERPRINT);
        assert_ne!(expected[0], expected[2]);
        assert_eq!(file.keys()?, vec![batch]);
        // A wrong row count is corruption, for fingerprints as for keys.
        assert!(fetched(&schema, file.bytes.clone(), 4)
            .fingerprints()
            .is_err());
        Ok(())
    }

    /// Fingerprints are part of the format: XXH64 with the store's seed.
    #[test]
    fn fingerprints_are_stable() -> Result<()> {
        let seed = 0x7469_6465_6d61_726b;
        let ids: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["0123", ""]));
        assert_eq!(
            fingerprints(&[ids]),
            Some(vec![
                XxHash64::oneshot(seed, b"0123"),
                XxHash64::oneshot(seed, b""),
            ])
        );
        assert!(!has_fingerprints(&KeySchema::single(
            "id",
            DataType::Int64
        )?));
        // Composite keys: the columns' values in turn, each behind a null
        // flag, strings behind their length.
        let tenants: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![Some("ab"), None]));
        let ids: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
        let mut first = XxHash64::with_seed(seed);
        first.write(&[1, 2, 0, 0, 0, 0, 0, 0, 0]);
        first.write(b"ab");
        first.write(&[1, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut second = XxHash64::with_seed(seed);
        second.write(&[0, 1, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            fingerprints(&[tenants.clone(), ids.clone()]),
            Some(vec![first.finish(), second.finish()])
        );
        // A slice hashes the values it shows.
        assert_eq!(
            fingerprints(&[tenants.slice(1, 1), ids.slice(1, 1)]),
            Some(vec![second.finish()])
        );
        Ok(())
    }

    /// Every key type the store keeps has fingerprints, alone (but a single
    /// fixed-width column) or in a composite key.
    #[test]
    fn every_key_type_has_fingerprints() -> Result<()> {
        let binary: ArrayRef = Arc::new(arrow_array::BinaryArray::from(vec![&b"ab"[..]]));
        let fixed: ArrayRef = Arc::new(arrow_array::FixedSizeBinaryArray::from(vec![&b"ab"[..]]));
        let strings: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["ab"]));
        let flags: ArrayRef = Arc::new(arrow_array::BooleanArray::from(vec![true]));
        let wide: ArrayRef = Arc::new(
            arrow_array::Decimal128Array::from(vec![7])
                .with_precision_and_scale(30, 2)
                .map_err(|e| Error::InvalidKeySchema(e.to_string()))?,
        );
        let same_bytes = fingerprints(std::slice::from_ref(&strings));
        for single in [&binary, &fixed] {
            assert_eq!(fingerprints(std::slice::from_ref(single)), same_bytes);
        }
        let mut flag = XxHash64::with_seed(0x7469_6465_6d61_726b);
        flag.write(&[1, 1]);
        assert_eq!(
            fingerprints(std::slice::from_ref(&flags)),
            Some(vec![flag.finish()])
        );
        let mut decimal = XxHash64::with_seed(0x7469_6465_6d61_726b);
        decimal.write(&[1]);
        decimal.write(&7i128.to_le_bytes());
        assert_eq!(
            fingerprints(std::slice::from_ref(&wide)),
            Some(vec![decimal.finish()])
        );
        for data_type in [
            DataType::Boolean,
            DataType::Decimal128(30, 2),
            DataType::Binary,
        ] {
            assert!(has_fingerprints(&KeySchema::single("k", data_type)?));
        }
        Ok(())
    }

    /// Key files of other key types, and string key files of format version
    /// 1, have no fingerprints and are decoded as before.
    #[test]
    fn key_files_without_fingerprints_decode_as_before() -> Result<()> {
        let ints = KeySchema::single("id", DataType::Int64)?;
        let batch = ints.batch(&[Arc::new(arrow_array::Int64Array::from(vec![1, 2]))])?;
        let encoded = encode_key_file(&ints, &batch, "k")?;
        assert_eq!(encoded.fingerprints, None);
        let file = fetched(&ints, encoded.bytes, 2);
        assert_eq!(file.fingerprints()?, None);
        assert_eq!(file.keys()?, vec![batch]);

        let strings = KeySchema::single("id", DataType::Utf8)?;
        let batch = strings.batch(&[Arc::new(arrow_array::StringArray::from(vec!["x"]))])?;
        let mut version_1 = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut version_1, strings.arrow_schema().clone(), None)
            .map_err(|e| Error::InvalidKeySchema(e.to_string()))?;
        writer
            .write(&batch)
            .map_err(|e| Error::InvalidKeySchema(e.to_string()))?;
        writer
            .close()
            .map_err(|e| Error::InvalidKeySchema(e.to_string()))?;
        let file = fetched(&strings, Bytes::from(version_1), 1);
        assert_eq!(file.fingerprints()?, None);
        assert_eq!(file.keys()?, vec![batch]);
        Ok(())
    }
}
