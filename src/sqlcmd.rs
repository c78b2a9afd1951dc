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
    /// The alert store (`cordon run --store`): a directory or an object store URL.
    #[arg(long)]
    store: String,
    /// Configuration whose `[response]` outbox fills the `actions` table.
    #[arg(long)]
    config: Option<PathBuf>,
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

/// The runtime of the API, the SIEM sink and queries.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("runtime: {e}")))
}

/// `cordon sql`.
pub fn sql(a: SqlArgs) -> Result<(), Failure> {
    let location = cordon_query::store::Location::parse(&a.store)
        .map_err(|e| Failure::input(e.to_string()))?;
    if let cordon_query::store::Location::Local(p) = &location {
        if !p.join("alerts").is_dir() {
            return Err(Failure::input(format!(
                "{}: not an alert store (no alerts/ directory; write one with `cordon run --store`)",
                p.display()
            )));
        }
    }
    let actions = match outbox(a.config.as_deref())? {
        Some(o) => o.all().map_err(|e| Failure::input(e.to_string()))?,
        None => Vec::new(),
    };
    let limits = Limits {
        memory: a.memory_mib.max(1) << 20,
        time: a.timeout,
        rows: a.max_rows,
        threads: cores(),
    };
    let fail = |e: sql::SqlError| Failure::input(e.to_string());
    let rt = runtime()?;
    let batches = rt.block_on(async {
        let s = Sql::open_at(&location, limits, &actions).await?;
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
        /// The alert store: a directory or an object store URL.
        #[arg(long)]
        store: String,
        /// Compact a day when it has more files than this.
        #[arg(long, default_value_t = 1)]
        min_files: usize,
    },
}

/// `cordon store …`.
pub fn store(a: StoreAction) -> Result<(), Failure> {
    let StoreAction::Compact { store, min_files } = a;
    let location =
        cordon_query::store::Location::parse(&store).map_err(|e| Failure::input(e.to_string()))?;
    let mut s = cordon_query::store::AlertStore::open_at(location, None)
        .map_err(|e| Failure::input(e.to_string()))?;
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
    /// The alert store: a directory or an object store URL.
    #[arg(long)]
    store: String,
    /// The keys file (`cordon keys create`).
    #[arg(long)]
    keys: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Serve Prometheus `/metrics` on this separate admin listener.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Configuration whose `[response]` outbox the action endpoints use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Append every mutating call here (JSON lines, with the key id and name).
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Memory an analyst's query may use, in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: usize,
    /// Cores analyst SQL may use at once (default: all).
    #[arg(long)]
    query_threads: Option<usize>,
    #[command(flatten)]
    tls: TlsArgs,
}

fn outbox(config: Option<&std::path::Path>) -> Result<Option<cordon_respond::Outbox>, Failure> {
    let Some(c) = config else { return Ok(None) };
    match crate::respond::Config::load(c)?.response {
        Some(r) => cordon_respond::Outbox::open(&r.outbox)
            .map(Some)
            .map_err(|e| Failure::input(e.to_string())),
        None => Ok(None),
    }
}

/// This machine's cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Analyst SQL's share of the machine: `threads` workers of a runtime of its own.
pub struct QueryPool {
    /// The runtime, kept alive as long as the API.
    _runtime: tokio::runtime::Runtime,
}

/// The API's state over a store: keys loaded (at least one), audit log opened, analyst SQL on
/// its own runtime of `query_threads` workers. Keep the returned pool alive with the state.
pub fn api_state(
    store: cordon_query::store::Location,
    keys: &std::path::Path,
    audit: Option<&std::path::Path>,
    memory_mib: usize,
    query_threads: usize,
) -> Result<(cordon_query::api::ApiState, QueryPool), Failure> {
    let k = cordon_query::keys::Keys::load(keys).map_err(Failure::input)?;
    if k.keys.is_empty() {
        return Err(Failure::input(format!(
            "{}: no API keys; create one with `cordon keys create --role admin --name you --keys {}`",
            keys.display(),
            keys.display()
        )));
    }
    store.create().map_err(|e| Failure::input(e.to_string()))?;
    let mut state = cordon_query::api::ApiState::new(store, k);
    state.keys_file = Some(keys.to_path_buf());
    let threads = query_threads.max(1);
    state.limits = Limits {
        memory: memory_mib.max(1) << 20,
        threads,
        ..Limits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("cordon-sql")
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("runtime: {e}")))?;
    state.query_runtime = Some(runtime.handle().clone());
    let state = match audit {
        Some(p) => state.with_audit(p).map_err(Failure::input)?,
        None => state,
    };
    Ok((state, QueryPool { _runtime: runtime }))
}

