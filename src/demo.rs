//! `cordon demo`: the embedded default. Generates a day of traffic with attacks in memory, runs
//! the built-in rules over it, prints each alert as it fires and a summary at the end — no
//! broker, no files, no configuration.

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use clap::Args;
use cordon_detect::{Alert, Engine};
use cordon_ingest::generate::generate;
use cordon_query::{evaluate, AlertIndex, Label, Labels};
use cordon_rules::Severity;

use crate::commands::{gen_config, load_rules};
use crate::Failure;

/// `cordon demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Number of agents.
    #[arg(long, default_value_t = 24)]
    agents: usize,
    /// Simulated period.
    #[arg(long, default_value = "10h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Replay speed in events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pace: u64,
    /// Rule files or directories (default: the built-in pack).
    #[arg(long, short)]
    rules: Vec<std::path::PathBuf>,
    /// Print alerts as OCSF JSON lines instead of one line each.
    #[arg(long)]
    json: bool,
}

fn line(a: &Alert) -> String {
    let ts = jiff::Timestamp::from_millisecond(a.last_seen_ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let sev = match a.severity {
        Severity::Critical => "CRITICAL",
        Severity::High => "HIGH",
        Severity::Medium => "MEDIUM",
        Severity::Low => "LOW",
        Severity::Informational => "INFO",
    };
    format!(
        "{ts}  {sev:<8}  {:<36}  {:<28}  {}",
        a.rule_id,
        a.agent_id().unwrap_or("-"),
        a.message
    )
}

/// `cordon demo`.
pub fn demo(a: DemoArgs) -> Result<(), Failure> {
    let set = load_rules(&a.rules)?;
    let cfg = gen_config(
        a.seed,
        a.agents,
        a.duration,
        "2026-11-02T08:00:00Z",
        "all",
        2,
    )?;
    let started = Instant::now();
    let g = generate(&cfg);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Failure::input(format!("stdout: {e}"));
    writeln!(
        out,
        "cordon demo: {} agents, {} events in {} sessions ({} attack sessions), {} rules\n",
        cfg.agents,
        g.events.len(),
        g.labels.len(),
        g.labels.values().filter(|l| l.label == "attack").count(),
        set.rules.len()
    )
    .map_err(io)?;
    let mut engine = Engine::new(&set);
    let mut index = AlertIndex::new();
    let mut alerts = Vec::new();
    let progress_every = (g.events.len() / 10).max(1);
    for (i, ev) in g.events.iter().enumerate() {
        if let Err(late) = engine.push(ev.clone(), &mut alerts) {
            engine.observe(&late.event, &mut alerts);
        }
        for al in alerts.drain(..) {
            if a.json {
                writeln!(out, "{}", al.render_ocsf().json).map_err(io)?;
            } else {
                writeln!(out, "{}", line(&al)).map_err(io)?;
            }
            index.push(al);
        }
        if (i + 1) % progress_every == 0 {
            writeln!(
                out,
                "  … {} events processed, {} alerts so far",
                i + 1,
                index.len()
            )
            .map_err(io)?;
            out.flush().map_err(io)?;
        }
        if a.pace > 0 {
            let due = Duration::from_secs_f64((i + 1) as f64 / a.pace as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    engine.finish(&mut alerts);
    for al in alerts.drain(..) {
        writeln!(out, "{}", line(&al)).map_err(io)?;
        index.push(al);
    }
    writeln!(out, "\nalerts by rule:").map_err(io)?;
    for (rule, n) in index.count_by_rule() {
        writeln!(out, "  {n:>5}  {rule}").map_err(io)?;
    }
    let labels: Labels = g
        .labels
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Label {
                    label: v.label.to_owned(),
                    scenario: v.scenario.to_owned(),
                },
            )
        })
        .collect();
    let report = evaluate(&labels, &index.flagged_sessions());
    writeln!(
        out,
        "\ndetection by scenario (sessions):\n{}",
        report.table()
    )
    .map_err(io)?;
    writeln!(
        out,
        "{} events in {:.2}s",
        engine.stats().events,
        started.elapsed().as_secs_f64()
    )
    .map_err(io)?;
    out.flush().map_err(io)?;
    Ok(())
}
