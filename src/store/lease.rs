//! Leases: at most one live run per pipeline (or per shard), and fencing of a
//! run whose lease was taken over.
//!
//! A lease is a numbered series of epochs in `lease/{scope}/epochs/`, each
//! written once with put-if-not-exists, so two contenders for the same epoch
//! cannot both win. The highest epoch is the holder; it renews a heartbeat
//! while it runs and marks it released when it stops. A contender takes the
//! next epoch only when the holder released the lease or let it expire.
//!
//! Expiry depends on clocks, so it only decides *when* a takeover may happen.
//! Safety does not: on taking epoch `e`, the new holder seals every unsealed
//! checkpoint begun under an older epoch of its scope with an empty tombstone
//! (put-if-not-exists on the same `sealed/{id}.json` the old writer would use).
//! Exactly one of the two seals exists: if the old writer's landed first, the
//! new holder sees its keys when it loads the store (after the fencing); if
//! the tombstone landed first, the old writer's seal fails with
//! [`Error::Fenced`](crate::Error::Fenced) and its keys never count. A writer
//! also checks for a newer epoch right after recording its begin marker, so a
//! checkpoint begun after the takeover's listing is refused before it writes.
//!
//! Scopes split one pipeline's source between shards, so leases of different
//! scopes must not cover the same keys at once. Every claim therefore also
//! names a [`ShardLayout`]: the shard count the pipeline's runs share,
//! recorded in `layouts/` as a second numbered series. A run of the current
//! shard count joins the current layout; a run of another shard count starts
//! the next layout, only once no run of any other scope is live, and then
//! fences (seals empty) every unsealed checkpoint begun under an older layout,
//! whatever its scope. A writer's fence fails once a newer epoch of its scope
//! or a newer layout exists, so a frozen run of an old layout that wakes up
//! is refused exactly as a frozen run of its own scope is.
//!
//! A new holder deletes the epochs (and heartbeats) of its scope older than
//! the [`KEPT_LEASE_EPOCHS`] before its own, oldest first, so the epochs that
//! exist are always a contiguous newest range. A fence whose own epoch is gone
//! was therefore overtaken, and fails like one that sees the next epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::layout::Layout;
use super::records::{
    self, LeaseClaim, LeaseHeartbeat, LeaseRecord, Manifest, ShardLayout, FORMAT_VERSION,
};
use super::{io, CheckpointStore};
use crate::error::{Error, ObjectKind, Result};

/// Attempts at taking an epoch when other contenders keep winning it.
const ACQUIRE_ATTEMPTS: u32 = 5;

/// Epochs of a scope kept below the current one, with their heartbeats, for
/// diagnosis (`tidemark status` shows the latest). Older ones are deleted
/// when a run takes the lease, so a pipeline's lease costs a bounded number
/// of objects however many runs it had.
pub const KEPT_LEASE_EPOCHS: u64 = 4;

/// The lease scope of a pipeline that is not sharded.
pub const PIPELINE_SCOPE: &str = "pipeline";

/// The longest lease time to live: a week. A dead run blocks its pipeline for
/// that long, and longer ones would overflow time arithmetic.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a lease is held.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// How long the lease stays held without a renewal. The holder renews it
    /// every third of this. A run that dies is taken over after at most this.
    pub ttl: Duration,
    /// Who holds it, for messages: host and process id by default.
    pub holder: String,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_string());
        LeaseOptions {
            ttl: Duration::from_secs(30),
            holder: format!("{host}:{}", std::process::id()),
        }
    }
}

/// What the store says about a lease scope.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseStatus {
    /// The highest epoch taken.
    pub record: LeaseRecord,
    /// Its latest heartbeat, if the holder wrote one.
    pub heartbeat: Option<LeaseHeartbeat>,
}

impl LeaseStatus {
    /// When the lease expires unless renewed.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.heartbeat
            .as_ref()
            .map_or(self.record.expires_at, |h| h.expires_at)
    }

    /// Whether the holder let go.
    pub fn released(&self) -> bool {
        self.heartbeat.as_ref().is_some_and(|h| h.released)
    }

    /// Whether a run holds the lease at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.released() && self.expires_at() > now
    }
}

