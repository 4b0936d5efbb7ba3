//! Adopting a table that already holds rows: its key column is recorded as
//! processed, so a pipeline started on a table written before (or by another
//! tool) does not process those rows again. See [`crate::pipeline::Pipeline::adopt`].

use futures::TryStreamExt;

use crate::error::Result;
use crate::source::Source;
use crate::store::{CheckpointId, CheckpointStore, Fence};

/// Reads the key columns of every unit of `table` and stages them in one new
/// checkpoint of `store` (writing under `fence`), a key file per
/// [`KEY_FILE_ROWS`](crate::store::KEY_FILE_ROWS) keys (the writer's own
/// buffering: the memory adoption holds at once, whatever the table's size),
/// then seals it with no data files. Returns the checkpoint and the keys
/// staged. The checkpoint still needs its (empty) commit.
pub async fn stage_table_keys(
    store: &CheckpointStore,
    fence: Fence,
    table: &dyn Source,
    table_name: &str,
) -> Result<(CheckpointId, u64)> {
    let names: Vec<String> = store
        .key_schema()
        .columns()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut writer = store.begin_fenced(fence).await?;
    writer.set_property("tidemark.adopted-from", table_name.to_string());
    for unit in 0..table.units().len() {
        let mut batches = table.read_unit(unit, Some(names.clone())).await?;
        while let Some(batch) = batches.try_next().await? {
            writer.buffer_keys(batch.columns()).await?;
        }
    }
    let staged = writer.staged_key_count();
    let sealed = writer.seal().await?;
    Ok((sealed.checkpoint_id, staged))
}
