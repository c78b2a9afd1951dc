//! `cordon sql` and `cordon store`: read-only SQL over the Parquet alert store, under memory,
//! time and row limits, printed as a table, CSV or JSON; and store maintenance.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use cordon_query::sql::{self, Limits, Sql};

use crate::Failure;

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// An aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// `cordon sql`.
#[derive(Args)]
pub struct SqlArgs {
    /// The query (SELECT, WITH or EXPLAIN), over the table `alerts`.
    query: String,
    /// The alert store (`cordon run --store DIR`).
    #[arg(long)]
    store: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Output,
    /// Memory the query may use, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: usize,
    /// Time the query may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Rows the query may return.
    #[arg(long, default_value_t = 10_000)]
    max_rows: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("runtime: {e}")))
}

/// `cordon sql`.
pub fn sql(a: SqlArgs) -> Result<(), Failure> {
    if !a.store.join("alerts").is_dir() {
        return Err(Failure::input(format!(
            "{}: not an alert store (no alerts/ directory; write one with `cordon run --store`)",
            a.store.display()
        )));
    }
    let limits = Limits {
        memory: a.memory_mib.max(1) << 20,
        time: a.timeout,
        rows: a.max_rows,
    };
    let fail = |e: sql::SqlError| Failure::input(e.to_string());
    let rt = runtime()?;
    let batches = rt.block_on(async {
        let s = Sql::open(&a.store, limits).await?;
        s.query(&a.query).await
    });
    let batches = batches.map_err(fail)?;
    match a.format {
        Output::Table => println!("{}", sql::to_table(&batches).map_err(fail)?),
        Output::Csv => print!(
            "{}",
            String::from_utf8_lossy(&sql::to_csv(&batches).map_err(fail)?)
        ),
        Output::Json => println!(
            "{}",
            String::from_utf8_lossy(&sql::to_json(&batches).map_err(fail)?)
        ),
    }
    Ok(())
}

/// `cordon store …`.
#[derive(Subcommand)]
pub enum StoreAction {
    /// Merge each day's small Parquet files into one.
    Compact {
        /// The alert store.
        #[arg(long)]
        store: PathBuf,
        /// Compact a day when it has more files than this.
        #[arg(long, default_value_t = 1)]
        min_files: usize,
    },
}

/// `cordon store …`.
pub fn store(a: StoreAction) -> Result<(), Failure> {
    let StoreAction::Compact { store, min_files } = a;
    let mut s =
        cordon_query::store::AlertStore::open(&store).map_err(|e| Failure::input(e.to_string()))?;
    let n = s
        .compact(min_files)
        .map_err(|e| Failure::input(e.to_string()))?;
    println!("{n} day partitions compacted");
    Ok(())
}
