//! The map-only guard keeps what runs between a read and a sink row-wise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array};
use arrow::compute::kernels::numeric::mul;
use arrow::record_batch::RecordBatch;
use tidemark::transform::Transform;
use tidemark::Error;

fn batch(ids: Vec<i64>) -> RecordBatch {
    let doubled: Vec<i64> = ids.iter().map(|i| i * 10).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("v", Arc::new(Int64Array::from(doubled)) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn row_wise_steps_run_in_order() {
    let t = Transform::new()
        .filter(|b| {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            Ok(ids
                .iter()
                .map(|v| v.map(|v| v % 2 == 0))
                .collect::<BooleanArray>())
        })
        .map(|b| {
            let two = Int64Array::new_scalar(2);
            let v = mul(b.column(1), &two).unwrap();
            Ok(RecordBatch::try_new(b.schema(), vec![b.column(0).clone(), v]).unwrap())
        })
        .project(["v"]);
    let out = t.apply(batch(vec![1, 2, 3, 4])).unwrap();
    let v = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(v.values().to_vec(), vec![40, 80]);
}

#[test]
fn a_map_that_changes_the_row_count_is_refused() {
    let limit = Transform::new().map(|b| Ok(b.slice(0, 1)));
    let err = limit.apply(batch(vec![1, 2, 3])).unwrap_err();
    assert!(matches!(err, Error::NotRowWise { .. }));
    assert!(
        err.to_string().contains("returned 1 rows for 3 input rows"),
        "{err}"
    );
}

#[test]
fn named_operations_are_refused_with_a_reason() {
    for op in [
        "limit",
        "sample",
        "sort",
        "aggregate",
        "join",
        "repartition",
    ] {
        let err = Transform::refuse(op);
        assert!(
            err.to_string().starts_with(&format!("`{op}` cannot run")),
            "{err}"
        );
    }
    assert!(Transform::refuse("limit")
        .to_string()
        .contains("never be written"));
}

/// Steps that await run between the others in order, under the same checks:
/// one row per row, and the declared columns.
#[tokio::test]
async fn async_maps_run_in_order_under_the_same_checks() {
    let t = Transform::new()
        .filter(|b| {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            Ok(ids.iter().map(|v| v.map(|v| v > 1)).collect())
        })
        .map_async(|b: RecordBatch| async move {
            tokio::task::yield_now().await;
            let v = mul(b.column(1), &Int64Array::new_scalar(3)).unwrap();
            Ok(RecordBatch::try_new(b.schema(), vec![b.column(0).clone(), v]).unwrap())
        })
        .project(["v"]);
    assert!(t.is_async());
    assert!(!Transform::new().map(Ok).is_async());
    let out = t.apply_async(batch(vec![1, 2, 3])).await.unwrap();
    let v = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(v.values().to_vec(), vec![60, 90]);
    assert!(t.apply(batch(vec![1])).is_err(), "apply cannot await");

    let limit = Transform::new().map_async(|b: RecordBatch| async move { Ok(b.slice(0, 1)) });
    let err = limit.apply_async(batch(vec![1, 2, 3])).await.unwrap_err();
    assert!(matches!(err, Error::NotRowWise { .. }), "{err}");

    let declared = batch(vec![1]).project(&[0]).unwrap().schema();
    let wrong = Transform::new().map_async_to(declared, |b: RecordBatch| async move { Ok(b) });
    let err = wrong.apply_async(batch(vec![1, 2])).await.unwrap_err();
    assert!(err.to_string().contains("declared the columns"), "{err}");
}
