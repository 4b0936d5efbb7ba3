//! The union of several sources: one checkpointed pipeline over, for example,
//! yesterday's Parquet drop and an Iceberg table.

use std::sync::Arc;

use arrow_schema::SchemaRef;
use futures::future::BoxFuture;

use super::{BatchStream, Source, SourceUnit};
use crate::error::{Error, Result};

/// Several sources read as one: their units one after the other. Every source
/// must have the same columns, in the same order, with the same types.
#[derive(Debug)]
pub struct UnionSource {
    schema: SchemaRef,
    sources: Vec<Arc<dyn Source>>,
    units: Vec<SourceUnit>,
    /// For each unit of the union: its source and its index there.
    origins: Vec<(usize, usize)>,
}

impl UnionSource {
    /// The union of `sources`. Fails naming the first source whose columns
    /// differ from the first one's.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Result<Self> {
        let first = sources.first().ok_or_else(|| Error::InvalidSource {
            location: "union".to_string(),
            reason: "a union needs at least one source".to_string(),
        })?;
        let schema = first.schema();
        let mut units = Vec::new();
        let mut origins = Vec::new();
        for (s, source) in sources.iter().enumerate() {
            let other = source.schema();
            let same = other.fields().len() == schema.fields().len()
                && other
                    .fields()
                    .iter()
                    .zip(schema.fields())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !same {
                return Err(Error::InvalidSource {
                    location: source
                        .units()
                        .first()
                        .map_or_else(|| format!("union source {s}"), |u| u.name.clone()),
                    reason: format!(
                        "its columns {} differ from the first source's {}",
                        describe(&other),
                        describe(&schema)
                    ),
                });
            }
            for (u, unit) in source.units().iter().enumerate() {
                units.push(unit.clone());
                origins.push((s, u));
            }
        }
        Ok(UnionSource {
            schema,
            sources,
            units,
            origins,
        })
    }
}

fn describe(schema: &SchemaRef) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("({})", columns.join(", "))
}

impl Source for UnionSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn units(&self) -> &[SourceUnit] {
        &self.units
    }

    fn read_unit(
        &self,
        unit: usize,
        projection: Option<Vec<String>>,
    ) -> BoxFuture<'static, Result<BatchStream>> {
        match self.origins.get(unit) {
            Some(&(source, inner)) => self.sources[source].read_unit(inner, projection),
            None => {
                let count = self.units.len();
                Box::pin(async move {
                    Err(Error::InvalidSource {
                        location: "union".to_string(),
                        reason: format!("unit {unit} asked for, but the union has {count}"),
                    })
                })
            }
        }
    }
}
