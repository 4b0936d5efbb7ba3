//! What the command line's URLs name: sources, sinks and stores, and how each
//! is opened.
//!
//! ```text
//! Parquet     file:///data/drop/  s3://bucket/drop/*.parquet  ./drop/day-1.parquet
//! Iceberg     iceberg+sqlite:///var/lake/catalog.db?warehouse=file:///var/lake/wh#ns.table
//!             iceberg+postgresql://user:pw@host:5432/db?warehouse=s3://bucket/wh#ns.table
//!             iceberg+rest://localhost:8181/?warehouse=lake#ns.table
//!             iceberg+https://catalog.example.com/api/catalog?warehouse=lake#ns.table
//! Delta       delta+file:///var/lake/events   delta+s3://bucket/events
//! Store       file:///var/lake/checkpoints    s3://bucket/checkpoints   ./checkpoints
//! ```
//!
//! Object store options (`-o aws_endpoint=http://localhost:9000`, ...) are the
//! `object_store` names; they apply to every URL of the command.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use futures::future::BoxFuture;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{RestCatalogBuilder, REST_CATALOG_PROP_URI};
use iceberg_catalog_sql::{SqlCatalogBuilder, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use tidemark::commit::{CommitOutcome, CommitRequest, CommitSink, Lineage};
use tidemark::error::BoxError;
use tidemark::gc::TableFiles;
use tidemark::pipeline::DataWriter;
use tidemark::redact::redact_url;
use tidemark::source::{ParquetSource, ParquetSourceOptions, Source};
use tidemark::store::URL_CREDENTIALS_REFUSED;
use tidemark_delta::{storage_options, DeltaSink, DeltaSource, DeltaWriterOptions};
use tidemark_iceberg::{IcebergSink, IcebergSource, IcebergWriterOptions, ObjectStorageFactory};
use url::Url;

use crate::CliError;

/// The name a SQL catalog's rows carry when the URL sets none (`catalog=`):
/// pyiceberg's default, so tables made by either tool are seen by the other.
pub(crate) const DEFAULT_SQL_CATALOG_NAME: &str = "default";

/// Environment variables with a REST catalog's secrets (never in the URL).
pub(crate) const REST_CREDENTIAL_ENV: &str = "TIDEMARK_ICEBERG_CREDENTIAL";
/// See [`REST_CREDENTIAL_ENV`].
pub(crate) const REST_TOKEN_ENV: &str = "TIDEMARK_ICEBERG_TOKEN";

/// Settings a REST catalog URL may carry in its query.
const REST_QUERY_SETTINGS: [&str; 4] = ["warehouse", "prefix", "scope", "oauth2-server-uri"];

/// An Iceberg catalog named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatalogUrl {
    /// A SQL catalog (SQLite or PostgreSQL).
    Sql {
        /// The catalog database URI, as sqlx takes it.
        uri: String,
        /// The catalog's warehouse location.
        warehouse: Option<String>,
        /// The catalog name its rows carry.
        name: String,
    },
    /// A REST catalog.
    Rest {
        /// The catalog's base URI (`http://` or `https://`).
        uri: String,
        /// Settings from the URL's query (`warehouse`, `prefix`, `scope`,
        /// `oauth2-server-uri`).
        settings: Vec<(String, String)>,
    },
}

/// A table named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TableUrl {
    /// A table of an Iceberg catalog.
    Iceberg {
        /// The catalog.
        catalog: CatalogUrl,
        /// The table.
        ident: TableIdent,
    },
    /// A Delta table's location.
    Delta(Url),
}

