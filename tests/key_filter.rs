//! The key filter drops exactly the rows whose key is checkpointed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use tidemark::filter::KeyFilter;
use tidemark::store::{CheckpointStore, KeyColumn, KeySchema};
use tidemark::Error;

fn source(ids: Vec<Option<i64>>) -> RecordBatch {
    let payload: Vec<String> = (0..ids.len()).map(|i| format!("row {i}")).collect();
    RecordBatch::try_from_iter([
        ("payload", Arc::new(StringArray::from(payload)) as ArrayRef),
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
    ])
    .unwrap()
}

fn ids_of(batch: &RecordBatch) -> Vec<Option<i64>> {
    let ids = batch
        .column_by_name("id")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    (0..ids.len())
        .map(|i| ids.is_valid(i).then(|| ids.value(i)))
        .collect()
}

#[test]
fn int64_keys_are_exact_around_two_to_the_53() {
    let two53 = 1i64 << 53;
    let mut filter = KeyFilter::new(KeySchema::single("id", DataType::Int64).unwrap()).unwrap();
    let seen = Int64Array::from(vec![Some(two53), Some(i64::MAX), None]);
    filter
        .insert(&RecordBatch::try_from_iter([("id", Arc::new(seen) as ArrayRef)]).unwrap())
        .unwrap();
    let batch = source(vec![
        Some(two53 - 1),
        Some(two53),
        Some(two53 + 1),
        Some(i64::MIN),
        Some(i64::MAX),
        None,
    ]);
    let kept = filter.retain_unprocessed(&batch).unwrap();
    assert_eq!(
        ids_of(&kept),
        vec![Some(two53 - 1), Some(two53 + 1), Some(i64::MIN)]
    );
    // The other columns come along with their rows.
    let payload = kept
        .column_by_name("payload")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(payload.value(1), "row 2");
    assert_eq!(filter.len(), 3);
    assert!(filter.memory_bytes() >= 3 * 9);
}

#[test]
fn composite_keys_with_nulls_follow_null_equals_null() {
    let schema = KeySchema::new(vec![
        KeyColumn::new("tenant", DataType::Utf8),
        KeyColumn::new("seq", DataType::UInt64),
    ])
    .unwrap();
    let mut filter = KeyFilter::new(schema).unwrap();
    let seen = RecordBatch::try_from_iter([
        (
            "tenant",
            Arc::new(StringArray::from(vec![Some("a"), None, Some("b")])) as ArrayRef,
        ),
        (
            "seq",
            Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(1), None])) as ArrayRef,
        ),
    ])
    .unwrap();
    filter.insert(&seen).unwrap();
    let batch = RecordBatch::try_from_iter([
        (
            "seq",
            Arc::new(UInt64Array::from(vec![
                Some(u64::MAX),
                Some(u64::MAX - 1),
                Some(1),
                Some(1),
                None,
                None,
            ])) as ArrayRef,
        ),
        (
            "tenant",
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("a"),
                None,
                Some(""),
                Some("b"),
                Some("a"),
            ])) as ArrayRef,
        ),
    ])
    .unwrap();
    let kept = filter.retain_unprocessed(&batch).unwrap();
    let seq = kept
        .column_by_name("seq")
        .unwrap()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap();
    let tenant = kept
        .column_by_name("tenant")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let rows: Vec<(Option<&str>, Option<u64>)> = (0..kept.num_rows())
        .map(|i| {
            (
                tenant.is_valid(i).then(|| tenant.value(i)),
                seq.is_valid(i).then(|| seq.value(i)),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (Some("a"), Some(u64::MAX - 1)),
            (Some(""), Some(1)),
            (Some("a"), None)
        ]
    );
}

