//! Table states the user accepted although they lost commits of the
//! pipeline (`accepted/{marker}.json`), so that later runs go on without
//! being told again.

use super::records::{self, AcceptanceRecord};
use super::{io, CheckpointStore};
use crate::error::{ObjectKind, Result};

impl CheckpointStore {
    /// Records that the table whose marker is `record.marker` was accepted
    /// as it is. A later acceptance of the same marker replaces it.
    pub async fn record_acceptance(&self, record: &AcceptanceRecord) -> Result<()> {
        let path = self.layout().acceptance(record.marker);
        let encoded = records::encode(ObjectKind::Acceptance, path.as_ref(), record)?;
        io::put(self.object_store(), &path, encoded).await
    }

    /// The acceptance of the table state whose marker is `marker`, if one
    /// was recorded.
    pub async fn acceptance(&self, marker: u64) -> Result<Option<AcceptanceRecord>> {
        let path = self.layout().acceptance(marker);
        match io::get_optional(self.object_store(), &path).await? {
            Some(bytes) => Ok(Some(records::decode(
                ObjectKind::Acceptance,
                path.as_ref(),
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    /// Deletes the acceptance of the table state whose marker is `marker`
    /// (there may be none).
    pub async fn remove_acceptance(&self, marker: u64) -> Result<()> {
        io::delete(self.object_store(), &self.layout().acceptance(marker)).await
    }

    /// Deletes the acceptances of markers below `sequence`: once commit
    /// `sequence` is in the table, its marker has moved past them. Returns
    /// how many it deleted.
    pub(crate) async fn prune_acceptances_below(&self, sequence: u64) -> Result<usize> {
        let store = self.object_store();
        let mut pruned = 0;
        for meta in io::list(store, &self.layout().acceptances_dir()).await? {
            let marker = meta
                .location
                .filename()
                .and_then(|name| name.strip_suffix(".json"))
                .and_then(|number| number.parse::<u64>().ok());
            if marker.is_some_and(|m| m < sequence) {
                io::delete(store, &meta.location).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}
