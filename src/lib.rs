//! # tidemark
//!
//! Exactly-once pipelines over lakehouse tables. tidemark wraps a pipeline that
//! reads a source, runs costly per-row work and appends to an Iceberg or Delta
//! table with **checkpointed reads** (rows whose key was already processed never
//! reach the user's code) and **idempotent commits** (the files recorded in a
//! checkpoint reach the table exactly once, even when a commit response is lost).
//!
//! This crate is the core: the [`store::CheckpointStore`] on any object store.
//!
//! ```
//! # async fn demo() -> tidemark::Result<()> {
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use arrow_array::{ArrayRef, Int64Array};
//! use arrow_schema::DataType;
//! use tidemark::store::{CheckpointStore, KeySchema};
//!
//! let keys = KeySchema::single("id", DataType::Int64)?;
//! let store = CheckpointStore::open("memory://", &HashMap::new(), keys).await?;
//!
//! let mut writer = store.begin().await?;
//! writer.stage_keys(&[Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef]).await?;
//! writer.seal().await?;
//!
//! assert_eq!(store.load().await?.key_count(), 3);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod adopt;
pub mod commit;
pub mod conform;
pub mod environment;
pub mod error;
pub mod filter;
pub mod gc;
pub mod pipeline;
pub mod plan;
pub mod read;
pub mod redact;
pub mod source;
pub mod sql;
pub mod store;
pub mod transform;

pub use error::{Error, Result};
