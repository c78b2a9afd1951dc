//! The file pipeline: records from files or stdin → decode → engine → alert callback, with
//! every rejected record dead-lettered and counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use cordon_detect::Alert;

use crate::engines::{Engines, Inner};
use cordon_ingest::{DeadLetterSink, DecodeError, Format, LineReader};

/// Counters of one pipeline run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PipelineStats {
    /// Records read.
    pub records: u64,
    /// Records decoded into events.
    pub events: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Events older than an event seen before them.
    pub out_of_order: u64,
    /// Events behind the watermark (dead-lettered; counted in `dead_lettered` too).
    pub late: u64,
    /// Events that arrived out of order within the allowed lateness and were reordered.
    pub reordered: u64,
}

/// Counters a running pipeline updates as it goes, readable from other threads (metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read.
    pub records: AtomicU64,
    /// Records decoded into events.
    pub events: AtomicU64,
    /// Records dead-lettered (undecodable, too long or late).
    pub dead_lettered: AtomicU64,
    /// Late events.
    pub late: AtomicU64,
    /// Alerts raised.
    pub alerts: AtomicU64,
}

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
