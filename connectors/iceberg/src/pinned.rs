//! A catalog that answers a load of one table with the table as the sink last
//! read it, so that a commit cannot rebase past what the sink checked.
//!
//! iceberg's `Transaction::commit` loads the table again when it commits and
//! builds the append on whatever it finds; the append then requires, at the
//! catalog, that the main branch still points at that snapshot. Seen through
//! [`PinnedCatalog`], that reload returns the table whose marker the sink
//! read, so the requirement names the snapshot the marker was read from: if
//! anything committed since (another committer of the same pipeline landing
//! the same files, or any other writer), the catalog refuses the commit as a
//! conflict, and the sink reads the marker again before another attempt.
//! Every other call goes to the catalog unchanged.

use std::collections::HashMap;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{Catalog, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent};

/// `inner`, except that a load of `table`'s identifier returns `table`.
pub(crate) struct PinnedCatalog<'a> {
    inner: &'a dyn Catalog,
    table: Table,
}

impl<'a> PinnedCatalog<'a> {
    /// `inner` with `table` pinned at the metadata it was loaded with.
    pub(crate) fn new(inner: &'a dyn Catalog, table: Table) -> Self {
        PinnedCatalog { inner, table }
    }
}

impl std::fmt::Debug for PinnedCatalog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCatalog")
            .field("table", self.table.identifier())
            .field("metadata_location", &self.table.metadata_location())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Catalog for PinnedCatalog<'_> {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        if table == self.table.identifier() {
            return Ok(self.table.clone());
        }
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.inner.update_table(commit).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;
    use std::sync::Arc;

    use iceberg::io::LocalFsStorageFactory;
    use iceberg::memory::{MemoryCatalogBuilder, MEMORY_CATALOG_WAREHOUSE};
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    use iceberg::CatalogBuilder;

    use super::*;

    async fn memory_catalog(dir: &Path) -> impl Catalog {
        MemoryCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(
                "pins",
                HashMap::from([(
                    MEMORY_CATALOG_WAREHOUSE.to_string(),
                    format!("file://{}", dir.display()),
                )]),
            )
            .await
            .unwrap()
    }

    fn creation(name: &str) -> TableCreation {
        let schema = Schema::builder()
            .with_fields(vec![NestedField::required(
                1,
                "id",
                Type::Primitive(PrimitiveType::Long),
            )
            .into()])
            .build()
            .unwrap();
        TableCreation::builder()
            .name(name.into())
            .schema(schema)
            .build()
    }

    /// `table` with property `key` set, committed through `catalog`.
    async fn with_property(catalog: &dyn Catalog, table: &Table, key: &str) -> Table {
        let tx = Transaction::new(table);
        let tx = tx
            .update_table_properties()
            .set(key.into(), "set".into())
            .apply(tx)
            .unwrap();
        tx.commit(catalog).await.unwrap()
    }

    #[tokio::test]
    async fn the_pinned_table_loads_as_pinned_and_every_other_call_reaches_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let inner = memory_catalog(dir.path()).await;
        let home = NamespaceIdent::new("home".into());
        inner.create_namespace(&home, HashMap::new()).await.unwrap();
        let pinned = inner.create_table(&home, creation("pinned")).await.unwrap();
        let catalog = PinnedCatalog::new(&inner, pinned.clone());

        // The table moves on in the catalog; its load through the pin does not.
        let moved = with_property(&inner, &pinned, "moved").await;
        assert_ne!(moved.metadata_location(), pinned.metadata_location());
        let loaded = catalog.load_table(pinned.identifier()).await.unwrap();
        assert_eq!(loaded.metadata_location(), pinned.metadata_location());
        assert!(!loaded.metadata().properties().contains_key("moved"));
        let debug = format!("{catalog:?}");
        assert!(debug.contains("pinned"), "{debug}");
        let pinned_location = pinned.metadata_location().unwrap();
        assert!(debug.contains(pinned_location), "{debug}");

        // Namespaces.
        let other = NamespaceIdent::new("other".into());
        let created = catalog
            .create_namespace(&other, HashMap::from([("a".into(), "1".into())]))
            .await
            .unwrap();
        assert_eq!(created.name(), &other);
        assert!(inner.namespace_exists(&other).await.unwrap());
        assert!(catalog.namespace_exists(&other).await.unwrap());
        let absent = NamespaceIdent::new("absent".into());
        assert!(!catalog.namespace_exists(&absent).await.unwrap());
        let mut listed = catalog.list_namespaces(None).await.unwrap();
        listed.sort_by_key(|n| n.to_url_string());
        assert_eq!(listed, vec![home.clone(), other.clone()]);
        catalog
            .update_namespace(&other, HashMap::from([("a".into(), "2".into())]))
            .await
            .unwrap();
        let updated = catalog.get_namespace(&other).await.unwrap();
        assert_eq!(updated.properties().get("a").map(String::as_str), Some("2"));

        // Tables other than the pinned one, loaded and committed as they are.
        let table = catalog
            .create_table(&other, creation("table"))
            .await
            .unwrap();
        assert!(inner.table_exists(table.identifier()).await.unwrap());
        assert!(catalog.table_exists(table.identifier()).await.unwrap());
        let absent_table = TableIdent::new(other.clone(), "absent".into());
        assert!(!catalog.table_exists(&absent_table).await.unwrap());
        let moved = with_property(&inner, &table, "moved").await;
        let loaded = catalog.load_table(table.identifier()).await.unwrap();
        assert_eq!(loaded.metadata_location(), moved.metadata_location());
        with_property(&catalog, &loaded, "through_the_pin").await;
        let reloaded = inner.load_table(table.identifier()).await.unwrap();
        assert!(reloaded
            .metadata()
            .properties()
            .contains_key("through_the_pin"));
        assert_eq!(
            catalog.list_tables(&other).await.unwrap(),
            vec![table.identifier().clone()]
        );

        let registered = TableIdent::new(other.clone(), "registered".into());
        let table_registered = catalog
            .register_table(&registered, pinned_location.to_string())
            .await
            .unwrap();
        assert_eq!(table_registered.identifier(), &registered);
        assert!(inner.table_exists(&registered).await.unwrap());
        catalog.drop_table(&registered).await.unwrap();
        assert!(!inner.table_exists(&registered).await.unwrap());

        let renamed = TableIdent::new(other.clone(), "renamed".into());
        catalog
            .rename_table(table.identifier(), &renamed)
            .await
            .unwrap();
        assert!(!inner.table_exists(table.identifier()).await.unwrap());
        assert!(inner.table_exists(&renamed).await.unwrap());
        catalog.purge_table(&renamed).await.unwrap();
        assert!(!inner.table_exists(&renamed).await.unwrap());

        catalog.drop_namespace(&other).await.unwrap();
        assert!(!inner.namespace_exists(&other).await.unwrap());
        assert!(inner.table_exists(pinned.identifier()).await.unwrap());
    }
}
