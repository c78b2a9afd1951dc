//! SQL over the alert store, with DataFusion. Tables:
//!
//! - `alerts`: the store's Parquet files (the `date` partition column comes from the directory
//!   names, so `WHERE date = '…'` reads one day's files only);
//! - `alert_events`: the lifecycle stream (ack, assign, resolve, suppress), same layout;
//! - `actions`: the response outbox's actions as of when the session opened (parameters with
//!   tokens redacted);
//! - `alert_status`: a view, each alert with the status of its latest lifecycle event (`new`
//!   when none), its assignee and who changed it last.
//!
//! Analyst SQL is read-only — only queries (`SELECT`, `WITH`, `EXPLAIN`): DDL, DML and
//! statements such as `SET` or `COPY` are refused before planning — and runs under three
//! limits, so a runaway query fails with a clear error instead of taking the process with it:
//! a memory pool (operators that would exceed it fail), a time limit, and a row limit on
//! what is returned.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::store::{alerts_schema, Location};

/// The `alert_status` view: each alert with its current status.
const STATUS_VIEW: &str = "CREATE VIEW alert_status AS \
SELECT a.alert_id, a.time, a.date, a.rule_id, a.title, a.severity, a.severity_id, a.agent_id, \
       a.session_id, a.target, a.message, a.event_count, a.playbook, COALESCE(l.status, 'new') AS status, l.assignee, \
       l.time AS status_time, l.actor_name AS status_by \
FROM alerts a LEFT JOIN ( \
  SELECT alert_id, status, time, actor_name, assignee FROM ( \
    SELECT alert_id, status, time, actor_name, \
      first_value(assignee) OVER (PARTITION BY alert_id \
        ORDER BY CASE WHEN assignee IS NULL THEN 1 ELSE 0 END, time DESC, event_id DESC) AS assignee, \
      row_number() OVER (PARTITION BY alert_id ORDER BY time DESC, event_id DESC) AS rn \
    FROM alert_events) WHERE rn = 1 \
) l ON a.alert_id = l.alert_id";

/// The schema of the `actions` table.
pub fn actions_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("action_id", DataType::Utf8, false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("playbook", DataType::Utf8, false),
        Field::new("step", DataType::Int32, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, false),
        Field::new("attempts", DataType::Int32, false),
        Field::new("created", ts(), false),
        Field::new("updated", ts(), false),
        Field::new("expires", ts(), true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("decided_by", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("params", DataType::Utf8, false),
    ]))
}

/// Actions (redacted) as a batch of [`actions_schema`].
pub fn actions_batch(
    actions: &[cordon_respond::ActionRecord],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMillisecondArray};
    let a: Vec<cordon_respond::ActionRecord> = actions.iter().map(|r| r.redacted()).collect();
    let s = |f: &dyn Fn(&cordon_respond::ActionRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(a.iter().map(f).collect::<Vec<_>>()))
    };
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
    };
    let i = |f: &dyn Fn(&cordon_respond::ActionRecord) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from(a.iter().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_new(
        actions_schema(),
        vec![
            s(&|r| Some(r.id.clone())),
            s(&|r| Some(r.alert_id.clone())),
            s(&|r| Some(r.rule_id.clone())),
            s(&|r| Some(r.playbook.clone())),
            i(&|r| r.step as i32),
            s(&|r| Some(r.action.name().to_owned())),
            s(&|r| r.target.clone()),
            s(&|r| Some(r.state.name().to_owned())),
            i(&|r| r.attempts as i32),
            ts(a.iter().map(|r| Some(r.created_ms)).collect()),
            ts(a.iter().map(|r| Some(r.updated_ms)).collect()),
            ts(a.iter().map(|r| r.expires_ms).collect()),
            s(&|r| r.last_error.clone()),
            s(&|r| r.decided_by.clone()),
            s(&|r| r.reason.clone()),
            s(&|r| serde_json::to_string(&r.params).ok()),
        ],
    )
}

/// Limits of one query.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Memory the query's operators may hold (bytes).
    pub memory: usize,
    /// Wall-clock time.
    pub time: Duration,
    /// Rows returned at most.
    pub rows: usize,
    /// Partitions a query's operators run in parallel (its share of the cores).
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 512 << 20,
            time: Duration::from_secs(30),
            rows: 10_000,
            threads: 2,
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not a read-only query.
    #[error("only queries are allowed (SELECT, WITH, EXPLAIN): {0}")]
    NotReadOnly(String),
    /// It needed more memory than the pool.
    #[error("the query needs more memory than its limit of {limit} MiB ({detail}); filter on date, select fewer columns or aggregate")]
    Memory {
        /// The limit, MiB.
        limit: usize,
        /// DataFusion's message.
        detail: String,
    },
    /// It ran out of time.
    #[error("the query ran longer than its limit of {0:?} and was cancelled")]
    Timeout(Duration),
    /// It returned more rows than allowed.
    #[error("the query returns more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// Anything else (syntax, unknown column, …), with DataFusion's message.
    #[error("{0}")]
    Query(String),
}

/// SQL over a store.
pub struct Sql {
    ctx: SessionContext,
    limits: Limits,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sql").field("limits", &self.limits).finish()
    }
}

impl Sql {
    /// A session over the local store at `root`, with its limits and no actions.
    pub async fn open(root: &std::path::Path, limits: Limits) -> Result<Sql, SqlError> {
        Sql::open_at(&Location::Local(root.to_path_buf()), limits, &[]).await
    }

