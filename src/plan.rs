//! The checkpointed read as DataFusion plan nodes.
//!
//! [`UnprocessedTable`] is a [`TableProvider`] over a source and a checkpoint
//! store: the rows a run would process now. Its scan is a
//! [`CheckpointedScanExec`], which runs the checkpointed read itself (units
//! that sealed checkpoints finished are skipped, the rest go through the
//! anti-join against the checkpointed keys, duplicates follow the read's
//! policy) and stages nothing. `EXPLAIN` names it with its key columns and
//! units; `EXPLAIN ANALYZE` adds what the read skipped.
//!
//! ```no_run
//! # async fn example(store: tidemark::store::CheckpointStore,
//! #     source: std::sync::Arc<dyn tidemark::source::Source>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use datafusion::prelude::SessionContext;
//! use tidemark::plan::UnprocessedTable;
//! use tidemark::read::ReadOptions;
//!
//! let context = SessionContext::new();
//! let table = UnprocessedTable::new(store, source, ReadOptions::default())?;
//! context.register_table("source", Arc::new(table))?;
//! // How many rows, by day, the next run would process.
//! context
//!     .sql("SELECT day, count(*) FROM source GROUP BY day ORDER BY day")
//!     .await?
//!     .show()
//!     .await?;
//! # Ok(()) }
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DataFusionResult};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::stream::{self, TryStreamExt};

use crate::error::Error;
use crate::filter::check_source;
use crate::read::{CheckpointedRead, ReadOptions, ReadStats};
use crate::source::Source;
use crate::store::CheckpointStore;

/// The rows of a source whose key is not checkpointed in a store: what a run
/// would process now, as a DataFusion table. Reading it stages no key, so
/// it can be queried any number of times before a run (to count or inspect
/// the work left) and changes nothing.
#[derive(Debug, Clone)]
pub struct UnprocessedTable {
    store: CheckpointStore,
    source: Arc<dyn Source>,
    options: ReadOptions,
}

impl UnprocessedTable {
    /// The unprocessed rows of `source` against `store`, read with `options`
    /// (its projection is replaced by the query's). Fails, before any query,
    /// if the source lacks a key column of the store or holds it with
    /// another type.
    pub fn new(
        store: CheckpointStore,
        source: Arc<dyn Source>,
        options: ReadOptions,
    ) -> crate::Result<Self> {
        check_source(store.key_schema(), &source.schema())?;
        Ok(UnprocessedTable {
            store,
            source,
            options,
        })
    }
}

#[async_trait]
impl TableProvider for UnprocessedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let columns = match projection {
            Some(indices) => {
                let projected = self.source.schema().project(indices)?;
                Some(
                    projected
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect(),
                )
            }
            None => None,
        };
        let options = ReadOptions {
            projection: columns,
            ..self.options.clone()
        };
        let scan = CheckpointedScanExec::new(self.store.clone(), Arc::clone(&self.source), options)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(scan))
    }
}

