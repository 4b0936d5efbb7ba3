//! SQL transforms: a `SELECT` over the checkpointed source, run batch by batch.
//!
//! The statement is planned once by DataFusion against the source's schema,
//! registered as the table `source`. The plan must be map-only, as the
//! [`Transform`] guard asks: projections (any scalar expression or scalar
//! function, DataFusion's or a registered UDF), filters and aliases over one
//! scan of `source`. Anything whose output for one row depends on other rows
//! is refused before any row is read, naming the operator: sorts, limits,
//! aggregates, `DISTINCT`, joins, unions, windows, subqueries, `UNNEST`.
//!
//! A map-only plan gives each row's output from that row alone, so running it
//! on one batch at a time is exact. Each filter and projection is compiled
//! once to DataFusion physical expressions and becomes a step of a
//! [`Transform`]: no plan is built per batch, and the steps run on the
//! pipeline's map workers like any other map. A call of an async function
//! (DataFusion's `AsyncScalarUDF`: a model, a service) becomes a step of its
//! own that awaits it for the batch and appends its result as a column.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::Analyzer;
use datafusion::physical_expr::async_scalar_function::AsyncFuncExpr;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::error::{BoxError, Error, Result};
use crate::store::keys::column_names;
use crate::transform::Transform;

/// The table name a SQL transform reads the source under.
pub const SOURCE_TABLE: &str = "source";

/// A map-only SQL statement over the source, as a [`Transform`] and the
/// schema of the rows it makes.
#[derive(Debug, Clone)]
pub struct SqlTransform {
    transform: Transform,
    output_schema: SchemaRef,
}

impl SqlTransform {
    /// Plans `sql` (one `SELECT ... FROM source ...`) against batches of
    /// `source_schema`. Fails with [`Error::Sql`] when it does not plan (a
    /// syntax error, an unknown column or function, a statement that is not
    /// a query), and with [`Error::NotRowWise`] when it is not map-only.
    pub async fn new(sql: &str, source_schema: &SchemaRef) -> Result<Self> {
        Self::new_in(&SessionContext::new(), sql, source_schema).await
    }

    /// Plans `sql` as [`SqlTransform::new`] does, with the functions and
    /// settings of `context`: register your UDFs there first, including
    /// async ones (DataFusion's `AsyncScalarUDF`, for a model or service
    /// call). Each async call is awaited a batch at a time (in slices of the
    /// function's `ideal_batch_size`), for the rows that reach it: those
    /// that the earlier filters kept, including the conditions of its own
    /// `WHERE` that call no async function, which run first. Within one
    /// expression (`CASE`, `COALESCE`, `OR`) a call is made for every row
    /// that reaches the expression, whatever its conditions: to spare
    /// calls, put the condition in a `WHERE` of an inner `SELECT`. The same
    /// call is made once per row however often the statement names it, even
    /// for a volatile function. Up to the pipeline's map workers of batches
    /// are in flight. `context` itself is not changed: `source` is
    /// registered in a copy of its state.
    pub async fn new_in(
        context: &SessionContext,
        sql: &str,
        source_schema: &SchemaRef,
    ) -> Result<Self> {
        let context = isolated(context).map_err(|e| sql_error(sql, e))?;
        let empty = MemTable::try_new(source_schema.clone(), vec![vec![]])
            .map_err(|e| sql_error(sql, e))?;
        context
            .register_table(SOURCE_TABLE, Arc::new(empty))
            .map_err(|e| sql_error(sql, e))?;
        let frame = context
            .sql_with_options(sql, query_only())
            .await
            .map_err(|e| sql_error(sql, e))?;
        Self::compiled(&context, frame.into_unoptimized_plan(), source_schema, sql)
    }

    /// A transform from a logical plan over one scan of a table named
    /// `source` whose schema is `source_schema` (for example a DataFusion
    /// `DataFrame`'s `into_unoptimized_plan()`), planned in `context` (whose
    /// functions the plan may call). The same guard applies as to
    /// [`SqlTransform::new`].
    pub fn from_plan(
        context: &SessionContext,
        plan: LogicalPlan,
        source_schema: &SchemaRef,
    ) -> Result<Self> {
        let described = plan.display_indent().to_string();
        Self::compiled(context, plan, source_schema, &described)
    }

