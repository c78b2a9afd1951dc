//! The `cordon` command: CLI, configuration and wiring. Nothing clever lives here — the
//! crates do the work; this file turns flags into calls and errors into exit codes
//! (0 ok, 1 findings-related failure such as failed rule tests, 2 usage or input error).

mod commands;
mod demo;
mod hunt;
mod live;
mod pipeline;
mod respond;
mod score;
mod sqlcmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Streaming detection and response for AI agents' MCP tool calls.
#[derive(Parser)]
#[command(name = "cordon", version, about, long_about = None)]
struct Cli {
    /// Tool catalogue (YAML) extending the built-in one: what each server's tools do.
    #[arg(long, global = true)]
    catalogue: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the rules over events from files, directories or stdin; write alerts.
    Run(Box<commands::RunArgs>),
    /// Check, test or list rule files.
    Rules {
        #[command(subcommand)]
        action: commands::RulesAction,
    },
    /// Run an ad-hoc EQL query over any JSON lines.
    Hunt(hunt::HuntArgs),
    /// Generate seeded, realistic MCP traffic with labelled attacks.
    Generate(commands::GenerateArgs),
    /// Print the content fingerprints of a text as a JSON array.
    Fingerprint {
        /// The text.
        text: String,
    },
    /// Score the rules against labelled traffic (per scenario, precision and recall).
    Eval(commands::EvalArgs),
    /// Generate traffic and run the built-in rules on it, showing alerts as they fire.
    Demo(demo::DemoArgs),
    /// Score every event with the rate or volume model: CSV `timestamp,key,value,score`.
    Score(score::ScoreArgs),
    /// Inspect per-agent baselines.
    Baseline {
        #[command(subcommand)]
        action: commands::BaselineAction,
    },
    /// Read-only SQL over the alert store (`cordon run --store`).
    Sql(sqlcmd::SqlArgs),
    /// Create or list API keys.
    Keys {
        #[command(subcommand)]
        action: sqlcmd::KeysAction,
    },
    /// Serve the HTTP API over an alert store.
    Serve(sqlcmd::ServeArgs),
    /// Maintain the alert store.
    Store {
        #[command(subcommand)]
        action: sqlcmd::StoreAction,
    },
    /// List, show, approve or deny the response outbox's actions.
    Actions {
        #[command(subcommand)]
        action: respond::ActionsAction,
    },
}

/// An error with its exit code.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A usage or input error (exit 2).
    pub fn input(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    /// A findings-related failure (exit 1).
    pub fn findings(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::input(format!("{e:#}"))
    }
}

/// mimalloc rather than the system allocator: decoding and detection allocate many small,
/// short-lived strings and maps, and engine snapshots copy them in bulk.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(path) = &cli.catalogue {
        match cordon_ingest::catalogue::Catalogue::load(path) {
            Ok(c) => cordon_ingest::catalogue::install(c),
            Err(e) => {
                eprintln!("error: --catalogue {e}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match cli.command {
        Command::Run(a) => commands::run(*a),
        Command::Rules { action } => commands::rules(action),
        Command::Hunt(a) => hunt::hunt(a),
        Command::Generate(a) => commands::generate(a),
        Command::Fingerprint { text } => commands::fingerprint(&text),
        Command::Eval(a) => commands::eval(a),
        Command::Demo(a) => demo::demo(a),
        Command::Score(a) => score::score(a),
        Command::Baseline { action } => commands::baseline(action),
        Command::Actions { action } => respond::actions(action),
        Command::Sql(a) => sqlcmd::sql(a),
        Command::Keys { action } => sqlcmd::keys(action),
        Command::Serve(a) => sqlcmd::serve(a),
        Command::Store { action } => sqlcmd::store(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Paths given on the command line, or none for the built-in rules.
pub fn rule_paths(paths: &[PathBuf]) -> Option<&[PathBuf]> {
    if paths.is_empty() {
        None
    } else {
        Some(paths)
    }
}
