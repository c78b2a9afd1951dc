//! The subcommands that are plain wiring: run, rules, generate, fingerprint, eval.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use cordon_ingest::fingerprint::fingerprint_text;
use cordon_ingest::generate::{generate as gen, parse_attacks, GenConfig};
use cordon_ingest::sources::file::DEFAULT_MAX_RECORD;
use cordon_ingest::{DeadLetterSink, Format};
use cordon_query::{evaluate, AlertIndex, Labels};
use cordon_respond::{AlertSink, JsonLinesSink};
use cordon_rules::RuleSet;

use crate::pipeline::{run_files, Input};
use crate::Failure;

/// `cordon run`.
#[derive(Args)]
pub struct RunArgs {
    /// Input files or directories of JSON lines (plain or .gz), or `-` for stdin.
    #[arg(long, short, required_unless_present = "kafka", num_args = 1..)]
    input: Vec<PathBuf>,
    /// Read from Kafka as the `[kafka]` section of `--config` says, until SIGTERM or SIGINT.
    #[arg(long, requires = "config", conflicts_with = "input")]
    kafka: bool,
    /// Rule files or directories (default: the built-in rule pack).
    #[arg(long, short)]
    rules: Vec<PathBuf>,
    /// Where to write alerts (OCSF JSON lines), `-` for stdout.
    #[arg(long, short, default_value = "-")]
    alerts: PathBuf,
    /// Input format.
    #[arg(long, short, default_value = "native", value_parser = parse_format)]
    format: Format,
    /// Write records that fail to decode here (JSON lines with source, line, reason, raw).
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// Largest accepted record, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD)]
    max_record_bytes: usize,
    /// How far behind the latest event time an event may arrive and still be put in order;
    /// later ones are dead-lettered.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    allowed_lateness: std::time::Duration,
    /// Per-agent baseline profiles: restored from this file at start (a damaged or foreign
    /// one is reported and the run starts fresh), written back at the end.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The field that puts agents in a peer group (default `gen_ai.agent.name`; e.g. a role
    /// field): a new agent starts from a warm peer's profile.
    #[arg(long)]
    peer_field: Option<String>,
    /// Agents idle this long (event time) leave memory for the compact cold tier (default 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_after: Option<std::time::Duration>,
    /// Also append alerts to this Parquet alert store (`alerts/date=YYYY-MM-DD/*.parquet`),
    /// a directory or an object store URL (`s3://bucket/prefix`), queryable with `cordon sql`.
    #[arg(long)]
    store: Option<String>,
    /// Serve the HTTP API (and console) here while running, and after the input ends until
    /// interrupted; needs `--store` and `--keys`.
    #[arg(long, requires_all = ["store", "keys"])]
    listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus `/metrics` on this separate admin listener (needs `--keys`).
    #[arg(long, requires = "keys")]
    admin_listen: Option<std::net::SocketAddr>,
    /// The API keys file (`cordon keys create`).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Append every mutating API call here (JSON lines, with the key id and name).
    #[arg(long)]
    audit: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::sqlcmd::TlsArgs,
    /// Cores analyst SQL may use at once (default: all but one, so a heavy query never takes
    /// the pipeline's core).
    #[arg(long)]
    query_threads: Option<usize>,
    /// Configuration (`cordon.toml`): its `[response]` section runs playbooks on alerts.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Record the actions playbooks would take without calling any target.
    #[arg(long)]
    dry_run: bool,
    /// At the end of the input, how long to wait for pending actions to be delivered.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    response_timeout: std::time::Duration,
    /// Write the run's counters as JSON here (`-` for stderr): records, events, dead letters,
    /// out-of-order events, and per rule: matched, alerts, suppressed, excepted.
    #[arg(long)]
    stats: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

/// Loads rules from paths, or the built-in pack when none are given.
pub fn load_rules(paths: &[PathBuf]) -> Result<RuleSet, Failure> {
    let set = match crate::rule_paths(paths) {
        None => RuleSet::builtin(),
        Some(p) => RuleSet::load(p),
    };
    set.map_err(|e| {
        Failure::input(format!(
            "{} error{} in rules:\n{e}",
            e.0.len(),
            if e.0.len() == 1 { "" } else { "s" }
        ))
    })
}

/// `cordon run`.
pub fn run(a: RunArgs) -> Result<(), Failure> {
    let set = load_rules(&a.rules)?;
    let template = cordon_detect::engines::Template {
        lateness: a.allowed_lateness,
        peer_field: a.peer_field.clone(),
        idle_after: a.idle_after,
    };
    let engines = std::sync::Arc::new(cordon_detect::engines::Engines::new(set, template.clone()));
    if !a.kafka {
        // A file run has one engine; its baselines may start from a profile snapshot.
        let mut inner = engines.lock();
        let mut engine = inner.fresh();
        if let Some(state) = a.state.as_ref().filter(|p| p.exists()) {
            match cordon_detect::profile::Profiles::restore(state) {
                Ok(mut p) => {
                    if let Some(f) = &a.peer_field {
                        p = p.with_peer_field(f);
                    }
                    if let Some(d) = a.idle_after {
                        p = p.with_idle_after(d);
                    }
                    engine = engine.with_profiles(p);
                }
                Err(e) => eprintln!("warning: {e}; starting with fresh baselines"),
            }
        }
        inner.insert("", engine);
    } else if a.state.is_some() {
        return Err(Failure::input(
            "--state: a Kafka run keeps each partition's state (baselines included) in [kafka] state_store",
        ));
    }
    let progress = std::sync::Arc::new(cordon_detect::engines::Progress::default());
    let mut dead =
        DeadLetterSink::new(a.dead_letter.as_deref()).map_err(|e| Failure::input(e.to_string()))?;
    let sink = if a.alerts.as_os_str() == "-" {
        JsonLinesSink::stdout()
    } else {
        JsonLinesSink::file(&a.alerts).map_err(|e| Failure::input(e.to_string()))?
    };
    let config = a
        .config
        .as_deref()
        .map(crate::respond::Config::load)
        .transpose()?;
    let location = a
        .store
        .as_deref()
        .map(cordon_query::store::Location::parse)
        .transpose()
        .map_err(|e| Failure::input(e.to_string()))?;
    let store = location
        .clone()
        .map(|l| {
            cordon_query::store::AlertStore::open_at(
                l,
                Some(cordon_query::store::DEFAULT_FLUSH_INTERVAL),
            )
        })
        .transpose()
        .map_err(|e| Failure::input(e.to_string()))?;
    let (enforce_tx, enforce_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut enforce_rx = enforce_rx;
    let (results_tx, results_rx) = tokio::sync::mpsc::unbounded_channel();
    let wants_results = a.kafka
        && config
            .as_ref()
            .and_then(|c| c.kafka.as_ref())
            .is_some_and(|k| k.actions_topic.is_some());
    let running = match config.as_ref().and_then(|c| c.response.as_ref()) {
        Some(r) => {
            let mut responder =
                crate::respond::responder(r, a.dry_run)?.with_enforcement(enforce_tx);
            if wants_results {
                responder = responder.with_results(results_tx);
            }
            Some(crate::respond::Running::start(responder)?)
        }
        None => None,
    };
    let services = crate::sqlcmd::runtime()?;
    let siem = config
        .as_ref()
        .and_then(|c| c.siem.as_ref())
        .map(|s| cordon_respond::siem::SiemSink::start(s, services.handle()))
        .transpose()
        .map_err(Failure::input)?;
    let mut kafka = if a.kafka {
        let cfg = config
            .as_ref()
            .and_then(|c| c.kafka.as_ref())
            .ok_or_else(|| Failure::input("--kafka: the configuration has no [kafka] section"))?;
        let input =
            cordon_kafka::KafkaInput::open(cfg, engines.clone(), services.handle().clone())?;
        if input.wants_action_results() {
            input.action_results(results_rx);
        }
        Some(input)
    } else {
        None
    };
    let mut api = None;
    let mut query_pool = None;
    if let (Some(listen), Some(keys), Some(location)) = (a.listen, &a.keys, &location) {
        let (mut state, pool) = crate::sqlcmd::api_state(
            location.clone(),
            keys,
            a.audit.as_deref(),
            512,
            a.query_threads
                .unwrap_or_else(|| crate::sqlcmd::cores().saturating_sub(1).max(1)),
        )?;
        query_pool = Some(pool);
        if let Some(r) = &running {
            state.outbox = Some(r.responder.outbox_arc());
            let responder = r.responder.clone();
            state.on_decision = Some(std::sync::Arc::new(move || responder.wake()));
        }
        let kafka_stats = kafka.as_ref().map(|k| k.stats());
        state.live = Some(std::sync::Arc::new(crate::live::EngineLive {
            engines: engines.clone(),
            rule_paths: a.rules.clone(),
            ready: kafka_stats.clone().map(|k| {
                std::sync::Arc::new(move || k.ready())
                    as std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>
            }),
        }));
        let metrics = crate::live::MetricsSources {
            progress: progress.clone(),
            engines: engines.clone(),
            kafka: kafka_stats,
            store: store.as_ref().map(|s| s.stats_handle()),
            responder: running.as_ref().map(|r| r.responder.clone()),
            siem: siem.as_ref().map(|s| s.stats()),
        };
        api = Some(crate::sqlcmd::start_api(
            &services,
            std::sync::Arc::new(state),
            listen,
            a.admin_listen,
            &a.tls,
            std::sync::Arc::new(move |out: &mut cordon_query::metrics::Exposition| {
                metrics.render(out)
            }),
        )?);
    }
    // Shared with the Kafka input's rebalance callback, which makes them durable before it
    // hands partitions over.
    let sink = std::sync::Arc::new(std::sync::Mutex::new(sink));
    // Appends and flushes take `&self` (the store locks inside): the committer's flush does
    // not stall the pipeline thread's appends.
    let store = std::sync::Arc::new(store);
    let before_event = |engines: &mut cordon_detect::engines::Inner| {
        while let Ok(e) = enforce_rx.try_recv() {
            engines.enforce(e);
        }
    };
    let on_alert = |alert: cordon_detect::Alert| -> anyhow::Result<()> {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .emit(&alert)?;
        if let Some(s) = &siem {
            s.send(alert.to_ocsf());
        }
        if let Some(s) = store.as_ref() {
            s.append(alert.clone())?;
        }
        if let Some(r) = &running {
            // Durable in the outbox before the next event is read.
            r.responder.submit(&alert)?;
        }
        Ok(())
    };
    let stats = if let Some(input) = &kafka {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        services.spawn(async move {
            crate::sqlcmd::interrupted().await;
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        let hooks = cordon_kafka::Hooks {
            durable: Box::new({
                let (sink, store) = (sink.clone(), store.clone());
                move || {
                    // Synced outside the sink's lock: the pipeline thread goes on emitting.
                    let unsynced = sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .flush_unsynced()?;
                    if let Some(u) = unsynced {
                        u.sync()?;
                    }
                    if let Some(s) = store.as_ref() {
                        s.flush()?;
                    }
                    Ok(())
                }
            }),
            assigned: Box::new({
                let store = store.clone();
                move || {
                    // Another instance may have stored alerts of these partitions before it
                    // lost them: their replay here must not store them twice.
                    if let Some(s) = store.as_ref() {
                        s.remember_recent()?;
                    }
                    Ok(())
                }
            }),
        };
        let r = input.run(&progress, &stop, before_event, on_alert, hooks);
        if let Some(k) = kafka.take() {
            k.close();
        }
        r?
    } else {
        run_files(
            Input {
                paths: &a.input,
                format: a.format,
                max_record: a.max_record_bytes,
                lateness: a.allowed_lateness,
            },
            &engines,
            &progress,
            &mut dead,
            before_event,
            on_alert,
        )?
    };
    drop(kafka);
    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    sink.flush().map_err(|e| Failure::input(e.to_string()))?;
    if let Some(s) = store.as_ref() {
        s.flush().map_err(|e| Failure::input(e.to_string()))?;
    }
    if let (Some(api), true) = (&api, a.kafka) {
        // Kafka input ends on the signal; the API goes with it.
        api.stop();
    }
    if let Some(api) = api.filter(|_| !a.kafka) {
        eprintln!(
            "cordon: input done ({} events, {} alerts); serving the API until interrupted",
            stats.events, stats.alerts
        );
        api.wait(&services);
    }
    drop(query_pool);
    if let Some(s) = siem {
        if !services.block_on(s.close(a.response_timeout)) {
            eprintln!(
                "warning: alerts still queued for the SIEM after {:?}",
                a.response_timeout
            );
        }
    }
    let mut response_stats = None;
    if let Some(r) = running {
        let responder = r.responder.clone();
        let settled = r.finish(a.response_timeout)?;
        if !settled {
            eprintln!(
                "warning: actions still pending after {:?}; they stay in the outbox and resume on the next start",
                a.response_timeout
            );
        }
        response_stats = Some(responder.stats());
    }
    let engines = engines.lock();
    if let (Some(state), Some(engine)) = (&a.state, engines.get_existing("")) {
        engine.profiles().snapshot(state).map_err(Failure::input)?;
    }
    let engine = engines.view();
    drop(engines);
    let rule_count = engine.rules().len();
    if let Some(path) = &a.stats {
        let rules: serde_json::Map<String, serde_json::Value> = engine
            .rules()
            .iter()
            .zip(&engine.rule_stats())
            .map(|(r, s)| {
                (
                    r.id.clone(),
                    serde_json::json!({
                        "matched": s.matched,
                        "alerts": s.alerts,
                        "suppressed": s.suppressed,
                        "excepted": s.excepted,
                    }),
                )
            })
            .collect();
        let state: serde_json::Map<String, serde_json::Value> = engine
            .state_stats(true)
            .into_iter()
            .map(|(id, s)| (id, serde_json::json!(s)))
            .collect();
        let doc = serde_json::json!({
            "pipeline": stats,
            "engine": engine.stats(),
            "suppression_keys_evicted": engine.suppression_evictions(),
            "rules": rules,
            "state": state,
            "profiles": engine.profile_stats(),
            "response": response_stats,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Failure::input(e.to_string()))?;
        if path.as_os_str() == "-" {
            eprintln!("{text}");
        } else {
            fs::write(path, text + "\n")
                .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
        }
    }
    let duplicates = engine.stats().duplicates;
    eprintln!(
        "cordon: {} records, {} events{}, {} dead-lettered{}, {} alerts from {} rules",
        stats.records,
        stats.events,
        if duplicates > 0 {
            format!(" ({duplicates} duplicates of events already read, dropped)")
        } else {
            String::new()
        },
        stats.dead_lettered,
        match &a.dead_letter {
            Some(p) if stats.dead_lettered > 0 => format!(" (see {})", p.display()),
            None if stats.dead_lettered > 0 => " (pass --dead-letter PATH to keep them)".into(),
            _ => String::new(),
        },
        stats.alerts,
        rule_count
    );
    Ok(())
}

/// `cordon rules …`.
#[derive(Subcommand)]
pub enum RulesAction {
    /// Parse and type-check rule files; print every error with file, line and column.
    Check {
        /// Rule files or directories (default: the built-in pack).
        paths: Vec<PathBuf>,
    },
    /// Run the rules' inline tests.
    Test {
        /// Rule files or directories (default: the built-in pack).
        paths: Vec<PathBuf>,
    },
    /// List the rules.
    List {
        /// Rule files or directories (default: the built-in pack).
        paths: Vec<PathBuf>,
    },
    /// List the fields rules can read: the event schema's core fields and the baseline
    /// features the engine computes.
    Fields,
}

/// `cordon rules …`.
pub fn rules(action: RulesAction) -> Result<(), Failure> {
    match action {
        RulesAction::Fields => {
            for f in cordon_ingest::CoreField::ALL {
                let kind = format!("{:?}", f.kind()).to_lowercase();
                println!("{:<32} {:<13} {}", f.name(), kind, f.doc());
            }
            for (name, b) in cordon_ingest::BaselineField::ALL {
                let kind = match b.kind() {
                    cordon_ingest::BaselineKind::Score => "score 0..1",
                    cordon_ingest::BaselineKind::Flag => "boolean",
                    cordon_ingest::BaselineKind::Frequency => "share 0..1",
                };
                println!("{name:<32} {kind:<13} {}", b.doc());
            }
            Ok(())
        }
        RulesAction::Check { paths } => {
            let set = match load_rules(&paths) {
                Ok(s) => s,
                Err(f) => return Err(Failure::findings(f.message)),
            };
            println!(
                "ok: {} rules, {} macros, {} lists",
                set.rules.len(),
                set.library.macros.len(),
                set.library.lists.len()
            );
            Ok(())
        }
        RulesAction::Test { paths } => {
            let set = load_rules(&paths)?;
            let mut failed = 0;
            let mut cases = 0;
            for r in &set.rules {
                cases += r.test_cases();
                let f = cordon_detect::run_rule_tests(r);
                if f.is_empty() {
                    println!("ok   {}", r.id);
                } else {
                    for msg in &f {
                        println!("FAIL {msg}");
                    }
                    failed += f.len();
                }
            }
            println!("{} passed, {failed} failed", cases - failed);
            if failed > 0 {
                return Err(Failure::findings(format!("{failed} rule test(s) failed")));
            }
            Ok(())
        }
        RulesAction::List { paths } => {
            let set = load_rules(&paths)?;
            for r in &set.rules {
                println!(
                    "{:<40} {:<13} {}  ({}:{})",
                    r.id,
                    r.severity.name(),
                    r.title,
                    r.origin.file.display(),
                    r.origin.line
                );
            }
            Ok(())
        }
    }
}

/// `cordon generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Seed: the same seed gives the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of agents.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Simulated period, e.g. 1h, 8h, 2days.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Start of the period (RFC 3339).
    #[arg(long, default_value = "2026-11-02T08:00:00Z")]
    start: String,
    /// Attack scenarios to mix in: `all`, `none`, or a comma-separated list.
    #[arg(long, default_value = "all")]
    attacks: String,
    /// Attack sessions per scenario.
    #[arg(long, default_value_t = 2)]
    attack_sessions: usize,
    /// Output directory (gets events.jsonl and labels.json).
    #[arg(long)]
    out: PathBuf,
}

/// Builds a generator config from flags.
pub fn gen_config(
    seed: u64,
    agents: usize,
    duration: std::time::Duration,
    start: &str,
    attacks: &str,
    attack_sessions: usize,
) -> Result<GenConfig, Failure> {
    let start: jiff::Timestamp = start.parse().map_err(|e| {
        Failure::input(format!(
            "--start {start:?}: expected an RFC 3339 time ({e})"
        ))
    })?;
    let attacks = parse_attacks(attacks).map_err(|e| Failure::input(format!("--attacks: {e}")))?;
    if agents == 0 {
        return Err(Failure::input("--agents must be at least 1"));
    }
    Ok(GenConfig {
        seed,
        agents,
        start_nanos: start.as_nanosecond() as i64,
        duration_nanos: duration.as_nanos().min(i64::MAX as u128) as i64,
        attacks,
        sessions_per_attack: attack_sessions,
        ..GenConfig::default()
    })
}

/// `cordon generate`.
pub fn generate(a: GenerateArgs) -> Result<(), Failure> {
    let cfg = gen_config(
        a.seed,
        a.agents,
        a.duration,
        &a.start,
        &a.attacks,
        a.attack_sessions,
    )?;
    let g = gen(&cfg);
    fs::create_dir_all(&a.out).map_err(|e| Failure::input(format!("{}: {e}", a.out.display())))?;
    let write =
        |path: &Path, f: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| -> Result<(), Failure> {
            let file = fs::File::create(path)
                .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
            let mut w = BufWriter::new(file);
            f(&mut w)
                .and_then(|_| w.flush())
                .map_err(|e| Failure::input(format!("{}: {e}", path.display())))
        };
    write(&a.out.join("events.jsonl"), &|w| {
        for e in &g.events {
            serde_json::to_writer(&mut *w, e)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    write(&a.out.join("labels.json"), &|w| {
        serde_json::to_writer_pretty(&mut *w, &g.labels)?;
        w.write_all(b"\n")
    })?;
    let attacks = g.labels.values().filter(|l| l.label == "attack").count();
    eprintln!(
        "cordon: wrote {} events in {} sessions ({attacks} attack sessions) to {}",
        g.events.len(),
        g.labels.len(),
        a.out.display()
    );
    Ok(())
}

/// `cordon fingerprint`.
pub fn fingerprint(text: &str) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string(&fingerprint_text(text))
            .map_err(|e| Failure::input(e.to_string()))?
    );
    Ok(())
}

/// `cordon eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Events (JSON lines, plain or .gz).
    #[arg(long)]
    events: PathBuf,
    /// Labels (`labels.json` from `cordon generate`).
    #[arg(long)]
    labels: PathBuf,
    /// Rule files or directories (default: the built-in pack).
    #[arg(long, short)]
    rules: Vec<PathBuf>,
    /// Input format of the events.
    #[arg(long, short, default_value = "native", value_parser = parse_format)]
    format: Format,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Only rules whose id matches one of these patterns (`*` wildcards), e.g.
    /// `'cordon.mcp.anomaly.*'`.
    #[arg(long)]
    only: Vec<String>,
    /// Leave out sessions that start less than this after their agent's first event (the
    /// baselines' warm-up), e.g. `2h`; they are counted apart.
    #[arg(long, value_parser = humantime::parse_duration)]
    warm_up: Option<std::time::Duration>,
}

/// Keeps the rules whose id matches one of `patterns` (all when there are none); an
/// unmatched pattern is an error, since it is most likely a typo.
pub fn select_rules(set: &mut RuleSet, patterns: &[String]) -> Result<(), Failure> {
    if patterns.is_empty() {
        return Ok(());
    }
    let globs: Vec<cordon_rules::wildcard::Wildcard> = patterns
        .iter()
        .map(|p| cordon_rules::wildcard::Wildcard::new(p, false))
        .collect();
    for (p, g) in patterns.iter().zip(&globs) {
        if !set.rules.iter().any(|r| g.matches(&r.id)) {
            let hint = cordon_rules::compile::closest(p, set.rules.iter().map(|r| r.id.as_str()))
                .map(|s| format!("; did you mean {s}?"))
                .unwrap_or_default();
            return Err(Failure::input(format!("--only {p}: no rule matches{hint}")));
        }
    }
    set.rules.retain(|r| globs.iter().any(|g| g.matches(&r.id)));
    Ok(())
}

/// Sessions that start less than `warm_up` after their agent's first event.
fn warming_sessions(
    input: &std::path::Path,
    format: Format,
    warm_up: std::time::Duration,
) -> Result<std::collections::HashSet<String>, Failure> {
    let warm = i64::try_from(warm_up.as_nanos()).unwrap_or(i64::MAX);
    let mut reader = cordon_ingest::LineReader::open(&[input.to_path_buf()], DEFAULT_MAX_RECORD)
        .map_err(|e| Failure::input(e.to_string()))?;
    let mut buf = Vec::new();
    let mut first: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut out = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    while let Some(_rec) = reader
        .next_record(&mut buf)
        .map_err(|e| Failure::input(e.to_string()))?
    {
        let Ok(ev) = format.decode(&buf) else {
            continue;
        };
        let (Some(agent), Some(t), Some(session)) =
            (ev.agent_id(), ev.timestamp_nanos(), ev.session_id())
        else {
            continue;
        };
        let start = *first.entry(agent.to_owned()).or_insert(t);
        if seen.insert(session.to_owned()) && t.saturating_sub(start) < warm {
            out.insert(session.to_owned());
        }
    }
    Ok(out)
}

/// `cordon eval`.
pub fn eval(a: EvalArgs) -> Result<(), Failure> {
    let mut set = load_rules(&a.rules)?;
    select_rules(&mut set, &a.only)?;
    let text = fs::read_to_string(&a.labels)
        .map_err(|e| Failure::input(format!("{}: {e}", a.labels.display())))?;
    let mut labels: Labels = serde_json::from_str(&text).map_err(|e| {
        Failure::input(format!(
            "{}: expected {{session_id: {{\"label\", \"scenario\"}}}}: {e}",
            a.labels.display()
        ))
    })?;
    let engines = cordon_detect::engines::Engines::new(
        set,
        cordon_detect::engines::Template {
            lateness: std::time::Duration::from_secs(10),
            ..Default::default()
        },
    );
    let mut dead = DeadLetterSink::new(None).map_err(|e| Failure::input(e.to_string()))?;
    let mut index = AlertIndex::new();
    let stats = run_files(
        Input {
            paths: std::slice::from_ref(&a.events),
            format: a.format,
            max_record: DEFAULT_MAX_RECORD,
            lateness: std::time::Duration::from_secs(10),
        },
        &engines,
        &cordon_detect::engines::Progress::default(),
        &mut dead,
        |_| {},
        |al| {
            index.push(al);
            Ok(())
        },
    )?;
    let mut flagged = index.flagged_sessions();
    let mut excluded = 0;
    if let Some(w) = a.warm_up {
        let warming = warming_sessions(&a.events, a.format, w)?;
        let before = labels.len();
        labels.retain(|s, _| !warming.contains(s));
        excluded = before - labels.len();
        flagged.retain(|s| !warming.contains(s));
    }
    let mut report = evaluate(&labels, &flagged);
    report.excluded_warm_up = excluded;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure::input(e.to_string()))?
        );
    } else {
        println!(
            "{} events, {} dead-lettered, {} alerts\n",
            stats.events, stats.dead_lettered, stats.alerts
        );
        print!("{}", report.table());
    }
    Ok(())
}

/// `cordon baseline …`.
#[derive(Subcommand)]
pub enum BaselineAction {
    /// Show an agent's learnt profile.
    Show {
        /// The agent id.
        agent: String,
        /// The profile snapshot (`cordon run --state FILE`).
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `cordon baseline …`.
pub fn baseline(action: BaselineAction) -> Result<(), Failure> {
    let BaselineAction::Show { agent, state, json } = action;
    let profiles = cordon_detect::profile::Profiles::restore(&state).map_err(Failure::input)?;
    let Some(p) = profiles.get(&agent) else {
        let mut known: Vec<&str> = profiles.agents().collect();
        known.sort_unstable();
        let hint = cordon_rules::compile::closest(&agent, known.iter().copied())
            .map(|s| format!("; did you mean {s}?"))
            .unwrap_or_default();
        return Err(Failure::input(format!(
            "no profile for agent {agent:?} in {} ({} agents){hint}",
            state.display(),
            known.len()
        )));
    };
    let warm = p.events >= cordon_detect::profile::NOVELTY_WARMUP || p.peer.is_some();
    let hours = p.rate.hour_of_day();
    let doc = crate::live::profile_json(&agent, &p);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Failure::input(e.to_string()))?
        );
        return Ok(());
    }
    let peak = hours.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let bars: String = hours
        .iter()
        .map(|h| {
            let levels = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
            levels[((h / peak) * 8.0).round().clamp(0.0, 8.0) as usize]
        })
        .collect();
    println!("agent                  {agent}");
    println!("events learnt          {}", p.events);
    if let Some(peer) = &p.peer {
        println!("started from peer      {peer}");
    }
    if let Some(t) = doc["last_seen"].as_str() {
        println!("last seen              {t}");
    }
    println!(
        "calls per minute       {:.2} (mean over {} minutes)",
        p.rate.rate(),
        p.rate.buckets()
    );
    println!("by hour of day (UTC)   |{bars}| 00–23, peak {peak:.2}/min");
    println!(
        "typical result size    {:.0} bytes ({} learnt)",
        p.volume.typical(),
        p.volume.count()
    );
    println!(
        "typical argument size  {:.0} bytes",
        p.args_volume.typical()
    );
    println!(
        "deny / error ratio     {:.3} / {:.3}",
        p.deny.ratio(),
        p.errors.ratio()
    );
    println!(
        "typical session        {:.0} calls on {:.1} servers ({} sessions learnt)",
        p.session_calls.typical(),
        p.session_breadth.typical(),
        p.session_calls.count()
    );
    println!(
        "tools / servers used   {} / {}",
        p.tools.len(),
        p.servers.len()
    );
    println!("methods used           {}", p.methods.len());
    println!("recipients seen        {}", p.recipients.len());
    println!(
        "novelty                {}",
        if warm { "reported" } else { "warming up" }
    );
    Ok(())
}
