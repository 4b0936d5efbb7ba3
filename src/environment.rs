//! Where the protocol core gets the time and fresh ids.
//!
//! Leases expire by the clock, records carry timestamps, and checkpoint,
//! writer and owner ids are time-ordered UUIDs. All of them come from the
//! [`Environment`] of the store's [`StoreLocation`](crate::store::StoreLocation),
//! never from the system directly, so that a test can run the real protocol
//! on a clock it controls, with ids drawn from a seed, and the same seed
//! replays the same run.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The source of time and fresh ids of a checkpoint store.
pub trait Environment: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// A fresh id, never returned before. Ids made later sort later (as
    /// UUID v7 does), so checkpoints sort in the order they began.
    fn new_id(&self) -> Uuid;
}

/// The system clock and UUID v7: what every store uses unless told otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}
