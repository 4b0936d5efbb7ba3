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

#[test]
fn credentials_in_a_location_url_are_refused_wherever_they_are() {
    let none = HashMap::new();
    for url in [
        "s3://key@bucket/x",
        "s3://:secret@bucket/x",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?aws_secret_access_key=secret",
        "memory:///x?token=secret",
    ] {
        let err = StoreLocation::from_url(url, &none).expect_err(url);
        assert!(
            err.to_string()
                .contains("carries no user, password or query"),
            "{url}: {err}"
        );
        assert!(!err.to_string().contains("secret@"), "{url}: {err}");
    }
}

#[test]
fn a_location_s_prefix_is_its_url_s_path() {
    let options = HashMap::from([
        (OPTION_MAX_RETRIES.to_string(), "3".to_string()),
        (OPTION_RETRY_TIMEOUT_SECS.to_string(), "30".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
    ]);
    let s3 = StoreLocation::from_url("s3://bucket/pipelines/daily", &options).unwrap();
    assert_eq!(s3.prefix.as_ref(), "pipelines/daily");
    assert_eq!(s3.url, "s3://bucket/pipelines/daily");
    let memory = StoreLocation::from_url("memory:///pipelines/hourly", &HashMap::new()).unwrap();
    assert_eq!(memory.prefix.as_ref(), "pipelines/hourly");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    let file = StoreLocation::from_url(&url, &HashMap::new()).unwrap();
    assert_eq!(
        file.prefix.as_ref(),
        "",
        "the directory is the store's root"
    );
    assert!(dir.path().join("store").is_dir(), "created when opened");
}
