//! Per-file column statistics in the shape of a Delta Add action's `stats`.
//!
//! Readers skip files with these values, so a wrong minimum or maximum loses
//! rows at read time. Only values that are exact, or rounded outward, are
//! written: integers, dates, strings of at most [`MAX_STRING_STAT_CHARS`]
//! characters, floats without NaN, and timestamps rounded down (minimum) or up
//! (maximum) to the millisecond precision of the stats format. Other columns
//! get a null count only, which is always safe.

use std::collections::BTreeMap;

use arrow_arith::aggregate;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate};
use serde_json::{json, Map, Value};

/// Longer strings are left out of min/max rather than truncated.
pub(crate) const MAX_STRING_STAT_CHARS: usize = 64;

/// A bound of one column, kept typed so batches can be merged exactly.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Bound {
    Int(i64),
    Float(f64),
    Date(i32),
    /// Microseconds since the epoch; `utc` for timestamps with a time zone.
    Micros {
        value: i64,
        utc: bool,
    },
    Text(String),
}

#[derive(Debug, Default)]
struct ColumnStats {
    nulls: u64,
    min: Option<Bound>,
    max: Option<Bound>,
    /// Set once a value makes min/max unsafe (NaN, long string); sticky.
    no_bounds: bool,
}

/// Accumulates the statistics of one data file.
#[derive(Debug, Default)]
pub(crate) struct FileStats {
    rows: u64,
    columns: BTreeMap<String, ColumnStats>,
}

impl FileStats {
    /// Folds in a batch of the file's data columns.
    pub(crate) fn add(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows() as u64;
        for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
            if matches!(
                field.data_type(),
                DataType::Struct(_)
                    | DataType::List(_)
                    | DataType::LargeList(_)
                    | DataType::Map(..)
            ) {
                continue;
            }
            let column = self.columns.entry(field.name().clone()).or_default();
            column.nulls += array.null_count() as u64;
            if column.no_bounds {
                continue;
            }
            match bounds(array.as_ref()) {
                Ok(Some((min, max))) => {
                    if column.min.as_ref().is_none_or(|m| min < *m) {
                        column.min = Some(min);
                    }
                    if column.max.as_ref().is_none_or(|m| max > *m) {
                        column.max = Some(max);
                    }
                }
                Ok(None) => {}
                Err(Unsafe) => {
                    column.no_bounds = true;
                    column.min = None;
                    column.max = None;
                }
            }
        }
    }

    /// Number of rows folded in.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// The `stats` JSON of an Add action.
    pub(crate) fn to_json(&self) -> String {
        let mut min_values = Map::new();
        let mut max_values = Map::new();
        let mut null_count = Map::new();
        for (name, column) in &self.columns {
            null_count.insert(name.clone(), json!(column.nulls));
            if let (Some(min), Some(max)) = (&column.min, &column.max) {
                min_values.insert(name.clone(), to_json(min, Rounding::Down));
                max_values.insert(name.clone(), to_json(max, Rounding::Up));
            }
        }
        json!({
            "numRecords": self.rows,
            "minValues": min_values,
            "maxValues": max_values,
            "nullCount": null_count,
        })
        .to_string()
    }
}

/// The column holds a value for which no safe bound can be written.
struct Unsafe;

/// Min and max of the non-null values, `None` if all are null or the type has
/// no statistics here.
fn bounds(array: &dyn Array) -> Result<Option<(Bound, Bound)>, Unsafe> {
    fn pair<T>(min: Option<T>, max: Option<T>, f: impl Fn(T) -> Bound) -> Option<(Bound, Bound)> {
        Some((f(min?), f(max?)))
    }
    Ok(match array.data_type() {
        DataType::Int8 => {
            let a = array.as_primitive::<Int8Type>();
            pair(aggregate::min(a), aggregate::max(a), |v| {
                Bound::Int(v.into())
            })
        }
        DataType::Int16 => {
            let a = array.as_primitive::<Int16Type>();
            pair(aggregate::min(a), aggregate::max(a), |v| {
                Bound::Int(v.into())
            })
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            pair(aggregate::min(a), aggregate::max(a), |v| {
                Bound::Int(v.into())
            })
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            pair(aggregate::min(a), aggregate::max(a), Bound::Int)
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            if a.iter().flatten().any(f32::is_nan) {
                return Err(Unsafe);
            }
            pair(aggregate::min(a), aggregate::max(a), |v| {
                Bound::Float(v.into())
            })
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            if a.iter().flatten().any(f64::is_nan) {
                return Err(Unsafe);
            }
            pair(aggregate::min(a), aggregate::max(a), Bound::Float)
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            pair(aggregate::min(a), aggregate::max(a), Bound::Date)
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let a = array.as_primitive::<TimestampMicrosecondType>();
            let utc = tz.is_some();
            pair(aggregate::min(a), aggregate::max(a), |value| {
                Bound::Micros { value, utc }
            })
        }
        DataType::Utf8 => text(aggregate::min_string(array.as_string::<i32>()), || {
            aggregate::max_string(array.as_string::<i32>())
        })?,
        DataType::LargeUtf8 => text(aggregate::min_string(array.as_string::<i64>()), || {
            aggregate::max_string(array.as_string::<i64>())
        })?,
        DataType::Utf8View => text(aggregate::min_string_view(array.as_string_view()), || {
            aggregate::max_string_view(array.as_string_view())
        })?,
        _ => None,
    })
}