/// A check that a lease epoch is still the newest. Writers carry one and
/// consult it before they begin, write a data file or seal.
#[derive(Clone)]
pub struct Fence {
    shared: Arc<Shared>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("claim", &self.shared.claim)
            .finish()
    }
}

struct Shared {
    store: CheckpointStore,
    claim: LeaseClaim,
    owner: Uuid,
    ttl: Duration,
    lost: AtomicBool,
}

impl Fence {
    /// The scope and epoch this fence protects.
    pub fn claim(&self) -> &LeaseClaim {
        &self.shared.claim
    }

    /// Fails with [`Error::Fenced`] if a newer epoch of the scope or a newer
    /// shard layout exists, or if this epoch was pruned (only newer holders
    /// prune). Three HEAD requests.
    pub async fn ensure_current(&self, operation: &'static str) -> Result<()> {
        let shared = &self.shared;
        let claim = &shared.claim;
        let store = shared.store.object_store();
        let layout = shared.store.layout();
        let own_epoch = layout.lease_epoch(&claim.scope, claim.epoch);
        let next_epoch = layout.lease_epoch(&claim.scope, claim.epoch + 1);
        let next_layout = layout.shard_layout(claim.layout + 1);
        let by = if shared.lost.load(Ordering::Relaxed) {
            Some("a newer run".to_string())
        } else if io::exists(store, &next_epoch).await? {
            let newer = latest_epoch(&shared.store, &claim.scope)
                .await?
                .unwrap_or(claim.epoch + 1);
            Some(format!("epoch {newer} of lease `{}`", claim.scope))
        } else if !io::exists(store, &own_epoch).await? {
            Some(format!(
                "a newer run of lease `{}` (it pruned epoch {})",
                claim.scope, claim.epoch
            ))
        } else if io::exists(store, &next_layout).await? {
            Some(match latest_layout(&shared.store).await? {
                Some(newer) => format!(
                    "a run with {} shard(s) (shard layout {})",
                    newer.shards, newer.layout
                ),
                None => format!("shard layout {}", claim.layout + 1),
            })
        } else {
            None
        };
        match by {
            Some(by) => {
                shared.lost.store(true, Ordering::Relaxed);
                Err(Error::Fenced {
                    scope: claim.scope.clone(),
                    epoch: claim.epoch,
                    by,
                    operation,
                })
            }
            None => Ok(()),
        }
    }
}

/// A held lease. Renewed in the background until [`release`](Self::release)
/// or drop; dropping without releasing leaves it to expire.
pub struct Lease {
    fence: Fence,
    holder: String,
    fenced_checkpoints: usize,
    renewer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("claim", self.fence.claim())
            .field("holder", &self.holder)
            .finish()
    }
}