#[test]
fn a_source_with_other_key_types_is_refused_before_any_row() {
    let filter = KeyFilter::new(KeySchema::single("id", DataType::Int64).unwrap()).unwrap();
    let wrong = Schema::new(vec![Field::new("id", DataType::Int32, false)]);
    let err = filter.check_source(&wrong).unwrap_err();
    assert!(matches!(err, Error::KeySchemaMismatch { .. }), "{err}");
    let batch =
        RecordBatch::try_from_iter([("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef)])
            .unwrap();
    assert!(filter.retain_unprocessed(&batch).is_err());
    let missing = Schema::new(vec![Field::new("key", DataType::Int64, false)]);
    let err = filter.check_source(&missing).unwrap_err();
    assert!(
        err.to_string()
            .contains("key column `id` is not in the source schema (columns: key)"),
        "{err}"
    );
}

#[tokio::test]
async fn reruns_skip_sealed_keys_but_not_staged_ones() {
    let keys = KeySchema::single("id", DataType::Int64).unwrap();
    let store = CheckpointStore::open("memory://", &HashMap::new(), keys)
        .await
        .unwrap();
    let day_one = source((0..100).map(Some).collect());

    // Run 1 processes everything and seals.
    let filter = KeyFilter::load(&store, &store.load().await.unwrap())
        .await
        .unwrap();
    let todo = filter.retain_unprocessed(&day_one).unwrap();
    assert_eq!(todo.num_rows(), 100);
    let mut writer = store.begin().await.unwrap();
    writer
        .stage_keys(&[todo.column_by_name("id").unwrap().clone()])
        .await
        .unwrap();
    writer.seal().await.unwrap();

    // A crashed run staged keys 100..150 but never sealed: they do not count.
    let mut crashed = store.begin().await.unwrap();
    crashed
        .stage_keys(&[Arc::new(Int64Array::from_iter_values(100..150)) as ArrayRef])
        .await
        .unwrap();

    // Rerun over the same source: nothing to do. Over a grown source: the new keys.
    let filter = KeyFilter::load(&store, &store.load().await.unwrap())
        .await
        .unwrap();
    assert_eq!(filter.retain_unprocessed(&day_one).unwrap().num_rows(), 0);
    let grown = source((0..200).map(Some).collect());
    let kept = filter.retain_unprocessed(&grown).unwrap();
    assert_eq!(ids_of(&kept), (100..200).map(Some).collect::<Vec<_>>());
}

#[test]
fn every_spelling_of_a_string_or_binary_key_is_one_key() {
    use arrow::array::{
        BinaryArray, BinaryViewArray, DictionaryArray, LargeBinaryArray, LargeStringArray,
        StringViewArray,
    };
    use arrow::datatypes::Int32Type;

    // Run 1 read the keys as LargeUtf8; the store keeps them as Utf8.
    let first = Schema::new(vec![Field::new("k", DataType::LargeUtf8, true)]);
    let schema = KeySchema::from_source(&first, &["k"]).unwrap();
    assert_eq!(schema.columns()[0].data_type, DataType::Utf8);
    let mut filter = KeyFilter::new(schema.clone()).unwrap();
    let seen = LargeStringArray::from(vec![Some("a"), Some("b"), None]);
    filter
        .insert(&RecordBatch::try_from_iter([("k", Arc::new(seen) as ArrayRef)]).unwrap())
        .unwrap();
    // Later runs read the same keys as views and as a dictionary.
    let views: ArrayRef = Arc::new(StringViewArray::from(vec![
        Some("a"),
        Some("c"),
        None,
        Some("b"),
    ]));
    let dictionary: ArrayRef = Arc::new(
        vec![Some("a"), Some("c"), None, Some("b")]
            .into_iter()
            .collect::<DictionaryArray<Int32Type>>(),
    );
    for keys in [views, dictionary] {
        let batch_schema = Schema::new(vec![Field::new("k", keys.data_type().clone(), true)]);
        KeySchema::from_source(&batch_schema, &["k"])
            .unwrap()
            .ensure_same(&schema)
            .unwrap();
        filter.check_source(&batch_schema).unwrap();
        let batch = RecordBatch::try_from_iter([("k", keys.clone())]).unwrap();
        let kept = filter.retain_unprocessed(&batch).unwrap();
        assert_eq!(kept.num_rows(), 1, "{}: only `c` is new", keys.data_type());
    }

    // Binary likewise: Binary, LargeBinary and BinaryView.
    let schema = KeySchema::single("b", DataType::BinaryView).unwrap();
    assert_eq!(schema.columns()[0].data_type, DataType::Binary);
    let mut filter = KeyFilter::new(schema).unwrap();
    let seen = BinaryArray::from(vec![b"x".as_ref()]);
    filter
        .insert(&RecordBatch::try_from_iter([("b", Arc::new(seen) as ArrayRef)]).unwrap())
        .unwrap();
    for keys in [
        Arc::new(LargeBinaryArray::from(vec![b"x".as_ref(), b"y".as_ref()])) as ArrayRef,
        Arc::new(BinaryViewArray::from(vec![b"x".as_ref(), b"y".as_ref()])) as ArrayRef,
    ] {
        let batch = RecordBatch::try_from_iter([("b", keys)]).unwrap();
        assert_eq!(filter.retain_unprocessed(&batch).unwrap().num_rows(), 1);
    }
    // A dictionary of integers is not a string key: refused with the reason.
    let error = KeySchema::single(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Int64)),
    )
    .unwrap_err();
    assert!(error
        .to_string()
        .contains("dictionaries of strings or binary"));
}

/// Single-column keys of the types that neither fit a word nor are strings:
/// fixed-size binary (UUIDs as Iceberg stores them), 128-bit decimals and
/// booleans. The filter tells every value apart: exactly the keys not
/// inserted are kept, the null key included when it is new.
#[test]
fn fixed_size_binary_wide_decimal_and_boolean_keys_are_exact() {
    use arrow::array::{BooleanArray, Decimal128Array, FixedSizeBinaryArray};

    let uuid = |n: u8| -> [u8; 16] { [n; 16] };
    let seen_uuids: Vec<[u8; 16]> = (0..50).map(uuid).collect();
    let all_uuids: Vec<[u8; 16]> = (0..100).map(uuid).collect();
    let decimal = |values: Vec<i128>| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(38, 0)
                .unwrap(),
        )
    };
    let big = |n: i128| n * 10_i128.pow(30) + n;
    let cases: Vec<(ArrayRef, ArrayRef, usize)> = vec![
        (
            Arc::new(FixedSizeBinaryArray::try_from_iter(seen_uuids.iter()).unwrap()),
            Arc::new(FixedSizeBinaryArray::try_from_iter(all_uuids.iter()).unwrap()),
            50,
        ),
        (
            decimal((0..50).map(big).collect()),
            decimal((0..100).map(big).collect()),
            50,
        ),
        (
            Arc::new(BooleanArray::from(vec![true])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
            ])),
            2,
        ),
    ];
    for (seen, source, new) in cases {
        let data_type = seen.data_type().clone();
        let schema = KeySchema::single("k", data_type.clone()).unwrap();
        let mut filter = KeyFilter::new(schema).unwrap();
        filter
            .insert(&RecordBatch::try_from_iter([("k", seen)]).unwrap())
            .unwrap();
        let batch = RecordBatch::try_from_iter([("k", source)]).unwrap();
        let kept = filter.retain_unprocessed(&batch).unwrap();
        assert_eq!(kept.num_rows(), new, "{data_type}: only the new keys");
        // Kept again, the new keys are not repeated among themselves, and the
        // seen ones stay out.
        filter.insert(&kept).unwrap();
        assert_eq!(
            filter.retain_unprocessed(&batch).unwrap().num_rows(),
            0,
            "{data_type}: every key seen"
        );
    }
}