/// The checkpointed read as a leaf of a physical plan: one partition, the
/// source's rows whose key is not checkpointed, in source order, with the
/// projected columns. Stages nothing.
#[derive(Debug)]
pub struct CheckpointedScanExec {
    store: CheckpointStore,
    source: Arc<dyn Source>,
    options: ReadOptions,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CheckpointedScanExec {
    /// A scan of `source` through `store`, returning the columns of
    /// `options.projection` (all of the source's when `None`).
    pub(crate) fn new(
        store: CheckpointStore,
        source: Arc<dyn Source>,
        options: ReadOptions,
    ) -> crate::Result<Self> {
        let full = source.schema();
        let schema = match &options.projection {
            Some(names) => {
                let indices = names
                    .iter()
                    .map(|name| {
                        full.index_of(name).map_err(|_| Error::InvalidSource {
                            location: "projection".into(),
                            reason: format!("column `{name}` is not in the source"),
                        })
                    })
                    .collect::<crate::Result<Vec<usize>>>()?;
                Arc::new(full.project(&indices).map_err(|source| Error::Arrow {
                    context: "projecting the source's schema",
                    source,
                })?)
            }
            None => full,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        Ok(CheckpointedScanExec {
            store,
            source,
            options,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for CheckpointedScanExec {
    fn fmt_as(&self, format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self
            .store
            .key_schema()
            .columns()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let units = self.source.units().len();
        match format {
            DisplayFormatType::TreeRender => {
                writeln!(f, "keys={}", keys.join(", "))?;
                write!(f, "units={units}")
            }
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "CheckpointedScanExec: keys=[{}], units={units}, projection=[{}], duplicates={:?}",
                keys.join(", "),
                columns.join(", "),
                self.options.duplicates,
            ),
        }
    }
}

/// Counters of one execution, brought up to date after every batch (so a
/// query that stops early, a `LIMIT`, still shows what was read).
struct ScanMetrics {
    rows_read: Count,
    rows_skipped: Count,
    units_skipped: Count,
    duplicates_dropped: Count,
    checkpointed_keys: Count,
    output_rows: Count,
    /// The read's figures when the counters were last brought up to date.
    recorded: [u64; 6],
}

impl ScanMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        ScanMetrics {
            rows_read: counter("rows_read"),
            rows_skipped: counter("rows_skipped"),
            units_skipped: counter("units_skipped"),
            duplicates_dropped: counter("duplicates_dropped"),
            checkpointed_keys: counter("checkpointed_keys"),
            output_rows: MetricBuilder::new(metrics).output_rows(partition),
            recorded: [0; 6],
        }
    }

    fn record(&mut self, stats: &ReadStats) {
        let now = [
            stats.rows_read,
            stats.rows_skipped,
            stats.units_skipped,
            stats.duplicates_dropped,
            stats.checkpointed_keys,
            stats.rows_passed,
        ];
        let counters = [
            &self.rows_read,
            &self.rows_skipped,
            &self.units_skipped,
            &self.duplicates_dropped,
            &self.checkpointed_keys,
            &self.output_rows,
        ];
        for ((counter, now), before) in counters.into_iter().zip(now).zip(self.recorded) {
            counter.add(usize::try_from(now.saturating_sub(before)).unwrap_or(usize::MAX));
        }
        self.recorded = now;
    }
}

impl ExecutionPlan for CheckpointedScanExec {
    fn name(&self) -> &str {
        "CheckpointedScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "CheckpointedScanExec is a leaf: it takes no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "CheckpointedScanExec has one partition, not partition {partition}"
            )));
        }
        let store = self.store.clone();
        let source = Arc::clone(&self.source);
        let options = self.options.clone();
        let schema = Arc::clone(&self.schema);
        let metrics = ScanMetrics::new(&self.metrics, partition);
        // The read opens (loads the store's state, plans the filter) when the
        // stream is first polled, not when the plan is built.
        let batches = stream::once(async move {
            CheckpointedRead::open(&store, source, options)
                .await
                .map(|read| (read, metrics, schema))
        })
        .map_ok(|state| {
            stream::try_unfold(state, |(mut read, mut metrics, schema)| async move {
                let batch = read.next_unstaged_batch().await?;
                metrics.record(read.stats());
                let Some(batch) = batch else {
                    return Ok(None);
                };
                // The declared schema, whatever field metadata the source's
                // batches carry.
                let batch = RecordBatch::try_new_with_options(
                    Arc::clone(&schema),
                    batch.columns().to_vec(),
                    &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
                )
                .map_err(|source| Error::Arrow {
                    context: "giving a batch the scan's schema",
                    source,
                })?;
                Ok(Some((batch, (read, metrics, schema))))
            })
        })
        .try_flatten()
        .map_err(|e: Error| DataFusionError::External(Box::new(e)));
        Ok(make_cooperative(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