impl Lease {
    /// Takes the lease `scope` of `store` for a run that splits the source
    /// into `shards` shards (1 when not sharded), and fences every unsealed
    /// checkpoint begun under an older epoch of the scope or an older shard
    /// layout (see the module documentation). Fails with
    /// [`Error::LeaseHeld`] if a live run holds the scope, and with
    /// [`Error::ShardLayoutInUse`] if a run of another shard count is live.
    pub async fn acquire(
        store: &CheckpointStore,
        scope: &str,
        shards: u32,
        options: LeaseOptions,
    ) -> Result<Self> {
        validate_scope(scope)?;
        if options.ttl.is_zero() || options.ttl > MAX_LEASE_TTL {
            return Err(Error::InvalidLeaseTtl {
                secs: options.ttl.as_secs(),
                max_secs: MAX_LEASE_TTL.as_secs(),
            });
        }
        let owner = store.new_id();
        let layout = join_layout(store, scope, shards.max(1), owner).await?;
        let claim = take_epoch(store, scope, layout, owner, &options).await?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            claim,
            owner,
            ttl: options.ttl,
            lost: AtomicBool::new(false),
        });
        write_heartbeat(&shared, false).await?;
        let fenced_checkpoints = fence_older_writers(store, &shared.claim, owner).await?;
        prune_old_epochs(store, &shared.claim).await;
        if fenced_checkpoints > 0 {
            tracing::warn!(
                scope,
                epoch = shared.claim.epoch,
                fenced_checkpoints,
                "sealed the unfinished checkpoints of earlier runs empty"
            );
        }
        let renewer = tokio::spawn(renew(shared.clone()));
        Ok(Lease {
            fence: Fence { shared },
            holder: options.holder,
            fenced_checkpoints,
            renewer: Some(renewer),
        })
    }

    /// The fence writers of this run carry.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Scope and epoch.
    pub fn claim(&self) -> &LeaseClaim {
        self.fence.claim()
    }

    /// Unfinished checkpoints of older epochs that taking the lease sealed empty.
    pub fn fenced_checkpoints(&self) -> usize {
        self.fenced_checkpoints
    }

    /// Stops renewing and lets the next run take over at once. Writes nothing
    /// if the lease was already taken over.
    pub async fn release(mut self) -> Result<()> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if self
            .fence
            .ensure_current("releasing the lease")
            .await
            .is_ok()
        {
            write_heartbeat(&self.fence.shared, true).await?;
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl CheckpointStore {
    /// The state of lease `scope`, or `None` if nobody ever took it.
    pub async fn lease_status(&self, scope: &str) -> Result<Option<LeaseStatus>> {
        validate_scope(scope)?;
        let Some(epoch) = latest_epoch(self, scope).await? else {
            return Ok(None);
        };
        read_status(self, scope, epoch).await.map(Some)
    }

    /// Every lease scope ever taken in this store.
    pub async fn lease_scopes(&self) -> Result<Vec<String>> {
        let root = self.layout().absolute("lease");
        let scopes: BTreeSet<String> = io::list(self.object_store(), &root)
            .await?
            .iter()
            .filter_map(|m| {
                let relative = self.layout().relative(&m.location);
                relative.split('/').nth(1).map(str::to_string)
            })
            .collect();
        Ok(scopes.into_iter().collect())
    }
}

fn validate_scope(scope: &str) -> Result<()> {
    if !scope.is_empty() && crate::redact::is_plain_name(scope) {
        Ok(())
    } else {
        Err(Error::InvalidLeaseScope {
            scope: scope.to_string(),
        })
    }
}

async fn latest_epoch(store: &CheckpointStore, scope: &str) -> Result<Option<u64>> {
    latest_number(store, &store.layout().lease_epochs_dir(scope)).await
}

/// The highest number of a series of numbered records (`{n:020}.json`)
/// under `dir`: lease epochs, shard layouts.
async fn latest_number(
    store: &CheckpointStore,
    dir: &object_store::path::Path,
) -> Result<Option<u64>> {
    let listed = io::list(store.object_store(), dir).await?;
    Ok(listed
        .iter()
        .filter_map(|m| Layout::generation_of(&m.location))
        .max())
}

/// Fails with [`Error::Fenced`] if `fence` is given and a newer run took
/// its lease over; writers and committers without a fence always pass.
pub(crate) async fn ensure_not_fenced(
    fence: Option<&Fence>,
    operation: &'static str,
) -> Result<()> {
    match fence {
        Some(fence) => fence.ensure_current(operation).await,
        None => Ok(()),
    }
}

async fn read_status(store: &CheckpointStore, scope: &str, epoch: u64) -> Result<LeaseStatus> {
    let layout = store.layout();
    let path = layout.lease_epoch(scope, epoch);
    let bytes = io::get(store.object_store(), &path).await?;
    let record: LeaseRecord = records::decode(ObjectKind::Lease, path.as_ref(), &bytes)?;
    let path = layout.lease_heartbeat(scope, epoch);
    let heartbeat = match io::get_optional(store.object_store(), &path).await? {
        Some(bytes) => Some(records::decode(
            ObjectKind::LeaseHeartbeat,
            path.as_ref(),
            &bytes,
        )?),
        None => None,
    };
    Ok(LeaseStatus { record, heartbeat })
}

/// Writes the next epoch's record unless a live holder has the current one.
async fn take_epoch(
    store: &CheckpointStore,
    scope: &str,
    layout: u64,
    owner: Uuid,
    options: &LeaseOptions,
) -> Result<LeaseClaim> {
    for _ in 0..ACQUIRE_ATTEMPTS {
        let current = latest_epoch(store, scope).await?;
        if let Some(epoch) = current {
            let status = read_status(store, scope, epoch).await?;
            if status.is_live(store.now()) {
                return Err(Error::LeaseHeld {
                    scope: scope.to_string(),
                    epoch,
                    expires_at: status.expires_at().to_rfc3339(),
                    holder: status.record.holder,
                });
            }
        }
        let claim = LeaseClaim {
            scope: scope.to_string(),
            epoch: current.unwrap_or(0) + 1,
            layout,
        };
        let now = store.now();
        let record = LeaseRecord {
            format_version: FORMAT_VERSION,
            claim: claim.clone(),
            owner,
            holder: options.holder.clone(),
            acquired_at: now,
            expires_at: now + options.ttl,
        };
        let path = store.layout().lease_epoch(scope, claim.epoch);
        let encoded = records::encode(ObjectKind::Lease, path.as_ref(), &record)?;
        let won = io::put_if_absent(store.object_store(), &path, encoded).await?
            // Taken: by us if a retried request landed twice, else by a contender.
            || read_status(store, scope, claim.epoch).await?.record.owner == owner;
        if !won {
            continue;
        }
        // A contender that stalled between reading the latest epoch and its
        // put can win an epoch that newer holders already pruned. A newer
        // epoch then exists: give the stale one back and look again.
        if latest_epoch(store, scope).await?.unwrap_or(0) > claim.epoch {
            io::delete(store.object_store(), &path).await?;
            continue;
        }
        return Ok(claim);
    }
    Err(Error::ConcurrentChange {
        operation: "taking the lease (other runs kept taking it first)",
        attempts: ACQUIRE_ATTEMPTS,
    })
}

/// Deletes the epochs of `claim`'s scope older than the
/// [`KEPT_LEASE_EPOCHS`] below it, each heartbeat before its epoch, oldest
/// first; stops at the first failure, so the epochs left are always the
/// newest, contiguous. Best effort: a failure is logged, the run goes on.
async fn prune_old_epochs(store: &CheckpointStore, claim: &LeaseClaim) {
    let Some(below) = claim.epoch.checked_sub(KEPT_LEASE_EPOCHS) else {
        return;
    };
    let layout = store.layout();
    let object_store = store.object_store();
    let numbers = |dir| async move {
        io::list(object_store, &dir).await.map(|listed| {
            let mut numbers: Vec<u64> = listed
                .iter()
                .filter_map(|m| Layout::generation_of(&m.location))
                .filter(|n| *n < below)
                .collect();
            numbers.sort_unstable();
            numbers
        })
    };
    let pruned = async {
        let heartbeats = numbers(layout.lease_heartbeats_dir(&claim.scope)).await?;
        let epochs = numbers(layout.lease_epochs_dir(&claim.scope)).await?;
        let mut doomed: Vec<object_store::path::Path> = heartbeats
            .iter()
            .filter(|n| !epochs.contains(n))
            .map(|n| layout.lease_heartbeat(&claim.scope, *n))
            .collect();
        for epoch in &epochs {
            doomed.push(layout.lease_heartbeat(&claim.scope, *epoch));
            doomed.push(layout.lease_epoch(&claim.scope, *epoch));
        }
        for path in &doomed {
            io::delete(object_store, path).await?;
        }
        Ok::<usize, Error>(epochs.len())
    };
    match pruned.await {
        Ok(0) => {}
        Ok(epochs) => tracing::debug!(scope = claim.scope, epochs, "pruned old lease epochs"),
        Err(error) => tracing::warn!(
            scope = claim.scope,
            %error,
            "pruning old lease epochs failed; the next run retries"
        ),
    }
}

/// The current shard layout, if any run ever recorded one.
async fn latest_layout(store: &CheckpointStore) -> Result<Option<ShardLayout>> {
    match latest_number(store, &store.layout().shard_layouts_dir()).await? {
        Some(latest) => read_layout(store, latest).await.map(Some),
        None => Ok(None),
    }
}

async fn read_layout(store: &CheckpointStore, number: u64) -> Result<ShardLayout> {
    let path = store.layout().shard_layout(number);
    let bytes = io::get(store.object_store(), &path).await?;
    let record: ShardLayout = records::decode(ObjectKind::ShardLayout, path.as_ref(), &bytes)?;
    if record.layout != number || record.shards == 0 {
        return Err(Error::corrupt(
            ObjectKind::ShardLayout,
            &path,
            format!(
                "it names layout {} of {} shard(s) but is stored as layout {number}",
                record.layout, record.shards
            ),
        ));
    }
    Ok(record)
}

/// The layout a run of `shards` shards works under: the current one if it
/// has that shard count, else a new one, written once no run of another
/// scope is live.
async fn join_layout(
    store: &CheckpointStore,
    scope: &str,
    shards: u32,
    owner: Uuid,
) -> Result<u64> {
    for _ in 0..ACQUIRE_ATTEMPTS {
        let current = latest_layout(store).await?;
        if let Some(current) = &current {
            if current.shards == shards {
                return Ok(current.layout);
            }
        }
        let now = store.now();
        for other in store.lease_scopes().await? {
            if other == scope {
                continue;
            }
            let Some(status) = store.lease_status(&other).await? else {
                continue;
            };
            if status.is_live(now) {
                // A run joins its layout before it takes its epoch, so the
                // live run's layout is written by now: it may be ours, written
                // after `current` was read (two shards starting together).
                let latest = latest_layout(store).await?;
                if let Some(latest) = &latest {
                    if latest.shards == shards {
                        return Ok(latest.layout);
                    }
                }
                return Err(Error::ShardLayoutInUse {
                    shards,
                    current_shards: latest.as_ref().map_or(1, |c| c.shards),
                    scope: other,
                    epoch: status.record.claim.epoch,
                    expires_at: status.expires_at().to_rfc3339(),
                    holder: status.record.holder,
                });
            }
        }
        let next = current.map_or(1, |c| c.layout + 1);
        let record = ShardLayout {
            format_version: FORMAT_VERSION,
            layout: next,
            shards,
            owner,
            created_at: now,
        };
        let path = store.layout().shard_layout(next);
        let encoded = records::encode(ObjectKind::ShardLayout, path.as_ref(), &record)?;
        if io::put_if_absent(store.object_store(), &path, encoded).await? {
            return Ok(next);
        }
        // Taken: by us if a retried request landed twice, else by a contender
        // (whose shard count the next round joins or replaces).
        if read_layout(store, next).await?.owner == owner {
            return Ok(next);
        }
    }
    Err(Error::ConcurrentChange {
        operation: "changing the shard layout (other runs kept changing it first)",
        attempts: ACQUIRE_ATTEMPTS,
    })
}

async fn write_heartbeat(shared: &Shared, released: bool) -> Result<()> {
    let now = shared.store.now();
    let heartbeat = LeaseHeartbeat {
        format_version: FORMAT_VERSION,
        claim: shared.claim.clone(),
        owner: shared.owner,
        renewed_at: now,
        expires_at: now + shared.ttl,
        released,
    };
    let path = shared
        .store
        .layout()
        .lease_heartbeat(&shared.claim.scope, shared.claim.epoch);
    let encoded = records::encode(ObjectKind::LeaseHeartbeat, path.as_ref(), &heartbeat)?;
    io::put(shared.store.object_store(), &path, encoded).await
}

/// Renews the heartbeat every third of the ttl until the lease is taken over.
async fn renew(shared: Arc<Shared>) {
    let fence = Fence {
        shared: shared.clone(),
    };
    loop {
        tokio::time::sleep(shared.ttl / 3).await;
        match fence.ensure_current("renewing the lease").await {
            Err(Error::Fenced { by, .. }) => {
                tracing::error!(
                    scope = shared.claim.scope,
                    epoch = shared.claim.epoch,
                    by,
                    "lease taken over by a newer run; this run will fail before sealing"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "checking the lease failed; retrying"),
            Ok(()) => {
                if let Err(e) = write_heartbeat(&shared, false).await {
                    tracing::warn!(error = %e, "renewing the lease failed; retrying");
                }
            }
        }
    }
}

/// Seals empty every unsealed checkpoint whose writer began it under an older
/// epoch of `claim`'s scope, or under an older shard layout in any scope.
/// Returns how many it sealed.
async fn fence_older_writers(
    store: &CheckpointStore,
    claim: &LeaseClaim,
    owner: Uuid,
) -> Result<usize> {
    let mut fenced = 0;
    for unsealed in store.unsealed_checkpoints().await? {
        let begun_at = unsealed
            .begun
            .iter()
            .filter(|marker| {
                marker.lease.as_ref().is_some_and(|l| {
                    (l.scope == claim.scope && l.epoch < claim.epoch) || l.layout < claim.layout
                })
            })
            .map(|marker| marker.begun_at)
            .min();
        let Some(begun_at) = begun_at else {
            continue;
        };
        let abandoned = store
            .read_in_flight(&unsealed.in_flight)
            .await?
            .into_iter()
            .map(|record| record.path)
            .collect();
        let tombstone = Manifest {
            format_version: FORMAT_VERSION,
            checkpoint_id: unsealed.id,
            writer_id: owner,
            begun_at,
            sealed_at: store.now(),
            key_files: Vec::new(),
            files: Vec::new(),
            abandoned_writes: abandoned,
            properties: BTreeMap::new(),
            fenced_by: Some(claim.clone()),
            finished_units: Vec::new(),
        };
        let path = store.layout().sealed(unsealed.id);
        let encoded = records::encode(ObjectKind::Manifest, path.as_ref(), &tombstone)?;
        if io::put_if_absent(store.object_store(), &path, encoded).await? {
            fenced += 1;
        }
    }
    Ok(fenced)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    fn status(expires_at: i64, heartbeat: Option<(i64, bool)>) -> LeaseStatus {
        let claim = LeaseClaim {
            scope: PIPELINE_SCOPE.to_string(),
            epoch: 1,
            layout: 1,
        };
        let owner = Uuid::nil();
        LeaseStatus {
            record: LeaseRecord {
                format_version: FORMAT_VERSION,
                claim: claim.clone(),
                owner,
                holder: "host:1".to_string(),
                acquired_at: at(0),
                expires_at: at(expires_at),
            },
            heartbeat: heartbeat.map(|(expires_at, released)| LeaseHeartbeat {
                format_version: FORMAT_VERSION,
                claim,
                owner,
                renewed_at: at(1),
                expires_at: at(expires_at),
                released,
            }),
        }
    }

    #[test]
    fn a_lease_is_live_until_the_instant_it_expires() {
        let taken = status(30, None);
        assert!(taken.is_live(at(29)));
        assert!(!taken.is_live(at(30)), "expired at its expiry instant");
        assert!(!taken.is_live(at(31)));
        assert_eq!(taken.expires_at(), at(30));
    }

    #[test]
    fn a_heartbeat_moves_the_expiry_and_a_release_ends_the_lease() {
        let renewed = status(30, Some((60, false)));
        assert_eq!(renewed.expires_at(), at(60));
        assert!(renewed.is_live(at(45)), "renewed past the record's expiry");
        assert!(!renewed.is_live(at(60)));
        let released = status(30, Some((60, true)));
        assert!(released.released());
        assert!(!released.is_live(at(10)), "released before it expired");
        assert!(!status(30, None).released());
    }
}
