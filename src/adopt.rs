//! Adopting a table that already holds rows: its key column is recorded as
//! processed, so a pipeline started on a table written before (or by another
//! tool) does not process those rows again. See [`crate::pipeline::Pipeline::adopt`].

use arrow_array::RecordBatch;
use arrow_select::concat::concat_batches;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::source::Source;
use crate::store::{CheckpointId, CheckpointStore, Fence};

/// Keys gathered before one key file is written: the memory adoption holds
/// at once is this many keys, whatever the table's size.
pub const ADOPT_KEYS_PER_FILE: usize = 1 << 20;

/// Reads the key columns of every unit of `table` and stages them in one new
/// checkpoint of `store` (writing under `fence`), a key file per
/// [`ADOPT_KEYS_PER_FILE`] keys, then seals it with no data files. Returns
/// the checkpoint and the keys staged. The checkpoint still needs its
/// (empty) commit.
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
    let mut buffered: Vec<RecordBatch> = Vec::new();
    let mut buffered_rows = 0;
    let mut staged = 0;
    for unit in 0..table.units().len() {
        let mut batches = table.read_unit(unit, Some(names.clone())).await?;
        while let Some(batch) = batches.try_next().await? {
            buffered_rows += batch.num_rows();
            buffered.push(batch);
            if buffered_rows >= ADOPT_KEYS_PER_FILE {
                staged += stage(&mut writer, &mut buffered).await?;
                buffered_rows = 0;
            }
        }
    }
    staged += stage(&mut writer, &mut buffered).await?;
    let sealed = writer.seal().await?;
    Ok((sealed.checkpoint_id, staged))
}

/// Stages the buffered key batches as one key file and empties the buffer.
async fn stage(
    writer: &mut crate::store::CheckpointWriter,
    buffered: &mut Vec<RecordBatch>,
) -> Result<u64> {
    let Some(first) = buffered.first() else {
        return Ok(0);
    };
    let batch =
        concat_batches(&first.schema(), buffered.iter()).map_err(|source| Error::Arrow {
            context: "gathering the table's keys",
            source,
        })?;
    buffered.clear();
    writer.stage_keys(batch.columns()).await
}