    /// A session over the store at a location, with its limits and the outbox's actions.
    pub async fn open_at(
        location: &Location,
        limits: Limits,
        actions: &[cordon_respond::ActionRecord],
    ) -> Result<Sql, SqlError> {
        let q = |e: datafusion::error::DataFusionError| SqlError::Query(e.to_string());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory, 1.0)
            .build_arc()
            .map_err(q)?;
        let config = SessionConfig::new()
            .with_target_partitions(limits.threads.max(1))
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        location
            .create()
            .map_err(|e| SqlError::Query(e.to_string()))?;
        if let Some((base, store)) = location.object_store() {
            ctx.register_object_store(&base, store);
        }
        for (table, schema) in [
            ("alerts", alerts_schema()),
            ("alert_events", crate::lifecycle::schema()),
        ] {
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(vec![(
                    "date".to_owned(),
                    arrow::datatypes::DataType::Utf8,
                )]);
            ctx.register_listing_table(
                table,
                location.table_url(table),
                options,
                Some(schema),
                None,
            )
            .await
            .map_err(q)?;
        }
        let batch = actions_batch(actions).map_err(|e| SqlError::Query(e.to_string()))?;
        let mem = datafusion::datasource::MemTable::try_new(actions_schema(), vec![vec![batch]])
            .map_err(q)?;
        ctx.register_table("actions", Arc::new(mem)).map_err(q)?;
        ctx.sql(STATUS_VIEW).await.map_err(q)?;
        Ok(Sql { ctx, limits })
    }

    /// Runs a read-only query under the limits.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        self.query_with(sql, Vec::new()).await
    }

    /// Runs a read-only query with `$1, $2, …` bound to `params` — values never become SQL
    /// text, so filters cannot inject.
    pub async fn query_with(
        &self,
        sql: &str,
        params: Vec<datafusion::scalar::ScalarValue>,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let explain = read_only(sql)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let classify = |e: datafusion::error::DataFusionError| {
            let text = e.to_string();
            if text.contains("Resources exhausted") || text.contains("ResourcesExhausted") {
                SqlError::Memory {
                    limit: self.limits.memory >> 20,
                    detail: text,
                }
            } else if text.contains("not supported") && text.contains("SQLOptions")
                || text.contains("DDL not supported")
                || text.contains("DML not supported")
                || text.contains("Statement not supported")
            {
                SqlError::NotReadOnly(text)
            } else {
                SqlError::Query(text)
            }
        };
        let work = async {
            let mut df = self
                .ctx
                .sql_with_options(sql, options)
                .await
                .map_err(classify)?;
            if !params.is_empty() {
                df = df.with_param_values(params).map_err(classify)?;
            }
            // The row limit is a LIMIT on top of the query (an EXPLAIN must stay the root).
            let df = if explain {
                df
            } else {
                df.limit(0, Some(self.limits.rows + 1)).map_err(classify)?
            };
            df.collect().await.map_err(classify)
        };
        let batches = tokio::time::timeout(self.limits.time, work)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.time))??;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > self.limits.rows {
            return Err(SqlError::TooManyRows(self.limits.rows));
        }
        Ok(batches)
    }
}

/// Accepts exactly one query (`SELECT`, `WITH`, `EXPLAIN` of a query); anything else is
/// refused before planning, naming what it was. DataFusion's `SQLOptions` check the plan
/// again. Returns whether it is an `EXPLAIN`.
pub fn read_only(sql: &str) -> Result<bool, SqlError> {
    use datafusion::sql::parser::{DFParser, Statement as Df};
    use datafusion::sql::sqlparser::ast::Statement as S;
    let stmts = DFParser::parse_sql(sql).map_err(|e| SqlError::Query(e.to_string()))?;
    if stmts.len() != 1 {
        return Err(SqlError::NotReadOnly(format!(
            "{} statements; send one query at a time",
            stmts.len()
        )));
    }
    let query = |s: &S| matches!(s, S::Query(_));
    let (ok, explain) = match &stmts[0] {
        Df::Statement(s) => match s.as_ref() {
            S::Explain { statement, .. } => (query(statement), true),
            s => (query(s), false),
        },
        Df::Explain(e) => match e.statement.as_ref() {
            Df::Statement(s) => (query(s), true),
            _ => (false, true),
        },
        _ => (false, false),
    };
    if ok {
        return Ok(explain);
    }
    let what: String = sql
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    Err(SqlError::NotReadOnly(format!("{what} … is not a query")))
}

/// Batches as a text table.
pub fn to_table(batches: &[RecordBatch]) -> Result<String, SqlError> {
    arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .map_err(|e| SqlError::Query(e.to_string()))
}

/// Batches as CSV with a header.
pub fn to_csv(batches: &[RecordBatch]) -> Result<Vec<u8>, SqlError> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in batches {
            w.write(b).map_err(|e| SqlError::Query(e.to_string()))?;
        }
    }
    Ok(out)
}

/// Batches as a JSON array of objects.
pub fn to_json(batches: &[RecordBatch]) -> Result<Vec<u8>, SqlError> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(b).map_err(|e| SqlError::Query(e.to_string()))?;
    }
    w.finish().map_err(|e| SqlError::Query(e.to_string()))?;
    let out = w.into_inner();
    Ok(if out.is_empty() { b"[]".to_vec() } else { out })
}
