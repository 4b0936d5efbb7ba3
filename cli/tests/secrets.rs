//! The canary test: a unique secret is planted in every place a user can put
//! one (a catalog URL's password, a table URL's query, `-o` options, the
//! environment), every command runs, succeeding and failing on purpose (a
//! catalog server down, a refused URL, an unreachable store, a bad table, a
//! killed run), with logs at their most verbose. Not one byte of stdout,
//! stderr, the checkpoint store, the tables' storage or the catalog may hold
//! the secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use support::{Backend, BoundedOutput, S3_BUCKET};

/// One `tidemark` invocation and what it printed.
struct Invocation {
    what: String,
    output: Output,
}

fn tidemark(what: &str, args: &[String], env: &[(&str, &str)]) -> Invocation {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command.args(args).env("TIDEMARK_LOG", "trace");
    // Never leave this machine: an S3 client without static credentials
    // would ask the instance metadata service.
    command.env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1");
    for (key, value) in env {
        command.env(key, value);
    }
    Invocation {
        what: what.to_string(),
        output: command.bounded_output().unwrap(),
    }
}

fn write_source(dir: &Path, rows: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..rows).collect();
    let text: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(text)) as ArrayRef,
        ],
    )
    .unwrap();
    let file = std::fs::File::create(dir.join("part-0.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Every file below `dir` whose bytes contain `needle`.
fn local_files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    support::files_below(dir)
        .into_iter()
        .filter(|path| contains(&std::fs::read(path).unwrap(), needle))
        .map(|path| path.display().to_string())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_output_store_table_or_catalog() {
    let canary = format!("tmcanary{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    write_source(&source, 2_000);
    let source = source.display().to_string();

    let backend = Backend::s3();
    let (store, server_options) = backend.url();
    let store = store.to_string();
    // The S3 server checks no signature, so the canary serves as the secret key.
    let options_with = |secret: bool, endpoint: Option<&str>| -> Vec<String> {
        let mut options: Vec<String> = server_options
            .iter()
            .filter(|(k, _)| k.as_str() != "aws_secret_access_key")
            .filter(|(k, _)| endpoint.is_none() || k.as_str() != "aws_endpoint")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if secret {
            options.push(format!("aws_secret_access_key={canary}"));
            options.push(format!("aws_session_token={canary}"));
        }
        if let Some(endpoint) = endpoint {
            options.push(format!("aws_endpoint={endpoint}"));
            options.push("tidemark.max_retries=0".into());
        }
        options
    };
    let options = options_with(true, None);
    let with_options = |mut args: Vec<String>| {
        for option in &options {
            args.push("-o".into());
            args.push(option.clone());
        }
        args
    };
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (delta_table, _) = backend.data_url("delta");
    let delta_sink = format!("delta+{delta_table}");
    let (warehouse, _) = backend.data_url("warehouse");
    let iceberg_sink = format!(
        "iceberg+sqlite://{}/catalog.db?warehouse={warehouse}#ns.docs",
        dir.path().display()
    );
    let (iceberg_store, _) = backend.data_url("iceberg-store");
    let run_args = |sink: &str, store: &str| {
        strings(&[
            "run",
            "--quiet",
            "--create",
            "--key",
            "id",
            "--pipeline",
            "canary",
            "--source",
            &source,
            "--sink",
            sink,
            "--store",
            store,
        ])
    };
    let run = |sink: &str, store: &str| with_options(run_args(sink, store));
    let maintenance = |command: &str, sink: &str| {
        with_options(strings(&[
            command,
            "--store",
            &store,
            "--sink",
            sink,
            "--pipeline",
            "canary",
        ]))
    };

    let mut invocations = vec![
        tidemark("run into Delta on S3", &run(&delta_sink, &store), &[]),
        tidemark(
            "run into Iceberg on S3",
            &run(&iceberg_sink, &iceberg_store),
            &[],
        ),
        tidemark(
            "status",
            &with_options(strings(&["status", "--store", &store])),
            &[],
        ),
        tidemark(
            "status --json",
            &with_options(strings(&["status", "--json", "--store", &store])),
            &[],
        ),
        tidemark("gc", &maintenance("gc", &delta_sink), &[]),
        tidemark("compact", &maintenance("compact", &delta_sink), &[]),
        tidemark("verify", &maintenance("verify", &delta_sink), &[]),
        tidemark(
            "adopt",
            &{
                let mut args = maintenance("adopt", &delta_sink);
                args.extend(["--key".to_string(), "id".to_string()]);
                args
            },
            &[],
        ),
        tidemark(
            "verify --json",
            &{
                let mut args = maintenance("verify", &delta_sink);
                args.push("--json".into());
                args
            },
            &[],
        ),
    ];
    // Each of these works (status exits 3 while work is pending).
    for invocation in &invocations {
        let code = invocation.output.status.code();
        let pending_status = invocation.what.starts_with("status") && code == Some(3);
        assert!(
            code == Some(0) || pending_status,
            "{} failed ({code:?}): {}",
            invocation.what,
            String::from_utf8_lossy(&invocation.output.stderr)
        );
    }
    // Credentials from the environment alone: no `-o` at all.
    let (env_store, _) = backend.data_url("env-store");
    let (env_warehouse, _) = backend.data_url("env-warehouse");
    let env_sink = format!(
        "iceberg+sqlite://{}/env-catalog.db?warehouse={env_warehouse}#ns.docs",
        dir.path().display()
    );
    let endpoint = server_options["aws_endpoint"].clone();
    invocations.push(tidemark(
        "run with credentials from the environment only",
        &run_args(&env_sink, &env_store),
        &[
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "tidemark"),
            ("AWS_SECRET_ACCESS_KEY", canary.as_str()),
        ],
    ));
    for invocation in &invocations {
        assert!(
            invocation
                .output
                .status
                .code()
                .is_some_and(|c| c == 0 || c == 3),
            "{} failed: {}",
            invocation.what,
            String::from_utf8_lossy(&invocation.output.stderr)
        );
    }

    // Failures on purpose.
    let postgres_down = format!(
        "iceberg+postgresql://tidemark:{canary}@127.0.0.1:1/cat?warehouse=file:///tmp/wh#ns.docs"
    );
    let query_secret = format!("{delta_table}-q?aws_secret_access_key={canary}");
    let mut unreachable = run_args(&delta_sink, &store);
    for option in options_with(false, Some("http://127.0.0.1:1")) {
        unreachable.push("-o".into());
        unreachable.push(option);
    }
    let failing = [
        (
            "a catalog whose server is down",
            run(&postgres_down, &store),
            vec![],
        ),
        (
            "a secret in a table URL's query",
            run(&format!("delta+{query_secret}"), &store),
            vec![],
        ),
        (
            "a secret in a store URL's query",
            run(&delta_sink, &format!("{store}?token={canary}")),
            vec![],
        ),
        (
            "an unreachable store, the secret in the environment",
            unreachable,
            vec![("AWS_SECRET_ACCESS_KEY", canary.as_str())],
        ),
        (
            "a catalog URL given where a number belongs (the argument parser echoes it)",
            strings(&["run", "--memory-mib", &postgres_down, "--source", &source]),
            vec![],
        ),
        (
            "a table that is no table",
            run(
                "iceberg+sqlite:///nonexistent/dir/catalog.db#ns.docs",
                &store,
            ),
            vec![],
        ),
        (
            "a bad option",
            run(&format!("delta+{delta_table}-bad"), &store)
                .into_iter()
                .chain(strings(&["-o", &format!("no_such_option_token={canary}")]))
                .collect(),
            vec![],
        ),
    ];
    for (what, args, env) in &failing {
        let invocation = tidemark(what, args, env);
        assert!(
            !invocation.output.status.success(),
            "{what}: expected a failure"
        );
        invocations.push(invocation);
    }

    // A run killed while it works.
    write_source(&dir.path().join("big"), 200_000);
    let mut killed = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    killed
        .args(with_options(strings(&[
            "run",
            "--create",
            "--key",
            "id",
            "--pipeline",
            "canary-killed",
            "--source",
            &dir.path().join("big").display().to_string(),
            "--sink",
            &format!("delta+{}", backend.data_url("killed").0),
            "--store",
            &backend.data_url("killed-store").0,
        ])))
        .env("TIDEMARK_LOG", "trace")
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = killed.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = child.kill();
    invocations.push(Invocation {
        what: "a killed run".into(),
        output: child.wait_with_output().unwrap(),
    });

    let needle = canary.as_bytes();
    for invocation in &invocations {
        for (stream, bytes) in [
            ("stdout", &invocation.output.stdout),
            ("stderr", &invocation.output.stderr),
        ] {
            assert!(
                !contains(bytes, needle),
                "{}: the secret is in {stream}:\n{}",
                invocation.what,
                String::from_utf8_lossy(bytes)
            );
        }
    }
    // The failures say what was wrong, with the secret masked.
    let text = |i: usize| String::from_utf8_lossy(&invocations[i].output.stderr).to_string();
    let first_failure = invocations.len() - failing.len() - 1;
    assert!(
        text(first_failure).contains("tidemark:***@127.0.0.1:1"),
        "{}",
        text(first_failure)
    );
    assert!(
        text(first_failure + 1).contains("-o KEY=VALUE"),
        "{}",
        text(first_failure + 1)
    );
    assert!(
        text(first_failure + 2).contains("-o KEY=VALUE"),
        "{}",
        text(first_failure + 2)
    );

    // Every object of the S3 server's bucket: stores and tables.
    let bucket: HashMap<String, String> = server_options.clone();
    let url = url::Url::parse(&format!("s3://{S3_BUCKET}/")).unwrap();
    let (s3, _) = object_store::parse_url_opts(&url, &bucket).unwrap();
    let objects: Vec<object_store::ObjectMeta> = s3.list(None).try_collect().await.unwrap();
    assert!(objects.len() > 10, "the runs wrote too little to check");
    for object in &objects {
        let bytes = s3
            .get(&object.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            !contains(&bytes, needle),
            "the secret is in the object `{}`",
            object.location
        );
    }
    // The SQLite catalog and everything else on local disk.
    assert_eq!(
        local_files_containing(dir.path(), needle),
        Vec::<String>::new()
    );
    eprintln!(
        "{} invocations and {} stored objects checked: no secret",
        invocations.len(),
        objects.len()
    );
}

/// Credentials from a shared credentials file alone (no key in `-o`, none in
/// the environment): a Delta table on the S3 server is reached through
/// delta-rs, whose AWS SDK reads the profile (with a custom endpoint only
/// under `AWS_FORCE_CREDENTIAL_LOAD=true`). The checkpoint store is local:
/// object_store reads no profile files (see the README). The deltalake
/// package then reads every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_file_alone_reaches_a_delta_table_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    write_source(&source, 1_000);
    let backend = Backend::s3();
    let (_, server_options) = backend.url();
    let (table, _) = backend.data_url("profile");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[tidemark-test]\naws_access_key_id = tidemark\naws_secret_access_key = from-the-profile\n",
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "[profile tidemark-test]\nregion = us-east-1\n").unwrap();
    let endpoint = server_options["aws_endpoint"].clone();
    let output = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args([
            "run",
            "--quiet",
            "--create",
            "--key",
            "id",
            "--pipeline",
            "profile",
        ])
        .arg("--source")
        .arg(&source)
        .args(["--sink", &format!("delta+{table}")])
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["-o", &format!("aws_endpoint={endpoint}")])
        .args(["-o", "aws_allow_http=true", "-o", "aws_region=us-east-1"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "tidemark-test")
        // delta-rs uses the AWS SDK's chain with a custom endpoint only when told.
        .env("AWS_FORCE_CREDENTIAL_LOAD", "true")
        // Never leave this machine for the instance metadata service.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
        .bounded_output()
        .unwrap();
    assert!(
        output.status.success(),
        "the run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reader = Command::new("python3")
        .arg(format!(
            "{}/../connectors/delta/tests/support/delta_read.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&table)
        .arg(
            serde_json::json!({
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "tidemark",
                "AWS_SECRET_ACCESS_KEY": "any",
            })
            .to_string(),
        )
        .arg("profile")
        .bounded_output()
        .unwrap();
    assert!(
        reader.status.success(),
        "deltalake failed: {}",
        String::from_utf8_lossy(&reader.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&reader.stdout).unwrap();
    let mut ids: Vec<i64> = serde_json::from_value(read["deltalake_ids"].clone()).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, (0..1_000).collect::<Vec<i64>>(), "every key once");
}

/// Pipeline ids and table names that break their rules are refused before
/// any work: the command fails naming the rule, and no store is created.
#[test]
fn bad_names_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    write_source(&source, 10);
    let store = dir.path().join("store");
    let sink_ok = format!(
        "iceberg+sqlite://{}/catalog.db?warehouse=file://{}/wh#ns.docs",
        dir.path().display(),
        dir.path().display()
    );
    let long = "a".repeat(129);
    let cases: Vec<(&str, String, &str)> = vec![
        ("", sink_ok.clone(), "1 to 128 characters"),
        ("../../escape", sink_ok.clone(), "1 to 128 characters"),
        ("has space", sink_ok.clone(), "1 to 128 characters"),
        (&long, sink_ok.clone(), "1 to 128 characters"),
        (
            "fine",
            format!("iceberg+sqlite://{}/c.db#ns.do/cs", dir.path().display()),
            "no control characters, `/`",
        ),
        (
            "fine",
            format!("iceberg+sqlite://{}/c.db#ns..docs", dir.path().display()),
            "1 to 255 bytes",
        ),
    ];
    for (pipeline, sink, rule) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["run", "--create", "--key", "id", "--pipeline", pipeline])
            .arg("--source")
            .arg(&source)
            .args(["--sink", &sink])
            .arg("--store")
            .arg(&store)
            .bounded_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{pipeline:?} {sink}: accepted");
        assert!(stderr.contains(rule), "{pipeline:?} {sink}: {stderr}");
        assert!(!store.exists(), "{pipeline:?} {sink}: a store was made");
    }
}

/// A lease time to live out of range, and one given to `compact` without a
/// table, are refused by the argument parser before any work: no store is
/// created.
#[test]
fn bad_lease_times_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    write_source(&source, 10);
    let store = dir.path().join("store");
    let store_arg = store.display().to_string();
    let sink = format!("delta+file://{}/table", dir.path().display());
    let source_arg = source.display().to_string();
    let run = |ttl: &str| -> Vec<String> {
        [
            "run",
            "--create",
            "--key",
            "id",
            "--pipeline",
            "p",
            "--source",
            &source_arg,
        ]
        .iter()
        .chain(&[
            "--sink",
            &sink,
            "--store",
            &store_arg,
            "--lease-ttl-secs",
            ttl,
        ])
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (run("0"), "from 1 to 604800"),
        (run("604801"), "from 1 to 604800"),
        (run("soon"), "from 1 to 604800"),
        (
            ["compact", "--store", &store_arg, "--lease-ttl-secs", "5"]
                .map(String::from)
                .to_vec(),
            "--sink",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(&args)
            .bounded_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!store.exists(), "{args:?}: a store was made");
    }
}