    /// Checks and compiles `plan`; planning errors name it as `named` (the
    /// statement, or the plan's own text).
    fn compiled(
        context: &SessionContext,
        plan: LogicalPlan,
        source_schema: &SchemaRef,
        named: &str,
    ) -> Result<Self> {
        // Type coercion, so that physical expressions see the types they
        // compute with; no optimizer rule runs, so the plan keeps its shape.
        let plan = Analyzer::new()
            .execute_and_check(plan, context.state().config_options(), |_, _| {})
            .map_err(|e| sql_error(named, e))?;
        let output_schema = Arc::new(plan.schema().as_arrow().clone());
        let mut steps = Vec::new();
        compile(context, &plan, source_schema, &mut steps).map_err(|e| with_plan(e, named))?;
        let config = context.state().config_options().clone();
        let transform = steps
            .into_iter()
            .fold(Transform::new(), |transform, step| match step {
                Step::Call(calls, extended) => {
                    let (calls, config) = (Arc::new(calls), config.clone());
                    transform.map_async_to(extended.clone(), move |batch| {
                        call_async(calls.clone(), extended.clone(), config.clone(), batch)
                    })
                }
                Step::Keep(columns) => transform.project(columns),
                Step::Filter(predicate) => transform.filter(move |batch| {
                    let values = evaluate(&predicate, batch)?;
                    values
                        .as_any()
                        .downcast_ref::<arrow_array::BooleanArray>()
                        .cloned()
                        .ok_or_else(|| Error::Map {
                            source: format!(
                                "the WHERE clause gave {} values, not booleans",
                                values.data_type()
                            )
                            .into(),
                        })
                }),
                Step::Project(expressions, schema) => {
                    transform.map_to(schema.clone(), move |batch| {
                        let columns = expressions
                            .iter()
                            .map(|e| evaluate(e, &batch))
                            .collect::<Result<Vec<ArrayRef>>>()?;
                        let options =
                            RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                        RecordBatch::try_new_with_options(schema.clone(), columns, &options)
                            .map_err(|e| Error::Map { source: e.into() })
                    })
                }
            });
        Ok(SqlTransform {
            transform,
            output_schema,
        })
    }

    /// The transform to pass to [`crate::pipeline::Pipeline::run`].
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The schema of the rows the statement makes: what the table must hold.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }
}

/// SQL options that allow a query only: DDL, DML and `SET` are refused
/// before they run.
pub fn query_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A context with the functions and settings of `context` and catalogs of
/// its own, so that registering `source` leaves `context`'s tables alone.
fn isolated(context: &SessionContext) -> datafusion::error::Result<SessionContext> {
    let state = SessionStateBuilder::new_from_existing(context.state())
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .build();
    let names = state.config().options().catalog.clone();
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(&names.default_schema, Arc::new(MemorySchemaProvider::new()))?;
    state
        .catalog_list()
        .register_catalog(names.default_catalog, Arc::new(catalog));
    Ok(SessionContext::new_with_state(state))
}

/// One compiled step of a map-only plan.
enum Step {
    /// Calls of async functions (a model, a service), each appended to the
    /// batch as a column; the extended schema.
    Call(Vec<AsyncFuncExpr>, SchemaRef),
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    /// Keeps the named columns (drops the columns of calls after a filter).
    Keep(Vec<String>),
}

/// Physical expressions over one batch.
type Exprs = Vec<Arc<dyn PhysicalExpr>>;

/// Prefix of the columns that hold the results of async function calls.
const CALL_COLUMN: &str = "__tidemark_call_";

