//! Schema evolution across the files of one source: the files are read as
//! the union of their columns by name, as DataFusion, DuckDB
//! (`union_by_name`) and polars read a folder whose later files added a
//! column. A column a file lacks is null in its rows; a column whose type
//! grew between files is read at the wider type when the widening is exact.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{new_null_array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};

/// The type that holds every value of both `a` and `b` exactly, if one does:
/// wider signed or unsigned integers, wider floats (and integers of up to 32
/// bits as `Float64`), large strings and binaries.
pub(crate) fn widened(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    let signed = |t: &DataType| match t {
        Int8 => Some(1),
        Int16 => Some(2),
        Int32 => Some(3),
        Int64 => Some(4),
        _ => None,
    };
    let unsigned = |t: &DataType| match t {
        UInt8 => Some(1),
        UInt16 => Some(2),
        UInt32 => Some(3),
        UInt64 => Some(4),
        _ => None,
    };
    let float = |t: &DataType| match t {
        Float16 => Some(1),
        Float32 => Some(2),
        Float64 => Some(3),
        _ => None,
    };
    let wider = |rank: &dyn Fn(&DataType) -> Option<u8>| match (rank(a), rank(b)) {
        (Some(x), Some(y)) => Some(if x >= y { a.clone() } else { b.clone() }),
        _ => None,
    };
    if let Some(t) = wider(&signed)
        .or_else(|| wider(&unsigned))
        .or_else(|| wider(&float))
    {
        return Some(t);
    }
    let small_integer = |t: &DataType| matches!(t, Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32);
    let any_float = |t: &DataType| float(t).is_some();
    if (small_integer(a) && any_float(b)) || (any_float(a) && small_integer(b)) {
        return Some(Float64);
    }
    match (a, b) {
        (Utf8 | LargeUtf8, Utf8 | LargeUtf8) => Some(LargeUtf8),
        (Binary | LargeBinary, Binary | LargeBinary) => Some(LargeBinary),
        _ => None,
    }
}

