//! Fitting a batch to a table's Arrow schema before anything is written.

use arrow_array::RecordBatch;
use arrow_cast::{can_cast_types, cast};
use arrow_schema::{DataType, SchemaRef, TimeUnit};

/// The batch with the table's `schema`: columns matched by name, reordered, and
/// widened where the cast keeps every value exactly (`Int32` into `Int64`,
/// string views into strings, seconds into microseconds). A missing, extra or
/// differently typed column, or a null in a non-nullable column, is refused with
/// a reason that names the column.
pub fn conform_batch(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch, String> {
    let batch_schema = batch.schema();
    let extra: Vec<&str> = batch_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|name| schema.field_with_name(name).is_err())
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "the batch has columns the table does not: {}",
            extra.join(", ")
        ));
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let Some(array) = batch.column_by_name(field.name()) else {
            return Err(format!(
                "the batch has no column `{}` ({})",
                field.name(),
                field.data_type()
            ));
        };
        let array = if array.data_type() == field.data_type() {
            array.clone()
        } else if widens_exactly(array.data_type(), field.data_type())
            && can_cast_types(array.data_type(), field.data_type())
        {
            cast(array, field.data_type())
                .map_err(|e| format!("column `{}` could not be widened: {e}", field.name()))?
        } else {
            return Err(format!(
                "column `{}` is {} in the batch but {} in the table",
                field.name(),
                array.data_type(),
                field.data_type()
            ));
        };
        if !field.is_nullable() && array.null_count() > 0 {
            return Err(format!(
                "column `{}` is not nullable in the table but has {} null(s) in the batch",
                field.name(),
                array.null_count()
            ));
        }
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| format!("the conformed batch is invalid: {e}"))
}

/// Whether a cast from `from` to `to` keeps every value exactly.
fn widens_exactly(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Utf8View | LargeUtf8 | Utf8, Utf8 | LargeUtf8 | Utf8View) => true,
        (BinaryView | LargeBinary | Binary, Binary | LargeBinary | BinaryView) => true,
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (Float32, Float64) => true,
        (Timestamp(from_unit, from_tz), Timestamp(TimeUnit::Microsecond, to_tz)) => {
            from_tz == to_tz && matches!(from_unit, TimeUnit::Second | TimeUnit::Millisecond)
        }
        _ => false,
    }
}