/// Parses a table URL (`iceberg+...#ns.table` or `delta+...`).
pub(crate) fn parse_table(text: &str) -> Result<TableUrl, CliError> {
    let shown = redact_url(text);
    if let Some(rest) = text.strip_prefix("delta+") {
        return Ok(TableUrl::Delta(parse_location(rest)?));
    }
    let Some(rest) = text.strip_prefix("iceberg+") else {
        return Err(CliError::usage(format!(
            "`{shown}` is not a table URL: use iceberg+sqlite://...#namespace.table, \
             iceberg+postgresql://...#namespace.table, iceberg+rest://...#namespace.table, \
             iceberg+https://...#namespace.table or delta+file://... / delta+s3://..."
        )));
    };
    let (catalog, table) = rest.split_once('#').ok_or_else(|| {
        CliError::usage(format!(
            "`{shown}` names no table: end it with #namespace.table"
        ))
    })?;
    let parts: Vec<String> = table.split('.').map(str::to_string).collect();
    if parts.len() < 2 || parts.iter().any(|part| !is_table_name_part(part)) {
        return Err(CliError::usage(format!(
            "`{}` is not namespace.table in `{shown}`: {TABLE_NAME_RULE}",
            table.escape_debug()
        )));
    }
    let ident = TableIdent::from_strs(&parts)
        .map_err(|e| CliError::usage(format!("`{table}` is not a table name: {e}")))?;
    let url = Url::parse(catalog).map_err(|e| {
        CliError::usage(format!(
            "`{}` is not a catalog URL: {e}",
            redact_url(catalog)
        ))
    })?;
    Ok(TableUrl::Iceberg {
        catalog: parse_catalog(url, &shown)?,
        ident,
    })
}

fn parse_catalog(mut url: Url, shown: &str) -> Result<CatalogUrl, CliError> {
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    url.set_query(None);
    let setting = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    match url.scheme() {
        "sqlite" | "postgres" | "postgresql" => {
            let kept: Vec<&(String, String)> = query
                .iter()
                .filter(|(k, _)| k != "warehouse" && k != "catalog")
                .collect();
            if !kept.is_empty() {
                url.query_pairs_mut().extend_pairs(kept);
            }
            let uri = if url.scheme() == "sqlite" {
                let query = url.query().map_or("mode=rwc".to_string(), str::to_string);
                format!("sqlite://{}?{query}", url.path())
            } else {
                url.to_string()
            };
            Ok(CatalogUrl::Sql {
                uri,
                warehouse: setting("warehouse"),
                name: setting("catalog").unwrap_or_else(|| DEFAULT_SQL_CATALOG_NAME.to_string()),
            })
        }
        "rest" | "http" | "https" => {
            if !url.username().is_empty() || url.password().is_some() {
                return Err(CliError::usage(format!(
                    "`{shown}`: {URL_CREDENTIALS_REFUSED}; a REST catalog's credential or token \
                     goes in {REST_CREDENTIAL_ENV} or {REST_TOKEN_ENV}"
                )));
            }
            if let Some((name, _)) = query
                .iter()
                .find(|(k, _)| !REST_QUERY_SETTINGS.contains(&k.as_str()))
            {
                return Err(CliError::usage(format!(
                    "`{shown}`: a REST catalog URL takes only {} in its query, not `{name}`; \
                     a credential or token goes in {REST_CREDENTIAL_ENV} or {REST_TOKEN_ENV}",
                    REST_QUERY_SETTINGS.join(", ")
                )));
            }
            let scheme = if url.scheme() == "https" {
                "https"
            } else {
                "http"
            };
            let rest = url.as_str().split_once("://").map_or("", |(_, rest)| rest);
            Ok(CatalogUrl::Rest {
                uri: format!("{scheme}://{}", rest.trim_end_matches('/')),
                settings: query,
            })
        }
        other => Err(CliError::usage(format!(
            "catalog scheme `{other}` is not supported: use iceberg+sqlite, iceberg+postgresql, \
             iceberg+rest (http) or iceberg+https"
        ))),
    }
}

/// The rule every part of an Iceberg table name follows here: safe in the SQL
/// and REST catalogs and in the paths they derive from it.
const TABLE_NAME_RULE: &str = "each part of a table name is 1 to 255 bytes, with no control \
     characters, `/` or `\\`";

