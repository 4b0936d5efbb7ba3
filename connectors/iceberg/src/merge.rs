//! Merging the data manifests of a table's current snapshot, so that a table
//! appended to once per run does not carry one more manifest per commit
//! forever (each commit writes a manifest list naming all of them).
//!
//! iceberg-rust 0.10 has no merge append, and no action can be added to its
//! transactions from outside the crate. What it offers is enough: its fast
//! append builds the new snapshot's manifest list from the manifest list of
//! the base table's current snapshot, and the sink hands the transaction that
//! base itself (see `PinnedCatalog`). [`with_merged_manifests`] returns the
//! table, in memory only, with its current snapshot's manifest list replaced
//! by one where the live entries of each partition spec's data manifests are
//! written into one manifest, as existing entries that keep their snapshot
//! ids and sequence numbers. The append then names the merged manifest and
//! its own; the snapshot in the catalog is not changed, and the commit still
//! requires the main branch to point at it, so nothing committed since can be
//! left out. Files of a commit that fails stay unreferenced, as those of any
//! failed Iceberg commit do.
//!
//! Table properties, as Java's merge append reads them:
//! `commit.manifest-merge.enabled` (default true) and
//! `commit.manifest.min-count-to-merge` (default 100): the data manifests are
//! merged once there are at least that many; and
//! `commit.manifest.target-size-bytes` (default 8 MiB): a manifest of that
//! size or more is left as it is, so that a large merged manifest is not
//! written again at every merge. Only format version 2 tables are merged.

use std::collections::BTreeMap;

use iceberg::spec::{
    FormatVersion, ManifestContentType, ManifestFile, ManifestListWriter, ManifestWriterBuilder,
    TableMetadata,
};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind, Result, Runtime};
use uuid::Uuid;

/// Whether manifests are merged at all.
pub(crate) const MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
/// Data manifests a snapshot holds before they are merged.
pub(crate) const MIN_COUNT_TO_MERGE: &str = "commit.manifest.min-count-to-merge";
/// The default of [`MIN_COUNT_TO_MERGE`].
const MIN_COUNT_TO_MERGE_DEFAULT: usize = 100;
/// Manifests this large or larger are not merged.
pub(crate) const TARGET_SIZE_BYTES: &str = "commit.manifest.target-size-bytes";
/// The default of [`TARGET_SIZE_BYTES`]: 8 MiB.
const TARGET_SIZE_BYTES_DEFAULT: i64 = 8 << 20;