/// The expressions `exprs` over rows of `input`, with every call of an async
/// function replaced by a column appended to the batch, and the step that
/// appends them (none without such calls). Each distinct call is made once
/// per row, however often the expressions name it. A call among another
/// async call's arguments is refused: it could not run before its caller.
fn hoist_calls(exprs: Exprs, input: &Schema) -> Result<(Option<Step>, Exprs)> {
    let mut calls: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for expr in &exprs {
        expr.apply(|e| {
            if let Some(name) = async_function(e) {
                if let Some(inner) = e.children().into_iter().find_map(first_async_call) {
                    return Err(datafusion::error::DataFusionError::Plan(format!(
                        "the async function `{name}` takes the result of the async function \
                         `{inner}` as an argument; compute `{inner}` in an inner SELECT \
                         (FROM (SELECT {inner}(...) AS x FROM {SOURCE_TABLE}))"
                    )));
                }
                if !calls.iter().any(|c| c == e) {
                    calls.push(e.clone());
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| sql_error("", e))?;
    }
    if calls.is_empty() {
        return Ok((None, exprs));
    }
    let mut fields = input.fields().to_vec();
    let mut columns = Vec::with_capacity(calls.len());
    for (i, call) in calls.iter().enumerate() {
        let name = format!("{CALL_COLUMN}{i}");
        let column =
            AsyncFuncExpr::try_new(name, call.clone(), input).map_err(|e| sql_error("", e))?;
        fields.push(Arc::new(column.field(input).map_err(|e| sql_error("", e))?));
        columns.push(column);
    }
    let width = input.fields().len();
    let rewritten = exprs
        .into_iter()
        .map(|expr| {
            expr.transform_down(|e| {
                Ok(match calls.iter().position(|c| c == &e) {
                    Some(i) => Transformed::yes(Arc::new(
                        datafusion::physical_expr::expressions::Column::new(
                            &format!("{CALL_COLUMN}{i}"),
                            width + i,
                        ),
                    ) as Arc<dyn PhysicalExpr>),
                    None => Transformed::no(e),
                })
            })
            .map(|t| t.data)
            .map_err(|e| sql_error("", e))
        })
        .collect::<Result<Vec<_>>>()?;
    let extended = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
    Ok((Some(Step::Call(columns, extended)), rewritten))
}

/// The name of the first async function `expr` calls anywhere, if any.
fn first_async_call(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    let mut found = None;
    let _ = expr.apply(|e| {
        found = async_function(e);
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The name of the async function `expr` calls, if it is such a call.
fn async_function(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    let call = expr.as_any().downcast_ref::<ScalarFunctionExpr>()?;
    call.fun().as_async().map(|_| call.name().to_string())
}

/// Appends to `batch` the results of `calls`, made one after the other, as
/// the columns of `extended`.
async fn call_async(
    calls: Arc<Vec<AsyncFuncExpr>>,
    extended: SchemaRef,
    config: Arc<ConfigOptions>,
    batch: RecordBatch,
) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    for call in calls.iter() {
        let function = async_function(&call.func).unwrap_or_else(|| call.name().to_string());
        let failed = |reason: String| Error::Map {
            source: format!("the async function `{function}`: {reason}").into(),
        };
        let value = if rows == 0 {
            // A batch a filter emptied: nothing to call for (DataFusion's
            // call of an empty batch fails).
            let field = call
                .field(batch.schema_ref())
                .map_err(|e| failed(e.to_string()))?;
            arrow_array::new_empty_array(field.data_type())
        } else {
            call.invoke_with_args(&batch, config.clone())
                .await
                .and_then(|value| value.into_array(rows))
                .map_err(|e| failed(e.to_string()))?
        };
        if value.len() != rows {
            return Err(failed(format!(
                "it returned {} values for {rows} rows; it must return an array of one value \
                 per row, not a scalar",
                value.len()
            )));
        }
        columns.push(value);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(extended, columns, &options)
        .map_err(|e| Error::Map { source: e.into() })
}

/// Appends the steps of `plan` (inputs first) to `steps`, or refuses the
/// first operator that is not row-wise.
fn compile(
    context: &SessionContext,
    plan: &LogicalPlan,
    source_schema: &SchemaRef,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let physical = |expr: &Expr, input: &LogicalPlan| {
        refuse_subqueries(expr)?;
        context
            .create_physical_expr(expr.clone(), input.schema())
            .map_err(|e| sql_error("", e))
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.table_name.table() != SOURCE_TABLE {
                return Err(Error::Sql {
                    sql: String::new(),
                    reason: format!(
                        "it reads table `{}`; a transform reads only `{SOURCE_TABLE}`",
                        scan.table_name
                    ),
                });
            }
            if scan.fetch.is_some() {
                return Err(Transform::refuse("limit"));
            }
            let scanned: &Schema = scan.projected_schema.as_arrow();
            if scan.projection.is_some()
                || !scan.filters.is_empty()
                || !same_columns(scanned, source_schema)
            {
                return Err(Error::Sql {
                    sql: String::new(),
                    reason: format!(
                        "its scan of `{SOURCE_TABLE}` must return the source's columns as they \
                         are ({}), not {}",
                        column_names(source_schema),
                        column_names(scanned)
                    ),
                });
            }
            Ok(())
        }
        LogicalPlan::SubqueryAlias(alias) => compile(context, &alias.input, source_schema, steps),
        LogicalPlan::Filter(filter) => {
            compile(context, &filter.input, source_schema, steps)?;
            let input = filter.input.schema().as_arrow();
            // The conditions that call no async function filter first, in
            // one step; then each that calls one, in the statement's order,
            // so that a call is made only for the rows the others kept (a
            // row passes `a AND b` when it passes `a`, then `b`).
            let mut plain = Vec::new();
            let mut calling = Vec::new();
            for conjunct in split_conjunction(&filter.predicate) {
                let predicate = physical(conjunct, &filter.input)?;
                if first_async_call(&predicate).is_some() {
                    calling.push(predicate);
                } else {
                    plain.push(conjunct.clone());
                }
            }
            if let Some(predicate) = conjunction(plain) {
                steps.push(Step::Filter(physical(&predicate, &filter.input)?));
            }
            for predicate in calling {
                let (calls, predicate) = hoist_calls(vec![predicate], input)?;
                steps.extend(calls);
                for predicate in predicate {
                    steps.push(Step::Filter(predicate));
                }
                let names = input.fields().iter().map(|f| f.name().clone()).collect();
                steps.push(Step::Keep(names));
            }
            Ok(())
        }
        LogicalPlan::Projection(projection) => {
            compile(context, &projection.input, source_schema, steps)?;
            let expressions = projection
                .expr
                .iter()
                .map(|e| physical(e, &projection.input))
                .collect::<Result<Vec<_>>>()?;
            let (calls, expressions) =
                hoist_calls(expressions, projection.input.schema().as_arrow())?;
            steps.extend(calls);
            let schema = Arc::new(projection.schema.as_arrow().clone());
            steps.push(Step::Project(expressions, schema));
            Ok(())
        }
        other => Err(Transform::refuse(operator(other))),
    }
}

/// The name [`Transform::refuse`] knows an operator by.
fn operator(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Sort(_) => "sort",
        LogicalPlan::Limit(_) => "limit",
        LogicalPlan::Aggregate(_) => "aggregate",
        LogicalPlan::Distinct(_) => "distinct",
        LogicalPlan::Window(_) => "window",
        LogicalPlan::Join(_) => "join",
        LogicalPlan::Union(_) => "union",
        LogicalPlan::Repartition(_) => "repartition",
        LogicalPlan::Unnest(_) => "unnest",
        LogicalPlan::RecursiveQuery(_) => "recursive query",
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => "a query without the source",
        _ => "this statement",
    }
}

/// Subqueries read the source (or another table) beside the row at hand.
fn refuse_subqueries(expr: &Expr) -> Result<()> {
    let found = expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ))
        })
        .map_err(|e| sql_error("", e))?;
    if found {
        return Err(Error::NotRowWise {
            operation: "subquery".into(),
            why: "it reads other rows than the one it is computed for, including rows of \
                  earlier runs that this run skips"
                .into(),
        });
    }
    Ok(())
}

fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    expr.evaluate(batch)
        .and_then(|value| value.into_array(batch.num_rows()))
        .map_err(|e| Error::Map {
            source: BoxError::from(e),
        })
}

fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn sql_error(sql: &str, error: impl std::fmt::Display) -> Error {
    Error::Sql {
        sql: sql.to_string(),
        reason: error.to_string(),
    }
}

/// Names the plan in a planning error that does not carry its statement.
fn with_plan(error: Error, plan: &str) -> Error {
    match error {
        Error::Sql { sql, reason } if sql.is_empty() => Error::Sql {
            sql: plan.to_string(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};

    use super::*;

    fn documents() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("One"),
                    Some("Two"),
                    Some("Three"),
                    None,
                    Some("Five"),
                    Some("Six"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    async fn planned(sql: &str) -> Result<SqlTransform> {
        SqlTransform::new(sql, &documents().schema()).await
    }

    #[tokio::test]
    async fn a_map_only_select_runs_batch_by_batch() {
        let sql =
            "SELECT id, lower(text) AS text, length(text) AS chars FROM source WHERE id % 2 = 0";
        let planned = planned(sql).await.unwrap();
        assert_eq!(
            planned
                .output_schema()
                .fields()
                .iter()
                .map(|f| (f.name().as_str(), f.data_type().clone()))
                .collect::<Vec<_>>(),
            [
                ("id", DataType::Int64),
                ("text", DataType::Utf8),
                ("chars", DataType::Int32)
            ]
        );
        // The output is known before any row is read, so a sink can check it.
        let declared = planned.transform().output_schema(&documents().schema());
        assert_eq!(declared.unwrap(), Some(planned.output_schema().clone()));
        let out = planned.transform().apply(documents()).unwrap();
        assert_eq!(out.schema(), *planned.output_schema());
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values(),
            &[2, 4, 6]
        );
        let text: Vec<Option<&str>> = out.column(1).as_string::<i32>().iter().collect();
        assert_eq!(text, [Some("two"), None, Some("six")]);
        let chars: Vec<Option<i32>> = out.column(2).as_primitive::<Int32Type>().iter().collect();
        assert_eq!(chars, [Some(3), None, Some(3)]);
    }

    #[tokio::test]
    async fn nested_selects_aliases_and_coercion_compile_to_steps() {
        let sql = "SELECT id * 1.5 AS scaled, upper(t) AS t FROM \
                   (SELECT id, text AS t FROM source WHERE id > 1) AS s \
                   WHERE id < 5 AND t IS NOT NULL";
        let planned = planned(sql).await.unwrap();
        let out = planned.transform().apply(documents()).unwrap();
        let scaled: Vec<f64> = out
            .column(0)
            .as_primitive::<arrow_array::types::Float64Type>()
            .values()
            .to_vec();
        assert_eq!(scaled, [3.0, 4.5]);
        let text: Vec<Option<&str>> = out.column(1).as_string::<i32>().iter().collect();
        assert_eq!(text, [Some("TWO"), Some("THREE")]);
    }

    #[tokio::test]
    async fn select_star_keeps_every_column() {
        let planned = planned("SELECT * FROM source WHERE id > 4").await.unwrap();
        assert_eq!(planned.output_schema(), &documents().schema());
        let out = planned.transform().apply(documents()).unwrap();
        assert_eq!(out, documents().slice(4, 2));
    }

    #[tokio::test]
    async fn every_operator_that_is_not_row_wise_is_refused_by_name() {
        let cases = [
            ("SELECT id FROM source ORDER BY id", "sort"),
            ("SELECT id FROM source LIMIT 3", "limit"),
            (
                "SELECT text, count(*) AS n FROM source GROUP BY text",
                "aggregate",
            ),
            ("SELECT max(id) AS top FROM source", "aggregate"),
            ("SELECT DISTINCT text FROM source", "distinct"),
            (
                "SELECT id, row_number() OVER (ORDER BY id) AS n FROM source",
                "window",
            ),
            (
                "SELECT a.id FROM source a JOIN source b ON a.id = b.id",
                "join",
            ),
            (
                "SELECT id FROM source UNION ALL SELECT id FROM source",
                "union",
            ),
            (
                "SELECT id FROM source WHERE id IN (SELECT id FROM source WHERE id > 3)",
                "subquery",
            ),
            (
                "SELECT id, (SELECT max(id) FROM source) AS top FROM source",
                "subquery",
            ),
            (
                "SELECT unnest(make_array(id, id)) AS twice FROM source",
                "unnest",
            ),
            ("SELECT 1 AS one", "a query without the source"),
        ];
        for (sql, operation) in cases {
            match planned(sql).await {
                Err(Error::NotRowWise {
                    operation: refused,
                    why,
                }) => {
                    assert_eq!(refused, operation, "{sql}: {why}");
                    assert!(!why.is_empty());
                }
                other => panic!("{sql}: expected a refusal of `{operation}`, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn statements_that_are_not_queries_or_read_other_tables_do_not_plan() {
        for sql in [
            "CREATE TABLE t AS SELECT * FROM source",
            "INSERT INTO source VALUES (1, 'x')",
            "SET datafusion.execution.batch_size = 1",
            "SELECT id FROM elsewhere",
            "SELECT nope FROM source",
            "SELEC id FROM source",
        ] {
            match planned(sql).await {
                Err(Error::Sql { sql: named, reason }) => {
                    assert_eq!(named, sql);
                    assert!(!reason.is_empty());
                }
                other => panic!("{sql}: expected a planning error, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_plan_over_another_schema_is_refused() {
        let context = SessionContext::new();
        let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        context
            .register_table(
                SOURCE_TABLE,
                Arc::new(MemTable::try_new(other, vec![vec![]]).unwrap()),
            )
            .unwrap();
        let plan = context
            .sql("SELECT id FROM source")
            .await
            .unwrap()
            .into_unoptimized_plan();
        let err = SqlTransform::from_plan(&context, plan, &documents().schema()).unwrap_err();
        assert!(err.to_string().contains("the source's columns"), "{err}");
    }

    /// An async function as a model call would be: `shout(text)` awaits,
    /// then upper-cases, two rows a call; it counts the rows it is given.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Shout {
        signature: datafusion::logical_expr::Signature,
        name: &'static str,
    }

    static SHOUTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl datafusion::logical_expr::ScalarUDFImpl for Shout {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn name(&self) -> &str {
            self.name
        }
        fn signature(&self) -> &datafusion::logical_expr::Signature {
            &self.signature
        }
        fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
            Ok(DataType::Utf8)
        }
        fn invoke_with_args(
            &self,
            _: datafusion::logical_expr::ScalarFunctionArgs,
        ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
            unreachable!("an async function is only invoked through invoke_async_with_args")
        }
    }

    #[async_trait::async_trait]
    impl datafusion::logical_expr::async_udf::AsyncScalarUDFImpl for Shout {
        fn ideal_batch_size(&self) -> Option<usize> {
            Some(2)
        }
        async fn invoke_async_with_args(
            &self,
            args: datafusion::logical_expr::ScalarFunctionArgs,
        ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
            tokio::task::yield_now().await;
            if self.name == "constant" {
                // One value for the whole slice: not what a call may return.
                return Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::Utf8(Some("X".into())),
                ));
            }
            let text = args.args[0].to_array(args.number_rows)?;
            SHOUTED.fetch_add(text.len(), std::sync::atomic::Ordering::SeqCst);
            let loud: StringArray = text
                .as_string::<i32>()
                .iter()
                .map(|t| t.map(str::to_uppercase))
                .collect();
            Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
                loud,
            )))
        }
    }

    fn with_shout() -> SessionContext {
        let context = SessionContext::new();
        for name in ["shout", "constant"] {
            let udf = datafusion::logical_expr::async_udf::AsyncScalarUDF::new(Arc::new(Shout {
                signature: datafusion::logical_expr::Signature::exact(
                    vec![DataType::Utf8],
                    datafusion::logical_expr::Volatility::Volatile,
                ),
                name,
            }));
            context.register_udf(udf.into_scalar_udf());
        }
        context
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        batch
            .column_by_name(column)
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    // One test, so that the call counter sees only its own calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_functions_are_awaited_once_per_row_that_reaches_them() {
        let context = with_shout();
        let schema = documents().schema();

        // In a projection above a filter, named twice: the 5 rows the filter
        // keeps are shouted once each.
        let sql =
            "SELECT id, shout(text) AS loud, length(shout(text)) AS n FROM source WHERE id > 1";
        let planned = SqlTransform::new_in(&context, sql, &schema).await.unwrap();
        assert!(planned.transform().is_async());
        let names: Vec<&str> = planned
            .output_schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "loud", "n"], "the call columns do not show");
        SHOUTED.store(0, std::sync::atomic::Ordering::SeqCst);
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!(SHOUTED.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(out.schema(), *planned.output_schema());
        assert_eq!(
            strings(&out, "loud"),
            [Some("TWO"), Some("THREE"), None, Some("FIVE"), Some("SIX")]
                .map(|s| s.map(String::from))
        );
        assert_eq!(
            out.column(2)
                .as_primitive::<Int32Type>()
                .iter()
                .collect::<Vec<_>>(),
            [Some(3), Some(5), None, Some(4), Some(3)]
        );
        // The synchronous path refuses a transform that awaits.
        assert!(planned.transform().apply(documents()).is_err());

        // In a filter: the call's column is gone after it.
        let sql = "SELECT id FROM source WHERE shout(text) = 'TWO' OR shout(text) = 'SIX'";
        let planned = SqlTransform::new_in(&context, sql, &schema).await.unwrap();
        SHOUTED.store(0, std::sync::atomic::Ordering::SeqCst);
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!(SHOUTED.load(std::sync::atomic::Ordering::SeqCst), 6);
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values().to_vec(),
            [2, 6]
        );
        assert_eq!(out.num_columns(), 1);

        // The conditions of a WHERE that call nothing filter first: ids 5
        // and 6 are shouted, not all six.
        let sql = "SELECT id FROM source WHERE shout(text) = 'SIX' AND id > 4";
        let planned = SqlTransform::new_in(&context, sql, &schema).await.unwrap();
        SHOUTED.store(0, std::sync::atomic::Ordering::SeqCst);
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!(SHOUTED.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values().to_vec(),
            [6]
        );

        // A batch the filter empties calls nothing and fails nothing.
        let sql = "SELECT id, shout(text) AS loud FROM source WHERE id > 100";
        let planned = SqlTransform::new_in(&context, sql, &schema).await.unwrap();
        SHOUTED.store(0, std::sync::atomic::Ordering::SeqCst);
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!((out.num_rows(), out.num_columns()), (0, 2));
        assert_eq!(SHOUTED.load(std::sync::atomic::Ordering::SeqCst), 0);

        // A function that answers a slice with one value is refused by name.
        let sql = "SELECT constant(text) AS c FROM source";
        let planned = SqlTransform::new_in(&context, sql, &schema).await.unwrap();
        let err = planned
            .transform()
            .apply_async(documents())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`constant`") && err.contains("not a scalar"),
            "{err}"
        );

        // A call of a call is refused before any row, with the way out,
        // which plans.
        let err = SqlTransform::new_in(
            &context,
            "SELECT shout(shout(text)) AS x FROM source",
            &schema,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("inner SELECT"), "{err}");
        let nested = "SELECT shout(x) AS y FROM (SELECT shout(text) AS x FROM source)";
        let planned = SqlTransform::new_in(&context, nested, &schema)
            .await
            .unwrap();
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!(strings(&out, "y")[0].as_deref(), Some("ONE"));

        // The context lent is not changed.
        assert!(!context.table_exist(SOURCE_TABLE).unwrap());

        // A DataFrame's plan that ends in a filter gives the source's columns.
        use datafusion::execution::FunctionRegistry;
        use datafusion::prelude::{col, lit};
        let empty = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
        context
            .register_table(SOURCE_TABLE, Arc::new(empty))
            .unwrap();
        let shout = context.udf("shout").unwrap();
        let frame = context
            .table(SOURCE_TABLE)
            .await
            .unwrap()
            .filter(shout.call(vec![col("text")]).eq(lit("FIVE")))
            .unwrap();
        let planned =
            SqlTransform::from_plan(&context, frame.into_unoptimized_plan(), &schema).unwrap();
        let out = planned.transform().apply_async(documents()).await.unwrap();
        assert_eq!(out.schema(), schema);
        assert_eq!(
            out.column(0).as_primitive::<Int64Type>().values().to_vec(),
            [5]
        );
    }
}