fn is_table_name_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 255
        && !part
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
}

/// A URL, or a local path made absolute. A URL with a user, password or query
/// is refused: credentials and settings go in `-o` or the environment.
pub(crate) fn parse_location(text: &str) -> Result<Url, CliError> {
    if text.contains("://") {
        let url = Url::parse(text)
            .map_err(|e| CliError::usage(format!("`{}` is not a URL: {e}", redact_url(text))))?;
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(CliError::usage(format!(
                "`{}`: {URL_CREDENTIALS_REFUSED}",
                redact_url(text)
            )));
        }
        return Ok(url);
    }
    let path = std::path::absolute(text)
        .map_err(|e| CliError::usage(format!("`{text}` is not a usable path: {e}")))?;
    let mut url = Url::from_file_path(&path)
        .map_err(|()| CliError::usage(format!("`{}` is not an absolute path", path.display())))?;
    if text.ends_with('/') && !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

async fn iceberg_catalog(
    catalog: &CatalogUrl,
    options: &HashMap<String, String>,
) -> Result<Arc<dyn Catalog>, CliError> {
    let storage = Arc::new(ObjectStorageFactory::new(options.clone()));
    match catalog {
        CatalogUrl::Sql {
            uri,
            warehouse,
            name,
        } => {
            let mut props = HashMap::from([(SQL_CATALOG_PROP_URI.to_string(), uri.clone())]);
            if let Some(warehouse) = warehouse {
                props.insert(SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone());
            }
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(name, props)
                .await
                .map_err(|e| CliError::Iceberg {
                    what: format!("opening the catalog `{}`", redact_url(uri)),
                    source: Box::new(e),
                })?;
            Ok(Arc::new(catalog))
        }
        CatalogUrl::Rest { uri, settings } => {
            let mut props: HashMap<String, String> = settings.iter().cloned().collect();
            props.insert(REST_CATALOG_PROP_URI.to_string(), uri.clone());
            for (variable, prop) in [
                (REST_CREDENTIAL_ENV, "credential"),
                (REST_TOKEN_ENV, "token"),
            ] {
                if let Ok(value) = std::env::var(variable) {
                    props.insert(prop.to_string(), value);
                }
            }
            let catalog = RestCatalogBuilder::default()
                .with_storage_factory(storage)
                .load("rest", props)
                .await
                .map_err(|e| CliError::Iceberg {
                    what: format!("opening the REST catalog `{}`", redact_url(uri)),
                    source: Box::new(e),
                })?;
            Ok(Arc::new(catalog))
        }
    }
}

/// Opens a source: several are read as one union.
pub(crate) async fn open_source(
    text: &str,
    options: &HashMap<String, String>,
) -> Result<Arc<dyn Source>, CliError> {
    let parquet_options = ParquetSourceOptions {
        store_options: options.clone(),
        ..Default::default()
    };
    if text.starts_with("iceberg+") || text.starts_with("delta+") {
        return match parse_table(text)? {
            TableUrl::Iceberg { catalog, ident } => {
                let catalog = iceberg_catalog(&catalog, options).await?;
                let table = catalog
                    .load_table(&ident)
                    .await
                    .map_err(|e| CliError::Iceberg {
                        what: format!("loading source table `{ident}`"),
                        source: Box::new(e),
                    })?;
                Ok(Arc::new(IcebergSource::open(&table).await?))
            }
            TableUrl::Delta(url) => {
                let table = deltalake::DeltaTableBuilder::from_url(url.clone())
                    .and_then(|b| b.with_storage_options(storage_options(options)).build())
                    .map_err(|e| CliError::Delta {
                        what: format!("opening source table `{url}`"),
                        source: Box::new(e),
                    })?;
                let mut table = table;
                table.load().await.map_err(|e| CliError::Delta {
                    what: format!("loading source table `{url}`"),
                    source: Box::new(e),
                })?;
                Ok(Arc::new(DeltaSource::open(&table, &parquet_options).await?))
            }
        };
    }
    let url = parse_location(text)?;
    Ok(Arc::new(
        ParquetSource::open(url.as_str(), &parquet_options).await?,
    ))
}

