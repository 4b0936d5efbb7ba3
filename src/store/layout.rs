//! Where each object of a checkpoint store lives, relative to the store's root.
//!
//! ```text
//! tidemark.json                                   descriptor: format version, key schema
//! staging/{checkpoint}/{writer}/begun.json        a writer began this checkpoint
//! staging/{checkpoint}/{writer}/keys/{n}.parquet  staged keys (invisible until sealed)
//! staging/{checkpoint}/{writer}/inflight/{n}.json data files about to be written
//! sealed/{checkpoint}.json                        the seal: manifest of keys and files
//! committed/{checkpoint}.json                     the files are in the table
//! index/{generation}.json                         compacted index of committed checkpoints
//! index-keys/{generation}-{run}/{n}.parquet       sorted key runs of the index
//! commits/{sequence}.json                         commit intents: which checkpoints
//!                                                 the table commit `sequence` carries
//! lease/{scope}/epochs/{epoch}.json               who took the lease at each epoch
//! lease/{scope}/heartbeats/{epoch}.json           the holder's latest renewal
//! collected/{checkpoint}.json                     orphan data files deleted by gc
//! accepted/{marker}.json                          a table state that lost commits,
//!                                                 accepted by the user
//! forgotten/{sequence}.json                       a lost commit whose keys are
//!                                                 forgotten, to reprocess its rows
//! reprocessed/{sequence}.json                     a forgotten commit whose rows a
//!                                                 later commit carried anew
//! ```

use object_store::path::Path;
use uuid::Uuid;

use super::records::CheckpointId;

/// Computes object paths below a store root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: Path,
}

impl Layout {
    pub(crate) fn new(root: Path) -> Self {
        Layout { root }
    }

