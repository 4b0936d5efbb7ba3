//! Unsealed checkpoints: what writers began and nobody sealed, read from
//! `staging/`. Lease takeovers fence them; `status` lists them; garbage
//! collection reads the in-flight records of sealed ones.

use std::collections::{BTreeMap, BTreeSet};

use object_store::path::Path;

use super::layout::Layout;
use super::records::{self, BeginMarker, CheckpointId, InFlightRecord};
use super::{io, CheckpointStore};
use crate::error::{ObjectKind, Result};

/// A checkpoint with staged objects and no seal.
#[derive(Debug, Clone)]
pub(crate) struct Unsealed {
    /// The checkpoint.
    pub(crate) id: CheckpointId,
    /// The begin markers of its writers.
    pub(crate) begun: Vec<BeginMarker>,
    /// Where its writers' in-flight records are (not read).
    pub(crate) in_flight: Vec<Path>,
}

impl CheckpointStore {
    /// Every checkpoint that has staged objects but is neither sealed nor
    /// compacted. Costs a LIST of `staging/` and of `sealed/`, the current
    /// index, and one GET per begin marker of an unsealed checkpoint.
    pub(crate) async fn unsealed_checkpoints(&self) -> Result<Vec<Unsealed>> {
        let store = self.object_store();
        let layout = self.layout();
        let mut staged: BTreeMap<CheckpointId, Vec<Path>> = BTreeMap::new();
        for meta in io::list(store, &layout.staging_dir()).await? {
            if let Some((id, _)) = layout.staged_owner(&meta.location) {
                staged.entry(id).or_default().push(meta.location);
            }
        }
        let mut finished: BTreeSet<CheckpointId> = io::list(store, &layout.sealed_dir())
            .await?
            .iter()
            .filter_map(|m| Layout::id_of_marker(&m.location))
            .collect();
        if let Some(index) = self.current_index().await? {
            finished.extend(index.checkpoints.iter().copied());
        }
        let mut unsealed = Vec::new();
        for (id, paths) in staged {
            if finished.contains(&id) {
                continue;
            }
            let mut entry = Unsealed {
                id,
                begun: Vec::new(),
                in_flight: Vec::new(),
            };
            for path in paths {
                if path.filename() == Some("begun.json") {
                    let bytes = io::get(store, &path).await?;
                    entry.begun.push(records::decode(
                        ObjectKind::BeginMarker,
                        path.as_ref(),
                        &bytes,
                    )?);
                } else if is_in_flight_record(&path) {
                    entry.in_flight.push(path);
                }
            }
            unsealed.push(entry);
        }
        Ok(unsealed)
    }

    /// Reads in-flight records, one GET each.
    pub(crate) async fn read_in_flight(&self, paths: &[Path]) -> Result<Vec<InFlightRecord>> {
        let mut read = Vec::with_capacity(paths.len());
        for path in paths {
            let bytes = io::get(self.object_store(), path).await?;
            read.push(records::decode(
                ObjectKind::InFlightRecord,
                path.as_ref(),
                &bytes,
            )?);
        }
        Ok(read)
    }

    /// The in-flight records of every writer of checkpoint `id`.
    pub(crate) async fn in_flight_records_of(
        &self,
        id: CheckpointId,
    ) -> Result<Vec<InFlightRecord>> {
        let paths: Vec<Path> = io::list(self.object_store(), &self.layout().staging_of(id))
            .await?
            .into_iter()
            .map(|m| m.location)
            .filter(is_in_flight_record)
            .collect();
        self.read_in_flight(&paths).await
    }
}

/// Whether a staged object is an in-flight record (`.../inflight/{n}.json`).
fn is_in_flight_record(path: &Path) -> bool {
    let parts: Vec<_> = path.parts().collect();
    parts.len() >= 2 && parts[parts.len() - 2].as_ref() == "inflight"
}
