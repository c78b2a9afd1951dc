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

/// `cordon keys …`.
#[derive(Subcommand)]
pub enum KeysAction {
    /// Create an API key; it is printed once, the keys file keeps only its hash.
    Create {
        /// viewer, analyst, responder or admin.
        #[arg(long)]
        role: cordon_query::keys::Role,
        /// Who it is for (shown in the audit log).
        #[arg(long)]
        name: String,
        /// The keys file.
        #[arg(long)]
        keys: PathBuf,
    },
    /// List the keys (ids, roles, names; never the keys).
    List {
        /// The keys file.
        #[arg(long)]
        keys: PathBuf,
    },
}

/// `cordon keys …`.
pub fn keys(a: KeysAction) -> Result<(), Failure> {
    match a {
        KeysAction::Create { role, name, keys } => {
            let mut k = cordon_query::keys::Keys::load(&keys).map_err(Failure::input)?;
            let (key, stored) = k.create(role, &name);
            k.save(&keys).map_err(Failure::input)?;
            eprintln!(
                "created {} ({:?}) for {name}; the key is shown once:",
                stored.id, stored.role
            );
            println!("{key}");
            Ok(())
        }
        KeysAction::List { keys } => {
            let k = cordon_query::keys::Keys::load(&keys).map_err(Failure::input)?;
            for s in k.keys {
                println!(
                    "{}  {:<9} {}  {}",
                    s.id,
                    format!("{:?}", s.role).to_lowercase(),
                    s.created,
                    s.name
                );
            }
            Ok(())
        }
    }
}

/// `cordon serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The alert store.
    #[arg(long)]
    store: PathBuf,
    /// The keys file (`cordon keys create`).
    #[arg(long)]
    keys: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Configuration whose `[response]` outbox the action endpoints use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Append every mutating call here (JSON lines, with the key id and name).
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Memory an analyst's query may use, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: usize,
}

/// `cordon serve`.
pub fn serve(a: ServeArgs) -> Result<(), Failure> {
    let keys = cordon_query::keys::Keys::load(&a.keys).map_err(Failure::input)?;
    if keys.keys.is_empty() {
        return Err(Failure::input(format!(
            "{}: no API keys; create one with `cordon keys create --role admin --name you --keys {}`",
            a.keys.display(),
            a.keys.display()
        )));
    }
    let outbox = match &a.config {
        Some(c) => match crate::respond::Config::load(c)?.response {
            Some(r) => Some(std::sync::Arc::new(
                cordon_respond::Outbox::open(&r.outbox)
                    .map_err(|e| Failure::input(e.to_string()))?,
            )),
            None => None,
        },
        None => None,
    };
    let audit = a
        .audit
        .as_ref()
        .map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(std::sync::Mutex::new)
                .map_err(|e| Failure::input(format!("{}: {e}", p.display())))
        })
        .transpose()?;
    std::fs::create_dir_all(a.store.join("alerts"))
        .map_err(|e| Failure::input(format!("{}: {e}", a.store.display())))?;
    let state = std::sync::Arc::new(cordon_query::api::ApiState {
        store: a.store.clone(),
        keys,
        outbox,
        limits: Limits {
            memory: a.memory_mib.max(1) << 20,
            ..Limits::default()
        },
        audit,
    });
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|e| Failure::input(format!("{}: {e}", a.listen)))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Failure::input(e.to_string()))?;
        eprintln!("cordon: API on http://{bound}");
        axum::serve(listener, cordon_query::api::app(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Failure::input(e.to_string()))
    })
}