/// An Iceberg or a Delta sink.
#[derive(Debug)]
pub(crate) enum AnySink {
    /// Iceberg.
    Iceberg(IcebergSink),
    /// Delta.
    Delta(DeltaSink),
}

impl AnySink {
    /// Opens the table at `text`; with `create_from`, creates it with that
    /// schema if it does not exist.
    pub(crate) async fn open(
        text: &str,
        options: &HashMap<String, String>,
        create_from: Option<&SchemaRef>,
    ) -> Result<Self, CliError> {
        match parse_table(text)? {
            TableUrl::Iceberg { catalog, ident } => {
                let catalog = iceberg_catalog(&catalog, options).await?;
                if let Some(schema) = create_from {
                    create_iceberg_table(catalog.as_ref(), &ident, schema).await?;
                }
                Ok(AnySink::Iceberg(IcebergSink::open(catalog, ident).await?))
            }
            TableUrl::Delta(url) => {
                let options = storage_options(options);
                let sink = match create_from {
                    Some(schema) => DeltaSink::create_if_missing(url, options, schema, &[]).await?,
                    None => DeltaSink::open(url, options).await?,
                };
                Ok(AnySink::Delta(sink))
            }
        }
    }

    /// A writer of data files for the table, of about `target_file_size_bytes`
    /// each.
    pub(crate) async fn writer(
        &self,
        target_file_size_bytes: usize,
    ) -> Result<Box<dyn DataWriter>, CliError> {
        Ok(match self {
            AnySink::Iceberg(sink) => Box::new(
                sink.writer(IcebergWriterOptions {
                    target_file_size_bytes,
                    ..Default::default()
                })
                .await?,
            ),
            AnySink::Delta(sink) => Box::new(
                sink.writer(DeltaWriterOptions {
                    target_file_size_bytes: target_file_size_bytes as u64,
                    ..Default::default()
                })
                .await?,
            ),
        })
    }
}

async fn create_iceberg_table(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    schema: &Schema,
) -> Result<(), CliError> {
    let iceberg_error = |what: String| {
        move |source| CliError::Iceberg {
            what,
            source: Box::new(source),
        }
    };
    if catalog
        .table_exists(ident)
        .await
        .map_err(iceberg_error(format!("looking up `{ident}`")))?
    {
        return Ok(());
    }
    let schema = tidemark::conform::storable_schema(schema)
        .map_err(|reason| CliError::usage(format!("cannot create `{ident}`: {reason}")))?;
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&schema).map_err(
        iceberg_error(format!("converting the source schema for `{ident}`")),
    )?;
    let namespace: &NamespaceIdent = ident.namespace();
    if !catalog
        .namespace_exists(namespace)
        .await
        .map_err(iceberg_error(format!("looking up namespace of `{ident}`")))?
    {
        let created = catalog.create_namespace(namespace, HashMap::new()).await;
        // Another run may have made it between the look and the create.
        if let Err(error) = created {
            if !catalog.namespace_exists(namespace).await.unwrap_or(false) {
                return Err(iceberg_error(format!("creating namespace of `{ident}`"))(
                    error,
                ));
            }
        }
    }
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(schema)
        .build();
    if let Err(error) = catalog.create_table(namespace, creation).await {
        // Several runs may create one table at once: one wins, the others load
        // the table it made (and its schema is checked before the read).
        if catalog.table_exists(ident).await.unwrap_or(false) {
            tracing::info!(table = %ident, "another run created the table first; using it");
            return Ok(());
        }
        return Err(iceberg_error(format!("creating `{ident}`"))(error));
    }
    Ok(())
}