/// The API's listeners, running on a runtime until a signal.
pub struct ApiServers {
    stop: std::sync::Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

impl ApiServers {
    /// Stops the listeners (they finish the requests in flight).
    pub fn stop(&self) {
        self.stop.notify_waiters();
    }

    /// Waits for SIGINT or SIGTERM, then stops the listeners gracefully.
    pub fn wait(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            interrupted().await;
            self.stop.notify_waiters();
            for t in self.tasks {
                let _ = t.await;
            }
        });
    }
}

/// TLS for the API listener: `--tls-cert`, `--tls-key`, and `--client-ca` for mutual TLS.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Serve the API over HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<cordon_query::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(cordon_query::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// Binds the API listener (HTTPS with `tls`) and the admin listener, if asked, and serves
/// them on `rt`.
pub fn start_api(
    rt: &tokio::runtime::Runtime,
    state: std::sync::Arc<cordon_query::api::ApiState>,
    listen: std::net::SocketAddr,
    admin_listen: Option<std::net::SocketAddr>,
    tls: &TlsArgs,
    render: std::sync::Arc<dyn Fn(&mut cordon_query::metrics::Exposition) + Send + Sync>,
) -> Result<ApiServers, Failure> {
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let tls = tls
        .files()
        .map(|f| f.server_config())
        .transpose()
        .map_err(Failure::input)?;
    let mut bind = |addr: std::net::SocketAddr,
                    router: axum::Router,
                    what: &str,
                    tls: Option<std::sync::Arc<rustls::ServerConfig>>| {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| Failure::input(format!("--{what} {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Failure::input(e.to_string()))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("cordon: {what} on {scheme}://{bound}");
        let stop = stop.clone();
        let shutdown = async move { stop.notified().await };
        let task = match tls {
            None => rt.spawn(async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %e, "listener stopped");
                }
            }),
            Some(config) => {
                let _guard = rt.enter();
                let listener = cordon_query::tls::TlsListener::new(listener, config)
                    .map_err(|e| Failure::input(e.to_string()))?;
                rt.spawn(async move {
                    if let Err(e) = axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!(error = %e, "listener stopped");
                    }
                })
            }
        };
        tasks.push(task);
        Ok::<(), Failure>(())
    };
    bind(listen, cordon_query::api::app(state.clone()), "listen", tls)?;
    if let Some(addr) = admin_listen {
        bind(
            addr,
            cordon_query::api::admin_app(state, render),
            "admin-listen",
            None,
        )?;
    }
    Ok(ApiServers { stop, tasks })
}

/// `cordon serve`.
pub fn serve(a: ServeArgs) -> Result<(), Failure> {
    let location = cordon_query::store::Location::parse(&a.store)
        .map_err(|e| Failure::input(e.to_string()))?;
    let (mut state, pool) = api_state(
        location,
        &a.keys,
        a.audit.as_deref(),
        a.memory_mib,
        a.query_threads.unwrap_or_else(cores),
    )?;
    state.outbox = outbox(a.config.as_deref())?.map(std::sync::Arc::new);
    let rt = runtime()?;
    let servers = start_api(
        &rt,
        std::sync::Arc::new(state),
        a.listen,
        a.admin_listen,
        &a.tls,
        std::sync::Arc::new(|_: &mut cordon_query::metrics::Exposition| {}),
    )?;
    servers.wait(&rt);
    drop(pool);
    Ok(())
}