    fn join(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.root.clone(), |path, part| path.join(*part))
    }

    pub(crate) fn descriptor(&self) -> Path {
        self.join(&["tidemark.json"])
    }

    pub(crate) fn staging_of(&self, id: CheckpointId) -> Path {
        self.join(&["staging", &id.to_string()])
    }

    pub(crate) fn begin_marker(&self, id: CheckpointId, writer: Uuid) -> Path {
        self.join(&[
            "staging",
            &id.to_string(),
            &writer.to_string(),
            "begun.json",
        ])
    }

    pub(crate) fn staged_key_file(&self, id: CheckpointId, writer: Uuid, n: usize) -> Path {
        self.join(&[
            "staging",
            &id.to_string(),
            &writer.to_string(),
            "keys",
            &format!("{n:08}.parquet"),
        ])
    }

    pub(crate) fn in_flight(&self, id: CheckpointId, writer: Uuid, record: Uuid) -> Path {
        self.join(&[
            "staging",
            &id.to_string(),
            &writer.to_string(),
            "inflight",
            &format!("{record}.json"),
        ])
    }

    pub(crate) fn sealed_dir(&self) -> Path {
        self.join(&["sealed"])
    }

    pub(crate) fn sealed(&self, id: CheckpointId) -> Path {
        self.join(&["sealed", &format!("{id}.json")])
    }

    pub(crate) fn committed_dir(&self) -> Path {
        self.join(&["committed"])
    }

    pub(crate) fn committed(&self, id: CheckpointId) -> Path {
        self.join(&["committed", &format!("{id}.json")])
    }

    pub(crate) fn index_dir(&self) -> Path {
        self.join(&["index"])
    }

    pub(crate) fn index(&self, generation: u64) -> Path {
        self.join(&["index", &format!("{generation:020}.json")])
    }

    pub(crate) fn index_key_file(&self, generation: u64, run: Uuid, n: usize) -> Path {
        self.join(&[
            "index-keys",
            &format!("{generation:020}-{run}"),
            &format!("{n:08}.parquet"),
        ])
    }

    pub(crate) fn index_keys_dir(&self) -> Path {
        self.join(&["index-keys"])
    }

    /// The generation that wrote an `index-keys/{generation}-{run}/...` file.
    pub(crate) fn generation_of_index_key_file(path: &Path) -> Option<u64> {
        let parts: Vec<_> = path.parts().collect();
        let dir = parts.get(parts.len().checked_sub(2)?)?;
        dir.as_ref().split_once('-')?.0.parse().ok()
    }

    pub(crate) fn commit_intents_dir(&self) -> Path {
        self.join(&["commits"])
    }

    pub(crate) fn commit_intent(&self, sequence: u64) -> Path {
        self.join(&["commits", &format!("{sequence:020}.json")])
    }

    /// The sequence of a `commits/` entry, if it is one.
    pub(crate) fn sequence_of(path: &Path) -> Option<u64> {
        path.filename()?.strip_suffix(".json")?.parse().ok()
    }

    pub(crate) fn staging_dir(&self) -> Path {
        self.join(&["staging"])
    }

    pub(crate) fn lease_epochs_dir(&self, scope: &str) -> Path {
        self.join(&["lease", scope, "epochs"])
    }

    pub(crate) fn lease_epoch(&self, scope: &str, epoch: u64) -> Path {
        self.join(&["lease", scope, "epochs", &format!("{epoch:020}.json")])
    }

    pub(crate) fn shard_layouts_dir(&self) -> Path {
        self.join(&["layouts"])
    }

    pub(crate) fn shard_layout(&self, layout: u64) -> Path {
        self.join(&["layouts", &format!("{layout:020}.json")])
    }

    pub(crate) fn lease_heartbeats_dir(&self, scope: &str) -> Path {
        self.join(&["lease", scope, "heartbeats"])
    }

    pub(crate) fn lease_heartbeat(&self, scope: &str, epoch: u64) -> Path {
        self.join(&["lease", scope, "heartbeats", &format!("{epoch:020}.json")])
    }

    pub(crate) fn collected(&self, id: CheckpointId) -> Path {
        self.join(&["collected", &format!("{id}.json")])
    }

    pub(crate) fn forgotten_dir(&self) -> Path {
        self.join(&["forgotten"])
    }

    /// Read back with [`Layout::sequence_of`].
    pub(crate) fn forgotten(&self, sequence: u64) -> Path {
        self.join(&["forgotten", &format!("{sequence:020}.json")])
    }

    pub(crate) fn reprocessed_dir(&self) -> Path {
        self.join(&["reprocessed"])
    }

    /// Read back with [`Layout::sequence_of`].
    pub(crate) fn reprocessed(&self, sequence: u64) -> Path {
        self.join(&["reprocessed", &format!("{sequence:020}.json")])
    }

    pub(crate) fn acceptances_dir(&self) -> Path {
        self.join(&["accepted"])
    }

    pub(crate) fn acceptance(&self, marker: u64) -> Path {
        self.join(&["accepted", &format!("{marker:020}.json")])
    }

    /// The checkpoint and writer of a `staging/{checkpoint}/{writer}/...` object.
    pub(crate) fn staged_owner(&self, path: &Path) -> Option<(CheckpointId, Uuid)> {
        let mut parts = path.prefix_match(&self.root)?;
        if parts.next()?.as_ref() != "staging" {
            return None;
        }
        let id = parts.next()?.as_ref().parse::<Uuid>().ok()?;
        let writer = parts.next()?.as_ref().parse::<Uuid>().ok()?;
        Some((CheckpointId::from(id), writer))
    }

    /// The path below the root, as stored in manifests.
    pub(crate) fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    /// The full path of a path stored relative to the root.
    pub(crate) fn absolute(&self, relative: &str) -> Path {
        self.join(
            &relative
                .split('/')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>(),
        )
    }

    /// The checkpoint id of a `sealed/` or `committed/` entry, if it is one.
    pub(crate) fn id_of_marker(path: &Path) -> Option<CheckpointId> {
        let name = path.filename()?;
        name.strip_suffix(".json")?.parse().ok()
    }

    /// The generation of an `index/` entry, if it is one.
    pub(crate) fn generation_of(path: &Path) -> Option<u64> {
        path.filename()?.strip_suffix(".json")?.parse().ok()
    }
}
