//! Errors of store locations that cannot be used: they must name the problem.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on failure by design

mod support;

use std::collections::HashMap;
use std::net::TcpListener;

use arrow::datatypes::DataType;
use tidemark::store::{
    CheckpointStore, KeySchema, StoreLocation, OPTION_MAX_RETRIES, OPTION_RETRY_TIMEOUT_SECS,
};
use tidemark::Error;

fn keys() -> KeySchema {
    KeySchema::single("id", DataType::Int64).expect("key schema")
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_a_store_error() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut options = support::s3_options(&format!("http://127.0.0.1:{port}"));
    options.insert(OPTION_MAX_RETRIES.into(), "1".into());
    options.insert(OPTION_RETRY_TIMEOUT_SECS.into(), "2".into());
    let err = CheckpointStore::open("s3://bucket/pipeline", &options, keys())
        .await
        .expect_err("unreachable");
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("pipeline/tidemark.json"), "{err}");
}

#[tokio::test]
async fn a_missing_store_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("file://{}/nothing-here", dir.path().display());
    let location = StoreLocation::from_url(&url, &HashMap::new()).expect("location");
    let err = CheckpointStore::open_existing(location)
        .await
        .expect_err("no store");
    assert!(matches!(err, Error::NoStore { .. }), "{err}");
}

#[test]
fn bad_locations_are_refused() {
    let none = HashMap::new();
    for (url, expected) in [
        ("not a url", "relative URL"),
        ("gs://bucket/x", "unsupported scheme `gs`"),
        ("file://relative/path", "not an absolute local path"),
    ] {
        let err = StoreLocation::from_url(url, &none).expect_err(url);
        assert!(matches!(err, Error::InvalidLocation { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{url}: {err}");
    }
    let options = HashMap::from([("aws_no_such_option".to_string(), "x".to_string())]);
    let err = StoreLocation::from_url("s3://bucket/x", &options).expect_err("bad option");
    assert!(
        err.to_string()
            .contains("unknown S3 option `aws_no_such_option`"),
        "{err}"
    );
    let options = HashMap::from([(OPTION_MAX_RETRIES.to_string(), "many".to_string())]);
    let err = StoreLocation::from_url("s3://bucket/x", &options).expect_err("bad retries");
    assert!(err.to_string().contains("whole number"), "{err}");
}
