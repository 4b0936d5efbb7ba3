//! Commit intents: the numbered list of table commits a store has started.
//!
//! The committer writes `commits/{sequence}.json` before it asks the sink to
//! commit, so every attempt at that commit carries the same checkpoints under the
//! same number. Finding the latest intent is one LIST of `commits/` plus one GET.

use std::collections::BTreeSet;

use super::layout::Layout;
use super::records::{self, CheckpointId, CommitIntent};
use super::{io, CheckpointState, CheckpointStore};
use crate::error::{Error, ObjectKind, Result};

impl CheckpointStore {
    /// The commit intent with the highest sequence, if any commit was ever started.
    pub async fn latest_commit_intent(&self) -> Result<Option<CommitIntent>> {
        let listed = io::list(self.object_store(), &self.layout().commit_intents_dir()).await?;
        let latest = listed
            .iter()
            .filter_map(|meta| Layout::sequence_of(&meta.location))
            .max();
        match latest {
            Some(sequence) => self.commit_intent(sequence).await,
            None => Ok(None),
        }
    }

    /// The latest commit sequence whose checkpoints are marked committed, if
    /// any: `latest` (the latest intent) once its first checkpoint is
    /// marked, else the one before it (marks follow the table commit, and a
    /// new intent follows the marks of the one before).
    pub async fn committed_sequence_of(&self, latest: &CommitIntent) -> Result<Option<u64>> {
        let committed = match latest.checkpoints.first() {
            Some(id) => self.checkpoint_state(*id).await? == CheckpointState::Committed,
            None => false,
        };
        Ok(if committed {
            Some(latest.sequence)
        } else {
            latest.sequence.checked_sub(1).filter(|s| *s > 0)
        })
    }

    /// [`Self::committed_sequence_of`] the latest commit intent.
    pub async fn committed_sequence(&self) -> Result<Option<u64>> {
        match self.latest_commit_intent().await? {
            Some(latest) => self.committed_sequence_of(&latest).await,
            None => Ok(None),
        }
    }

    /// The checkpoints that the `count` latest commit intents carry.
    pub(crate) async fn checkpoints_of_latest_commits(
        &self,
        count: u64,
    ) -> Result<BTreeSet<CheckpointId>> {
        let mut carried = BTreeSet::new();
        let Some(latest) = self.latest_commit_intent().await? else {
            return Ok(carried);
        };
        let first = latest
            .sequence
            .saturating_sub(count.saturating_sub(1))
            .max(1);
        carried.extend(latest.checkpoints);
        for sequence in first..latest.sequence {
            if let Some(intent) = self.commit_intent(sequence).await? {
                carried.extend(intent.checkpoints);
            }
        }
        Ok(carried)
    }

    /// The commit intent numbered `sequence`, if it exists.
    pub async fn commit_intent(&self, sequence: u64) -> Result<Option<CommitIntent>> {
        let path = self.layout().commit_intent(sequence);
        match io::get_optional(self.object_store(), &path).await? {
            Some(bytes) => {
                let intent: CommitIntent =
                    records::decode(ObjectKind::CommitIntent, path.as_ref(), &bytes)?;
                if intent.sequence != sequence || sequence == 0 {
                    return Err(Error::corrupt(
                        ObjectKind::CommitIntent,
                        &path,
                        format!(
                            "it names sequence {} but is stored as {sequence}; sequences start at 1",
                            intent.sequence
                        ),
                    ));
                }
                Ok(Some(intent))
            }
            None => Ok(None),
        }
    }

    /// Writes a commit intent unless one with the same sequence exists. Returns
    /// `false` if another committer claimed the sequence first.
    pub async fn put_commit_intent(&self, intent: &CommitIntent) -> Result<bool> {
        let path = self.layout().commit_intent(intent.sequence);
        let encoded = records::encode(ObjectKind::CommitIntent, path.as_ref(), intent)?;
        io::put_if_absent(self.object_store(), &path, encoded).await
    }
}
