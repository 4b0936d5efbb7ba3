//! Fitting a batch to a table's Arrow schema before anything is written.

use arrow_array::RecordBatch;
use arrow_cast::{can_cast_types, cast};
use arrow_schema::{DataType, Schema, SchemaRef, TimeUnit};

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
                "column `{}` is {} in the batch but {} in the table{}",
                field.name(),
                array.data_type(),
                field.data_type(),
                type_hint(array.data_type())
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

/// The schema a new table gets for batches of `schema`: unsigned integers
/// become the next wider signed integer, which holds every value (table
/// formats have no unsigned types). A `UInt64` column, which no signed type
/// holds, is refused with the way out, before the table is made.
pub fn storable_schema(schema: &Schema) -> Result<Schema, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|field| {
            let widened = match field.data_type() {
                DataType::UInt8 => DataType::Int16,
                DataType::UInt16 => DataType::Int32,
                DataType::UInt32 => DataType::Int64,
                DataType::UInt64 => {
                    return Err(format!(
                        "column `{}` is UInt64{}",
                        field.name(),
                        type_hint(&DataType::UInt64)
                    ))
                }
                other => other.clone(),
            };
            Ok(field.as_ref().clone().with_data_type(widened))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The way out for types that table formats do not have.
fn type_hint(from: &DataType) -> &'static str {
    match from {
        DataType::UInt64 => {
            " (Iceberg and Delta have no unsigned 64-bit integer: cast the column to Int64 \
             if every value is below 2^63, or to Decimal128(20, 0), before it reaches the table)"
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => {
            " (Iceberg and Delta have no unsigned integers: the table's column must be a \
             wider signed integer, which holds every value)"
        }
        _ => "",
    }
}

/// Whether a cast from `from` to `to` keeps every value exactly.
fn widens_exactly(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if same_logical_type(from, to) {
        return true;
    }
    match (from, to) {
        (Utf8View | LargeUtf8 | Utf8, Utf8 | LargeUtf8 | Utf8View) => true,
        (BinaryView | LargeBinary | Binary, Binary | LargeBinary | BinaryView) => true,
        (Dictionary(_, values), to) => widens_exactly(values, to),
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, Int16 | Int32 | Int64) | (UInt16, Int32 | Int64) | (UInt32, Int64) => true,
        (Float32, Float64) => true,
        (Timestamp(from_unit, from_tz), Timestamp(TimeUnit::Microsecond, to_tz)) => {
            same_zone(from_tz.as_deref(), to_tz.as_deref())
                && matches!(from_unit, TimeUnit::Second | TimeUnit::Millisecond)
        }
        _ => false,
    }
}

/// Whether `from` and `to` hold the same values in the same layout, told apart
/// only by what does not change a value: the names and metadata of nested
/// fields (`item` or `element`, field ids) and the spelling of a time zone
/// (`UTC`, `+00:00`, `Etc/UTC`). A nested field that may hold nulls does not
/// go into one that may not.
fn same_logical_type(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Timestamp(from_unit, from_tz), Timestamp(to_unit, to_tz)) => {
            from_unit == to_unit && same_zone(from_tz.as_deref(), to_tz.as_deref())
        }
        (List(a), List(b)) | (LargeList(a), LargeList(b)) | (Map(a, _), Map(b, _)) => {
            same_field(a, b)
        }
        (FixedSizeList(a, n), FixedSizeList(b, m)) => n == m && same_field(a, b),
        (Struct(a), Struct(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(a, b)| a.name() == b.name() && same_field(a, b))
        }
        _ => from == to,
    }
}

fn same_field(from: &arrow_schema::Field, to: &arrow_schema::Field) -> bool {
    (to.is_nullable() || !from.is_nullable()) && same_logical_type(from.data_type(), to.data_type())
}

/// Whether two time zone names are one zone. Offsets and zone names are
/// compared as written, except for the spellings of UTC.
fn same_zone(a: Option<&str>, b: Option<&str>) -> bool {
    fn utc(zone: &str) -> bool {
        matches!(
            zone.to_ascii_uppercase().as_str(),
            "UTC"
                | "Z"
                | "+00:00"
                | "-00:00"
                | "+0000"
                | "+00"
                | "ETC/UTC"
                | "GMT"
                | "ETC/GMT"
                | "UCT"
                | "ETC/UCT"
                | "ZULU"
                | "ETC/ZULU"
                | "UNIVERSAL"
                | "ETC/UNIVERSAL"
        )
    }
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || (utc(a) && utc(b)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
    use arrow_array::types::Int32Type;
    use arrow_array::{Array, Int64Array, TimestampMicrosecondArray, UInt32Array};
    use arrow_schema::Field;

    use super::*;

    fn one_column(field: Field, array: arrow_array::ArrayRef) -> RecordBatch {
        RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap()
    }

    #[test]
    fn utc_spellings_are_one_zone() {
        let micros = TimestampMicrosecondArray::from(vec![1_700_000_000_000_000]);
        let batch = one_column(
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Arc::new(micros.clone().with_timezone("UTC")),
        );
        for zone in ["+00:00", "Etc/UTC", "UTC"] {
            let table = Arc::new(Schema::new(vec![Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some(zone.into())),
                true,
            )]));
            let conformed = conform_batch(&table, &batch).unwrap();
            assert_eq!(conformed.schema(), table);
            let values = conformed
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>();
            assert_eq!(values.unwrap().value(0), 1_700_000_000_000_000);
        }
        let berlin = Arc::new(Schema::new(vec![Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Berlin".into())),
            true,
        )]));
        assert!(conform_batch(&berlin, &batch)
            .unwrap_err()
            .contains("column `at`"));
    }

    #[test]
    fn nested_field_names_and_ids_do_not_matter() {
        let mut list = ListBuilder::new(arrow_array::builder::Int64Builder::new());
        list.values().append_value(7);
        list.append(true);
        let list = list.finish();
        let batch = one_column(
            Field::new("tags", list.data_type().clone(), true),
            Arc::new(list),
        );
        let element = Field::new("element", DataType::Int64, true)
            .with_metadata([("PARQUET:field_id".to_string(), "3".to_string())].into());
        let table = Arc::new(Schema::new(vec![Field::new(
            "tags",
            DataType::List(Arc::new(element)),
            true,
        )]));
        let conformed = conform_batch(&table, &batch).unwrap();
        assert_eq!(conformed.schema(), table);
        // A nullable element never goes into a required one.
        let required = Field::new("element", DataType::Int64, false);
        let table = Arc::new(Schema::new(vec![Field::new(
            "tags",
            DataType::List(Arc::new(required)),
            true,
        )]));
        assert!(conform_batch(&table, &batch).is_err());
    }

    #[test]
    fn dictionaries_and_small_unsigned_integers_widen() {
        let mut dictionary = StringDictionaryBuilder::<Int32Type>::new();
        dictionary.append_value("a");
        dictionary.append_null();
        let dictionary = dictionary.finish();
        let batch = one_column(
            Field::new("s", dictionary.data_type().clone(), true),
            Arc::new(dictionary),
        );
        let table = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let conformed = conform_batch(&table, &batch).unwrap();
        assert_eq!(conformed.column(0).null_count(), 1);

        let batch = one_column(
            Field::new("n", DataType::UInt32, true),
            Arc::new(UInt32Array::from(vec![u32::MAX])),
        );
        let table = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let conformed = conform_batch(&table, &batch).unwrap();
        let values = conformed
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(values.value(0), i64::from(u32::MAX));
        let table = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        assert!(conform_batch(&table, &batch).is_err());
    }
}