/// The union by name of the files' schemas, columns in the order they first
/// appear. A column missing from some file is nullable. Fails, naming both
/// files, when a column's types cannot be widened into one.
pub(crate) fn unify<'a>(
    schemas: impl IntoIterator<Item = (&'a str, SchemaRef)>,
) -> Result<SchemaRef> {
    struct Column {
        field: Field,
        first_file: String,
        files: usize,
    }
    let mut columns: Vec<Column> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut files = 0;
    for (file, schema) in schemas {
        files += 1;
        for field in schema.fields() {
            let Some(&at) = by_name.get(field.name()) else {
                by_name.insert(field.name().clone(), columns.len());
                columns.push(Column {
                    // Missing from the files before this one.
                    field: field
                        .as_ref()
                        .clone()
                        .with_metadata(HashMap::new())
                        .with_nullable(field.is_nullable() || files > 1),
                    first_file: file.to_string(),
                    files: 1,
                });
                continue;
            };
            let column = &mut columns[at];
            let data_type = widened(column.field.data_type(), field.data_type()).ok_or_else(|| {
                Error::InvalidSource {
                    location: file.to_string(),
                    reason: format!(
                        "its column `{}` is {}, and in `{}` it is {}: the types cannot be read as one \
                         (only exact widenings are: wider integers or floats, integers to double, \
                         large strings). Rewrite one of the files with the other's type, or read \
                         them as separate sources",
                        field.name(),
                        field.data_type(),
                        column.first_file,
                        column.field.data_type()
                    ),
                }
            })?;
            let nullable = column.field.is_nullable() || field.is_nullable();
            column.field = column
                .field
                .clone()
                .with_data_type(data_type)
                .with_nullable(nullable);
            column.files += 1;
        }
    }
    let fields: Vec<Field> = columns
        .into_iter()
        .map(|c| {
            let nullable = c.field.is_nullable() || c.files < files;
            c.field.with_nullable(nullable)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// How the batches of one file become columns of the source's unified
/// schema, worked out once per file read: for each column asked for, its
/// place in the file's projected batches (cast to the unified type when the
/// file's is narrower), or none (all null: the file lacks it).
pub(crate) struct FileAdapter {
    file: String,
    schema: SchemaRef,
    columns: Vec<Option<usize>>,
}

impl FileAdapter {
    /// The adapter for `file` read with the projection `roots` (indices of
    /// its own columns, ascending, as the Parquet reader yields them), giving
    /// the columns `wanted` (indices of `unified`).
    pub(crate) fn new(
        file: &str,
        unified: &Schema,
        wanted: &[usize],
        file_schema: &Schema,
        roots: &[usize],
    ) -> Self {
        let fields: Vec<Field> = wanted.iter().map(|&i| unified.field(i).clone()).collect();
        let columns = fields
            .iter()
            .map(|field| {
                let own = file_schema.index_of(field.name()).ok()?;
                roots.binary_search(&own).ok()
            })
            .collect();
        FileAdapter {
            file: file.to_string(),
            schema: Arc::new(Schema::new(fields)),
            columns,
        }
    }

    /// The file's own column indices to read, ascending: the projection to
    /// give the Parquet reader for `wanted`.
    pub(crate) fn roots(unified: &Schema, wanted: &[usize], file_schema: &Schema) -> Vec<usize> {
        let mut roots: Vec<usize> = wanted
            .iter()
            .filter_map(|&i| file_schema.index_of(unified.field(i).name()).ok())
            .collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// One batch of the file as the unified columns.
    pub(crate) fn adapt(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (field, column) in self.schema.fields().iter().zip(&self.columns) {
            let array = match column {
                None => new_null_array(field.data_type(), batch.num_rows()),
                Some(at) => {
                    let array = batch.columns().get(*at).ok_or_else(|| Error::Source {
                        location: self.file.clone(),
                        source: format!("the reader yielded no column {at}").into(),
                    })?;
                    if array.data_type() == field.data_type() {
                        array.clone()
                    } else {
                        arrow_cast::cast(array, field.data_type()).map_err(|e| Error::Source {
                            location: self.file.clone(),
                            source: Box::new(e),
                        })?
                    }
                }
            };
            arrays.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|source| Error::Arrow {
            context: "reading a file as the source's unified columns",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t, nullable)| Field::new(*n, t.clone(), *nullable))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn a_column_added_later_is_nullable_and_types_widen() {
        let a = schema(&[
            ("id", DataType::Int64, false),
            ("v", DataType::Int32, false),
        ]);
        let b = schema(&[
            ("extra", DataType::Utf8, false),
            ("v", DataType::Int64, false),
            ("id", DataType::Int64, false),
        ]);
        let unified = unify([("a.parquet", a), ("b.parquet", b)]).unwrap();
        assert_eq!(
            unified.as_ref(),
            schema(&[
                ("id", DataType::Int64, false),
                ("v", DataType::Int64, false),
                ("extra", DataType::Utf8, true),
            ])
            .as_ref()
        );
    }

    #[test]
    fn a_column_missing_from_a_later_file_is_nullable() {
        let a = schema(&[
            ("id", DataType::Int64, false),
            ("v", DataType::Float32, false),
        ]);
        let b = schema(&[("id", DataType::Int64, false)]);
        let unified = unify([("a.parquet", a), ("b.parquet", b)]).unwrap();
        assert!(unified.field(1).is_nullable());
        assert!(!unified.field(0).is_nullable());
    }

    #[test]
    fn incompatible_types_name_both_files() {
        let a = schema(&[("id", DataType::Int64, false), ("v", DataType::Utf8, true)]);
        let b = schema(&[("id", DataType::Int64, false), ("v", DataType::Int64, true)]);
        let err = unify([("a.parquet", a), ("b.parquet", b)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.parquet") && err.contains("b.parquet"),
            "{err}"
        );
        assert!(err.contains("`v`"), "{err}");
    }

    #[test]
    fn only_exact_widenings() {
        use DataType::*;
        assert_eq!(widened(&Int32, &Int64), Some(Int64));
        assert_eq!(widened(&Float32, &Float64), Some(Float64));
        assert_eq!(widened(&Int32, &Float32), Some(Float64));
        assert_eq!(widened(&Utf8, &LargeUtf8), Some(LargeUtf8));
        assert_eq!(widened(&Int64, &Float64), None, "not exact above 2^53");
        assert_eq!(widened(&Int64, &UInt64), None);
        assert_eq!(widened(&Int64, &Utf8), None);
    }
}