/// `table` with its current snapshot's data manifests merged (in memory: its
/// metadata names a new manifest list), or `None` when the table's
/// properties or its manifest count call for no merge.
pub(crate) async fn with_merged_manifests(table: &Table) -> Result<Option<Table>> {
    let metadata = table.metadata();
    if metadata.format_version() != FormatVersion::V2 {
        return Ok(None);
    }
    let properties = metadata.properties();
    if properties
        .get(MERGE_ENABLED)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return Ok(None);
    }
    let min_count = usize::try_from(number_property(
        metadata,
        MIN_COUNT_TO_MERGE,
        MIN_COUNT_TO_MERGE_DEFAULT as i64,
    )?)
    .unwrap_or(usize::MAX)
    .max(2);
    let target_size = number_property(metadata, TARGET_SIZE_BYTES, TARGET_SIZE_BYTES_DEFAULT)?;
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(None);
    };
    let list = table.manifest_list_reader(snapshot).load().await?;
    let mut by_spec: BTreeMap<i32, Vec<&ManifestFile>> = BTreeMap::new();
    let mut kept = Vec::new();
    for manifest in list.entries() {
        if manifest.content == ManifestContentType::Data && manifest.manifest_length < target_size {
            by_spec
                .entry(manifest.partition_spec_id)
                .or_default()
                .push(manifest);
        } else {
            kept.push(manifest.clone());
        }
    }
    let data_manifests: usize = by_spec.values().map(Vec::len).sum();
    if data_manifests < min_count {
        return Ok(None);
    }

    let file_io = table.file_io();
    let schema = metadata.current_schema().clone();
    let mut manifests = Vec::new();
    for (spec_id, group) in by_spec {
        if group.len() == 1 {
            manifests.extend(group.into_iter().cloned());
            continue;
        }
        let spec = metadata.partition_spec_by_id(spec_id).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("a manifest names partition spec {spec_id}, which the table lacks"),
            )
        })?;
        let path = format!(
            "{}/metadata/{}-merged-m0.avro",
            metadata.location(),
            Uuid::now_v7()
        );
        let mut writer = ManifestWriterBuilder::new(
            file_io.new_output(&path)?,
            Some(snapshot.snapshot_id()),
            schema.clone(),
            spec.as_ref().clone(),
        )
        .build_v2_data();
        for manifest in group {
            for entry in manifest.load_manifest(file_io).await?.entries() {
                if !entry.is_alive() {
                    continue;
                }
                let (Some(snapshot_id), Some(sequence_number)) =
                    (entry.snapshot_id(), entry.sequence_number())
                else {
                    return Err(Error::new(
                        ErrorKind::DataInvalid,
                        format!(
                            "an entry of manifest {} has no snapshot id or sequence number",
                            manifest.manifest_path
                        ),
                    ));
                };
                writer.add_existing_file(
                    entry.data_file().clone(),
                    snapshot_id,
                    sequence_number,
                    entry.file_sequence_number,
                )?;
            }
        }
        manifests.push(writer.write_manifest_file().await?);
    }
    manifests.extend(kept);

    let list_path = format!(
        "{}/metadata/snap-{}-merged-{}.avro",
        metadata.location(),
        snapshot.snapshot_id(),
        Uuid::now_v7()
    );
    let mut list_writer = ManifestListWriter::v2(
        file_io.new_output(&list_path)?.writer().await?,
        snapshot.snapshot_id(),
        snapshot.parent_snapshot_id(),
        snapshot.sequence_number(),
    );
    list_writer.add_manifests(manifests.into_iter())?;
    list_writer.close().await?;

    let metadata = naming_manifest_list(metadata, snapshot.snapshot_id(), &list_path)?;
    let mut builder = Table::builder()
        .file_io(file_io.clone())
        .metadata(metadata)
        .identifier(table.identifier().clone())
        .runtime(Runtime::try_current()?);
    if let Some(location) = table.metadata_location() {
        builder = builder.metadata_location(location);
    }
    builder.build().map(Some)
}

/// The table property `name` as a number, `default` when unset.
fn number_property(metadata: &TableMetadata, name: &str, default: i64) -> Result<i64> {
    match metadata.properties().get(name) {
        Some(value) => value.parse::<i64>().map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("table property {name}={value:?} is not a number"),
            )
            .with_source(e)
        }),
        None => Ok(default),
    }
}

/// `metadata` with snapshot `snapshot_id` naming `manifest_list`, through the
/// metadata's own JSON form (the only way to change a snapshot in place).
fn naming_manifest_list(
    metadata: &TableMetadata,
    snapshot_id: i64,
    manifest_list: &str,
) -> Result<TableMetadata> {
    let json_error = |e: serde_json::Error| {
        Error::new(ErrorKind::Unexpected, "rewriting table metadata").with_source(e)
    };
    let mut json = serde_json::to_value(metadata).map_err(json_error)?;
    let snapshot = json
        .get_mut("snapshots")
        .and_then(|s| s.as_array_mut())
        .and_then(|snapshots| {
            snapshots
                .iter_mut()
                .find(|s| s.get("snapshot-id").and_then(|id| id.as_i64()) == Some(snapshot_id))
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("snapshot {snapshot_id} is not in the table's metadata"),
            )
        })?;
    snapshot["manifest-list"] = serde_json::Value::String(manifest_list.to_string());
    serde_json::from_value(json).map_err(json_error)
}
