//! The file pipeline: records from files or stdin → decode → engine → alert callback, with
//! every rejected record dead-lettered and counted.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Result;
use cordon_detect::Alert;

use cordon_detect::engines::{Engines, Inner, PipelineStats, Progress};
use cordon_ingest::{DeadLetterSink, DecodeError, Format, LineReader};

/// What to read and how.
pub struct Input<'a> {
    /// Files, directories or `-`.
    pub paths: &'a [PathBuf],
    /// Their format.
    pub format: Format,
    /// Largest record accepted.
    pub max_record: usize,
    /// Allowed lateness (for the reasons of late events).
    pub lateness: std::time::Duration,
}

/// Runs the pipeline over the inputs; calls `before_event` before each record is pushed (to
/// feed the engine what responses enforced) and `on_alert` for each alert in order. The
/// engines are locked for one record at a time, so the API can read profiles or swap rules
/// between two records (uncontended, the lock costs tens of nanoseconds a record).
pub fn run_files(
    input: Input<'_>,
    engines: &Engines,
    progress: &Progress,
    dead: &mut DeadLetterSink,
    mut before_event: impl FnMut(&mut Inner),
    mut on_alert: impl FnMut(Alert) -> Result<()>,
) -> Result<PipelineStats> {
    let Input {
        paths: inputs,
        format,
        max_record,
        lateness,
    } = input;
    let mut reader = LineReader::open(inputs, max_record)?;
    let mut stats = PipelineStats::default();
    let mut buf = Vec::with_capacity(4096);
    let mut alerts = Vec::new();
    let mut warned = 0;
    while let Some(rec) = reader.next_record(&mut buf)? {
        stats.records += 1;
        let decoded = if rec.oversized {
            Err(DecodeError::TooLong {
                len: rec.len,
                max: max_record,
            })
        } else {
            format.decode(&buf)
        };
        progress.records.fetch_add(1, Ordering::Relaxed);
        let mut inner = engines.lock();
        before_event(&mut inner);
        match decoded {
            Ok(ev) => {
                stats.events += 1;
                progress.events.fetch_add(1, Ordering::Relaxed);
                let pushed = inner.get("").push(ev, &mut alerts);
                drop(inner);
                if let Err(late) = pushed {
                    let reason = late.reason(lateness);
                    if warned < 5 {
                        tracing::warn!(source = %rec.source, line = rec.line, %reason, "record dead-lettered");
                        warned += 1;
                    }
                    dead.record(&rec.source, rec.line, &reason, &buf)?;
                    stats.late += 1;
                    progress.late.fetch_add(1, Ordering::Relaxed);
                    progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                for a in alerts.drain(..) {
                    stats.alerts += 1;
                    progress.alerts.fetch_add(1, Ordering::Relaxed);
                    on_alert(a)?;
                }
            }
            Err(e) => {
                drop(inner);
                progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let reason = e.to_string();
                if warned < 5 {
                    tracing::warn!(source = %rec.source, line = rec.line, %reason, "record dead-lettered");
                    warned += 1;
                }
                dead.record(&rec.source, rec.line, &reason, &buf)?;
            }
        }
    }
    let mut inner = engines.lock();
    let mut engine = inner.get("");
    engine.finish(&mut alerts);
    for a in alerts.drain(..) {
        stats.alerts += 1;
        progress.alerts.fetch_add(1, Ordering::Relaxed);
        on_alert(a)?;
    }
    dead.flush()?;
    stats.dead_lettered = dead.count();
    stats.out_of_order = engine.stats().out_of_order;
    stats.reordered = engine.stats().reordered;
    Ok(stats)
}