impl CommitSink for AnySink {
    fn table(&self) -> String {
        match self {
            AnySink::Iceberg(sink) => CommitSink::table(sink),
            AnySink::Delta(sink) => CommitSink::table(sink),
        }
    }

    fn committed_sequence<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, BoxError>> {
        match self {
            AnySink::Iceberg(sink) => sink.committed_sequence(pipeline_id),
            AnySink::Delta(sink) => sink.committed_sequence(pipeline_id),
        }
    }

    fn commit<'a>(
        &'a self,
        request: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitOutcome, BoxError>> {
        match self {
            AnySink::Iceberg(sink) => sink.commit(request),
            AnySink::Delta(sink) => sink.commit(request),
        }
    }

    fn lineage<'a>(&'a self, pipeline_id: &'a str) -> BoxFuture<'a, Result<Lineage, BoxError>> {
        match self {
            AnySink::Iceberg(sink) => sink.lineage(pipeline_id),
            AnySink::Delta(sink) => sink.lineage(pipeline_id),
        }
    }

    fn marker_risk(&self) -> BoxFuture<'_, Result<Option<String>, BoxError>> {
        match self {
            AnySink::Iceberg(sink) => sink.marker_risk(),
            AnySink::Delta(sink) => sink.marker_risk(),
        }
    }
}

impl TableFiles for AnySink {
    fn delete_file<'a>(&'a self, path: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        match self {
            AnySink::Iceberg(sink) => sink.delete_file(path),
            AnySink::Delta(sink) => sink.delete_file(path),
        }
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, tidemark::Result<()>> {
        match self {
            AnySink::Iceberg(sink) => sink.delete_prefix(prefix),
            AnySink::Delta(sink) => sink.delete_prefix(prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn table_urls_parse() {
        let parsed =
            parse_table("iceberg+sqlite:///var/lake/c.db?warehouse=file:///var/lake/wh#ns.docs")
                .unwrap();
        assert_eq!(
            parsed,
            TableUrl::Iceberg {
                catalog: CatalogUrl::Sql {
                    uri: "sqlite:///var/lake/c.db?mode=rwc".into(),
                    warehouse: Some("file:///var/lake/wh".into()),
                    name: "default".into(),
                },
                ident: TableIdent::from_strs(["ns", "docs"]).unwrap(),
            }
        );
        let named = parse_table("iceberg+postgresql://h/db?catalog=lake#ns.docs").unwrap();
        assert!(matches!(
            named,
            TableUrl::Iceberg { catalog: CatalogUrl::Sql { uri, name, warehouse: None }, .. }
                if uri == "postgresql://h/db" && name == "lake"
        ));
        let rest = parse_table("iceberg+rest://localhost:8181/?warehouse=wh#ns.docs").unwrap();
        assert!(matches!(
            rest,
            TableUrl::Iceberg { catalog: CatalogUrl::Rest { uri, settings }, .. }
                if uri == "http://localhost:8181" && settings == vec![("warehouse".to_string(), "wh".to_string())]
        ));
        let https = parse_table("iceberg+https://cat.example.com/api/catalog#ns.docs").unwrap();
        assert!(matches!(
            https,
            TableUrl::Iceberg { catalog: CatalogUrl::Rest { uri, .. }, .. }
                if uri == "https://cat.example.com/api/catalog"
        ));
        let secret = parse_table("iceberg+https://h/?token=abc#ns.docs").unwrap_err();
        assert!(secret.to_string().contains("TIDEMARK_ICEBERG_TOKEN"));
        assert!(matches!(
            parse_table("delta+s3://bucket/events").unwrap(),
            TableUrl::Delta(url) if url.as_str() == "s3://bucket/events"
        ));
        assert!(parse_table("iceberg+sqlite:///c.db").is_err());
        assert!(parse_table("s3://bucket/x").is_err());
        assert!(parse_table("iceberg+mysql://h/db#a.b").is_err());
    }
}
