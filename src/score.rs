//! `cordon score`: the rate and volume models over any JSON lines, one CSV line per event —
//! `timestamp,key,value,score` — to back-test a threshold before a rule relies on it.
//!
//! Scores are predictive: an event is scored against what its key did *before* it, then
//! learnt. A key still warming up borrows the model of all keys together (its peer group here);
//! when neither has enough history the score is 0 (no evidence of anything unusual).

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use cordon_detect::baseline::{RateModel, VolumeModel};
use cordon_ingest::sources::file::DEFAULT_MAX_RECORD;
use cordon_ingest::{decode_with, FieldValue, LineReader, Schema};
use rustc_hash::FxHashMap;

use crate::Failure;

/// `cordon score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// Files or directories of JSON lines, or `-` for stdin.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The numeric field to model as a volume (log-normal), or `@rate` for events per bucket
    /// (Poisson).
    #[arg(long)]
    field: String,
    /// The field whose value keys the models (e.g. `gen_ai.agent.id`); one model if absent.
    #[arg(long)]
    by: Option<String>,
    /// The field holding the event time (RFC 3339, or epoch seconds, ms, µs or ns).
    #[arg(long, default_value = "@timestamp")]
    timestamp_field: String,
    /// Bucket of the rate model.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    bucket: std::time::Duration,
    /// Half-life of the models, in observations (volume) or buckets (rate).
    #[arg(long, default_value_t = 500.0)]
    half_life: f64,
}

enum Model {
    Volume(VolumeModel),
    Rate(Box<RateModel>),
}

fn epoch_nanos(x: f64) -> i64 {
    let a = x.abs();
    let ns = if a >= 1e17 {
        x
    } else if a >= 1e14 {
        x * 1e3
    } else if a >= 1e11 {
        x * 1e6
    } else {
        x * 1e9
    };
    ns as i64
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `cordon score`.
pub fn score(a: ScoreArgs) -> Result<(), Failure> {
    let rate = a.field == "@rate";
    let bucket = a.bucket.as_nanos().min(i64::MAX as u128) as i64;
    let new_model = || {
        if rate {
            Model::Rate(Box::new(RateModel::new(bucket, a.half_life)))
        } else {
            Model::Volume(VolumeModel::new(a.half_life))
        }
    };
    let mut reader = LineReader::open(&a.paths, DEFAULT_MAX_RECORD)
        .map_err(|e| Failure::input(e.to_string()))?;
    let mut models: FxHashMap<String, Model> = FxHashMap::default();
    let mut peers = new_model();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Failure::input(format!("stdout: {e}"));
    writeln!(out, "timestamp,key,value,score").map_err(io)?;
    let (mut skipped, mut buf) = (0u64, Vec::new());
    let mut warn = |source: &str, line: u64, why: String| {
        skipped += 1;
        if skipped <= 5 {
            eprintln!("warning: {source}:{line}: {why}; skipped");
        }
    };
    while let Some(rec) = reader
        .next_record(&mut buf)
        .map_err(|e| Failure::input(e.to_string()))?
    {
        let ev = match decode_with(&buf, Schema::Generic) {
            Ok(ev) if !rec.oversized => ev,
            Ok(_) => {
                warn(&rec.source, rec.line, "record too large".into());
                continue;
            }
            Err(e) => {
                warn(&rec.source, rec.line, e.to_string());
                continue;
            }
        };
        let (ts_text, ts) = match ev.get_extra(&a.timestamp_field) {
            Some(serde_json::Value::String(s)) => match s.parse::<jiff::Timestamp>() {
                Ok(t) => (s.clone(), t.as_nanosecond() as i64),
                Err(e) => {
                    warn(
                        &rec.source,
                        rec.line,
                        format!("`{}` {s:?}: {e}", a.timestamp_field),
                    );
                    continue;
                }
            },
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                Some(x) => (n.to_string(), epoch_nanos(x)),
                None => continue,
            },
            _ => {
                warn(
                    &rec.source,
                    rec.line,
                    format!("no `{}` field", a.timestamp_field),
                );
                continue;
            }
        };
        let key = match &a.by {
            None => String::new(),
            Some(k) => match ev.get(k) {
                FieldValue::Str(s) => s.to_owned(),
                FieldValue::Int(i) => i.to_string(),
                FieldValue::Float(x) => x.to_string(),
                FieldValue::Bool(b) => b.to_string(),
                _ => "-".to_owned(),
            },
        };
        let model = models.entry(key.clone()).or_insert_with(new_model);
        let (value, s) = match (model, &mut peers) {
            (Model::Rate(m), Model::Rate(p)) => {
                let (n, s) = m.observe(ts);
                let (_, ps) = p.observe(ts);
                (n as f64, s.or(ps))
            }
            (Model::Volume(m), Model::Volume(p)) => {
                let v = match ev.get(&a.field) {
                    FieldValue::Int(i) => i as f64,
                    FieldValue::Float(x) => x,
                    FieldValue::Str(s) => match s.trim().parse::<f64>() {
                        Ok(x) => x,
                        Err(_) => {
                            warn(
                                &rec.source,
                                rec.line,
                                format!("`{}` is not a number", a.field),
                            );
                            continue;
                        }
                    },
                    _ => {
                        warn(&rec.source, rec.line, format!("no numeric `{}`", a.field));
                        continue;
                    }
                };
                let s = m.score(v).or_else(|| p.score(v));
                m.update(v);
                p.update(v);
                (v, s)
            }
            _ => continue,
        };
        writeln!(
            out,
            "{},{},{},{:.6}",
            csv_field(&ts_text),
            csv_field(&key),
            value,
            s.unwrap_or(0.0)
        )
        .map_err(io)?;
    }
    out.flush().map_err(io)?;
    if skipped > 0 {
        eprintln!("cordon: {skipped} records skipped (see warnings above)");
    }
    Ok(())
}
