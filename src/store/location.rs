//! Turning a store URL (`memory://`, `file:///path`, `s3://bucket/prefix`) into an
//! object store and the prefix inside it.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};
use url::Url;

use crate::environment::{Environment, SystemEnvironment};
use crate::error::{Error, Result};
use crate::redact::redact_url;

/// Option key: how many times a failed request is retried (S3 only).
pub const OPTION_MAX_RETRIES: &str = "tidemark.max_retries";
/// Option key: total seconds a request may spend retrying (S3 only).
pub const OPTION_RETRY_TIMEOUT_SECS: &str = "tidemark.retry_timeout_secs";

/// An object store and the prefix under which a checkpoint store lives.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    /// The object store requests go to.
    pub object_store: Arc<dyn ObjectStore>,
    /// The prefix of every object of the checkpoint store.
    pub prefix: Path,
    /// The URL it was opened from, for messages.
    pub url: String,
    /// Where the store's clock and fresh ids come from
    /// ([`SystemEnvironment`] unless set with [`Self::with_environment`]).
    pub environment: Arc<dyn Environment>,
}

impl StoreLocation {
    /// Opens a location from a URL.
    ///
    /// - `memory://` is a fresh in-memory store (lost when the process ends).
    /// - `file:///absolute/path` is a directory on the local file system (created on first write).
    /// - `s3://bucket/prefix` is an S3 bucket. Settings come from the `AWS_*` environment
    ///   variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_ALLOW_HTTP`, ...) and then from `options`, which take the names object_store
    ///   accepts (`aws_endpoint`, `aws_allow_http`, ...) plus [`OPTION_MAX_RETRIES`] and
    ///   [`OPTION_RETRY_TIMEOUT_SECS`]. Conditional puts use `If-None-Match`, which S3 and
    ///   compatible servers support.
    ///
    /// Credentials and options never go in the URL (messages and records show
    /// it): a URL with a user, password or query is refused.
    pub fn from_url(url: &str, options: &HashMap<String, String>) -> Result<Self> {
        let shown = redact_url(url);
        let invalid = |reason: String| Error::InvalidLocation {
            url: shown.clone(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some()
        {
            return Err(invalid(URL_CREDENTIALS_REFUSED.to_string()));
        }
        let (object_store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "memory" => (Arc::new(InMemory::new()), path_of(&parsed, url)?),
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(format!("cannot create directory: {e}")))?;
                // Deleting an object also removes the directories it leaves
                // empty: otherwise every checkpoint's staging directories
                // stay forever, and each listing walks them all.
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), Path::default())
            }
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env().with_url(url);
                let mut retry = RetryConfig::default();
                for (key, value) in options {
                    match key.as_str() {
                        OPTION_MAX_RETRIES => {
                            retry.max_retries = value.parse().map_err(|_| {
                                invalid(format!("{key} must be a whole number, got `{value}`"))
                            })?;
                        }
                        OPTION_RETRY_TIMEOUT_SECS => {
                            let secs: u64 = value.parse().map_err(|_| {
                                invalid(format!("{key} must be a whole number, got `{value}`"))
                            })?;
                            retry.retry_timeout = Duration::from_secs(secs);
                        }
                        _ => {
                            let config_key = AmazonS3ConfigKey::from_str(key)
                                .map_err(|_| invalid(format!("unknown S3 option `{key}`")))?;
                            builder = builder.with_config(config_key, value.clone());
                        }
                    }
                }
                let s3 = builder
                    .with_retry(retry)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                (Arc::new(s3), path_of(&parsed, url)?)
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme `{other}`; use memory://, file:// or s3://"
                )))
            }
        };
        Ok(StoreLocation {
            object_store,
            prefix,
            url: shown,
            environment: Arc::new(SystemEnvironment),
        })
    }

    /// A location on an object store the caller already holds (for tests, or to share
    /// one in-memory store between several handles).
    pub fn from_object_store(object_store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        let url = format!("{object_store}/{prefix}");
        StoreLocation {
            object_store,
            prefix,
            url,
            environment: Arc::new(SystemEnvironment),
        }
    }

    /// Takes time and fresh ids from `environment` (a simulated clock in
    /// tests) instead of the system.
    pub fn with_environment(mut self, environment: Arc<dyn Environment>) -> Self {
        self.environment = environment;
        self
    }
}

/// Why a location URL with a user, password or query is refused.
pub const URL_CREDENTIALS_REFUSED: &str =
    "a location URL carries no user, password or query, since messages, logs and records \
     show it: pass credentials and settings as options (`-o KEY=VALUE` on the command line, \
     object_store names such as aws_secret_access_key) or in the AWS_* environment variables";

fn path_of(parsed: &Url, url: &str) -> Result<Path> {
    Path::parse(parsed.path().trim_start_matches('/')).map_err(|e| Error::InvalidLocation {
        url: redact_url(url),
        reason: e.to_string(),
    })
}