fn text<'a>(
    min: Option<&'a str>,
    max: impl FnOnce() -> Option<&'a str>,
) -> Result<Option<(Bound, Bound)>, Unsafe> {
    let (Some(min), Some(max)) = (min, max()) else {
        return Ok(None);
    };
    if min.chars().count() > MAX_STRING_STAT_CHARS || max.chars().count() > MAX_STRING_STAT_CHARS {
        return Err(Unsafe);
    }
    Ok(Some((Bound::Text(min.into()), Bound::Text(max.into()))))
}

#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

fn to_json(bound: &Bound, rounding: Rounding) -> Value {
    match bound {
        Bound::Int(v) => json!(v),
        Bound::Float(v) => json!(v),
        Bound::Text(v) => json!(v),
        Bound::Date(days) => {
            let date = NaiveDate::default()
                .checked_add_signed(chrono::TimeDelta::days((*days).into()))
                .map(|d| d.format("%Y-%m-%d").to_string());
            date.map_or(Value::Null, Value::from)
        }
        Bound::Micros { value, utc } => {
            let millis = match rounding {
                Rounding::Down => value.div_euclid(1000),
                Rounding::Up => value.div_euclid(1000) + i64::from(value.rem_euclid(1000) != 0),
            };
            let Some(time) = DateTime::from_timestamp_millis(millis) else {
                return Value::Null;
            };
            let format = if *utc {
                "%Y-%m-%dT%H:%M:%S%.3fZ"
            } else {
                "%Y-%m-%dT%H:%M:%S%.3f"
            };
            json!(time.naive_utc().format(format).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow_array::{
        Date32Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Schema};

    use super::*;

    #[test]
    fn bounds_merge_across_batches_and_round_outward() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = |ids: Vec<Option<i64>>, names: Vec<&str>, scores: Vec<f64>, at: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(Float64Array::from(scores)),
                    Arc::new(Date32Array::from(vec![0, 19_000])),
                    Arc::new(TimestampMicrosecondArray::from(at).with_timezone("UTC")),
                ],
            )
            .unwrap()
        };
        let mut stats = FileStats::default();
        stats.add(&batch(
            vec![Some(9_007_199_254_740_993), None],
            vec!["b", "c"],
            vec![1.5, 2.0],
            vec![1_500, 2_000],
        ));
        stats.add(&batch(
            vec![Some(i64::MIN), Some(3)],
            vec!["a", "x".repeat(65).as_str()],
            vec![f64::NAN, 0.0],
            vec![999, 1_001],
        ));
        let json: Value = serde_json::from_str(&stats.to_json()).unwrap();
        assert_eq!(json["numRecords"], 4);
        assert_eq!(json["nullCount"]["id"], 1);
        // Exact integers, including values a double cannot hold.
        assert!(stats.to_json().contains("9007199254740993"));
        assert_eq!(json["minValues"]["id"], json!(i64::MIN));
        // A long string and a NaN remove the bounds of their columns.
        assert!(json["minValues"].get("name").is_none());
        assert!(json["maxValues"].get("score").is_none());
        assert_eq!(json["minValues"]["day"], "1970-01-01");
        assert_eq!(json["maxValues"]["day"], "2022-01-08");
        // The minimum, 999 µs, rounds down to 0 ms; the maximum, 2 000 µs, is exact.
        assert_eq!(json["minValues"]["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["maxValues"]["at"], "1970-01-01T00:00:00.002Z");
    }

    #[test]
    fn a_maximum_between_milliseconds_rounds_up() {
        let bound = Bound::Micros {
            value: 1_001,
            utc: false,
        };
        assert_eq!(to_json(&bound, Rounding::Up), "1970-01-01T00:00:00.002");
        assert_eq!(to_json(&bound, Rounding::Down), "1970-01-01T00:00:00.001");
    }
}
