//! Responses from the command line: `cordon.toml`'s `[response]` section turned into a running
//! responder for `cordon run`, and `cordon actions` to list, show, approve or deny the
//! outbox's actions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use cordon_respond::{Outbox, Playbooks, Responder, ResponseConfig};

use crate::Failure;

/// `cordon.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Responses: outbox, playbooks, targets.
    #[serde(default)]
    pub response: Option<ResponseConfig>,
    /// Alert delivery to a SIEM.
    #[serde(default)]
    pub siem: Option<cordon_respond::siem::SiemConfig>,
    /// Kafka input and alerts topic (`cordon run --kafka`).
    #[serde(default)]
    pub kafka: Option<cordon_kafka::KafkaConfig>,
}

impl Config {
    /// Reads and checks a configuration file; errors name the file, line and column.
    pub fn load(path: &Path) -> Result<Config, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    let col = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("{line}:{col}: ")
                })
                .unwrap_or_default();
            Failure::input(format!("{}:{at}{}", path.display(), e.message()))
        })
    }
}

/// Builds the responder of a `[response]` section: outbox opened, playbooks loaded and
/// checked against the targets, secrets read.
pub fn responder(cfg: &ResponseConfig, dry_run: bool) -> Result<Responder, Failure> {
    let playbooks = if cfg.playbooks.is_empty() {
        Playbooks::builtin()
    } else {
        Playbooks::load(&cfg.playbooks)
    }
    .map_err(|e| Failure::input(format!("playbooks:\n{e}")))?;
    let targets = cfg.targets().map_err(Failure::input)?;
    let outbox = Outbox::open(&cfg.outbox).map_err(|e| Failure::input(e.to_string()))?;
    let r = Responder::new(
        outbox,
        playbooks,
        targets,
        dry_run || cfg.dry_run,
        cfg.console_url.clone(),
    )
    .map_err(Failure::input)?;
    match &cfg.action_log {
        Some(p) => r.with_action_log(p).map_err(Failure::input),
        None => Ok(r),
    }
}

/// The responder running beside `cordon run`: a tokio runtime delivering the outbox.
pub struct Running {
    /// The runtime.
    pub rt: tokio::runtime::Runtime,
    /// The responder.
    pub responder: Arc<Responder>,
    stop: Arc<tokio::sync::Notify>,
    worker: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts delivering.
    pub fn start(responder: Responder) -> Result<Running, Failure> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failure::input(format!("runtime: {e}")))?;
        let responder = Arc::new(responder);
        let stop = Arc::new(tokio::sync::Notify::new());
        let worker = rt.spawn(responder.clone().run(stop.clone()));
        Ok(Running {
            rt,
            responder,
            stop,
            worker,
        })
    }

    /// Waits until nothing is pending or `timeout`, then stops the worker.
    pub fn finish(self, timeout: std::time::Duration) -> Result<bool, Failure> {
        self.stop.notify_one();
        let _ = self.rt.block_on(self.worker);
        self.rt
            .block_on(self.responder.drain(timeout))
            .map_err(|e| Failure::input(e.to_string()))
    }
}

/// `cordon actions …`.
#[derive(Subcommand)]
pub enum ActionsAction {
    /// List the outbox's actions (tokens shown as a hash).
    List {
        /// The configuration (its `[response]` outbox).
        #[arg(long)]
        config: PathBuf,
        /// Only actions in this state (pending, awaiting_approval, succeeded, failed, …).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one action with every attempt.
    Show {
        /// The action id.
        id: String,
        /// The configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Approve an action awaiting approval: the playbook's next steps run.
    Approve(Decide),
    /// Deny an action awaiting approval: the playbook's next steps are cancelled.
    Deny(Decide),
}

/// An analyst's decision on an approval gate.
#[derive(clap::Args)]
pub struct Decide {
    /// The action id.
    id: String,
    /// The configuration.
    #[arg(long)]
    config: PathBuf,
    /// Who decides.
    #[arg(long)]
    by: String,
    /// Why.
    #[arg(long, default_value = "")]
    reason: String,
}

fn outbox(config: &Path) -> Result<Outbox, Failure> {
    let cfg = Config::load(config)?;
    let Some(r) = cfg.response else {
        return Err(Failure::input(format!(
            "{}: no [response] section",
            config.display()
        )));
    };
    Outbox::open(&r.outbox).map_err(|e| Failure::input(e.to_string()))
}

/// `cordon actions …`.
pub fn actions(a: ActionsAction) -> Result<(), Failure> {
    let text = |e: serde_json::Error| Failure::input(e.to_string());
    match a {
        ActionsAction::List {
            config,
            state,
            json,
        } => {
            let ob = outbox(&config)?;
            let mut all = ob.all().map_err(|e| Failure::input(e.to_string()))?;
            all.sort_by(|x, y| {
                (x.created_ms, &x.alert_id, x.step).cmp(&(y.created_ms, &y.alert_id, y.step))
            });
            for r in all {
                if state.as_deref().is_some_and(|s| s != r.state.name()) {
                    continue;
                }
                let r = r.redacted();
                if json {
                    println!("{}", serde_json::to_string(&r).map_err(text)?);
                } else {
                    println!(
                        "{}  {:<18} {:<17} {:<10} attempts {:<2} {} step {} of alert {}{}",
                        r.id,
                        r.state.name(),
                        r.action.name(),
                        r.target.as_deref().unwrap_or("-"),
                        r.attempts,
                        r.playbook,
                        r.step + 1,
                        r.alert_id,
                        r.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        ActionsAction::Show { id, config } => {
            let ob = outbox(&config)?;
            let Some(r) = ob.get(&id).map_err(|e| Failure::input(e.to_string()))? else {
                return Err(Failure::input(format!("no action {id}")));
            };
            let attempts = ob
                .attempts(&id)
                .map_err(|e| Failure::input(e.to_string()))?;
            let doc = serde_json::json!({"action": r.redacted(), "attempts": attempts});
            println!("{}", serde_json::to_string_pretty(&doc).map_err(text)?);
            Ok(())
        }
        ActionsAction::Approve(d) => decide(&d.config, &d.id, true, &d.by, &d.reason),
        ActionsAction::Deny(d) => decide(&d.config, &d.id, false, &d.by, &d.reason),
    }
}

fn decide(config: &Path, id: &str, approve: bool, by: &str, reason: &str) -> Result<(), Failure> {
    let ob = outbox(config)?;
    let r = ob.decide(id, approve, by, reason).map_err(Failure::input)?;
    println!("{} {} by {by}", r.id, r.state.name());
    Ok(())
}
