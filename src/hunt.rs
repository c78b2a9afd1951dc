//! `cordon hunt`: an ad-hoc EQL query over any JSON lines — Cordon events, gateway logs, or
//! anything else — with EQL's knobs for where the category, timestamp and tiebreaker live.
//! Matches are printed in event-time order (then tiebreaker), as EQL orders results.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use cordon_detect::Engine;
use cordon_ingest::sources::file::DEFAULT_MAX_RECORD;
use cordon_ingest::{decode_with, Category, CoreField, Event, FieldValue, LineReader, Schema};
use cordon_rules::ast::Pipe;
use cordon_rules::{parse_query, Compiler, Library, Rule, RuleSet};

use crate::Failure;

/// How timestamps are written in the input.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TsFormat {
    /// RFC 3339 text (`2026-11-20T10:00:00Z`).
    Rfc3339,
    /// Seconds since the Unix epoch.
    EpochS,
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// Nanoseconds since the Unix epoch.
    EpochNs,
    /// Windows FILETIME: 100 ns intervals since 1601-01-01.
    Filetime,
}

/// `cordon hunt`.
#[derive(Args)]
pub struct HuntArgs {
    /// The query, e.g. `tool where gen_ai.tool.name : "send_*"`.
    query: String,
    /// Files or directories of JSON lines, or `-` for stdin.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Field holding the event category (falls back to the category of `mcp.method.name`).
    #[arg(long, default_value = "event.category")]
    category_field: String,
    /// Field holding the event time.
    #[arg(long, default_value = "@timestamp")]
    timestamp_field: String,
    /// Format of the event time.
    #[arg(long, value_enum, default_value = "rfc3339")]
    timestamp_format: TsFormat,
    /// Field that orders events with equal timestamps.
    #[arg(long)]
    tiebreaker_field: Option<String>,
    /// Print this field of each matched event, one per line, instead of the events.
    #[arg(long)]
    print: Option<String>,
}

fn timestamp(ev: &Event, field: &str, fmt: TsFormat) -> Result<i64, String> {
    let v = ev
        .get_extra(field)
        .ok_or_else(|| format!("no `{field}` field"))?;
    let num = |v: &serde_json::Value| -> Result<f64, String> {
        match v {
            serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".to_owned()),
            serde_json::Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("`{field}` is {s:?}, not a number")),
            other => Err(format!("`{field}` is {other}, not a number")),
        }
    };
    let exact = |v: &serde_json::Value| -> Result<i128, String> {
        match v {
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .ok_or_else(|| "not an integer".to_owned()),
            serde_json::Value::String(s) => s
                .trim()
                .parse::<i128>()
                .map_err(|_| format!("`{field}` is {s:?}, not an integer")),
            other => Err(format!("`{field}` is {other}, not an integer")),
        }
    };
    let nanos: i128 = match fmt {
        TsFormat::Rfc3339 => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("`{field}` is {v}, not RFC 3339 text"))?;
            let ts: jiff::Timestamp = s.parse().map_err(|e| format!("`{field}` {s:?}: {e}"))?;
            ts.as_nanosecond()
        }
        TsFormat::EpochS => (num(v)? * 1e9) as i128,
        TsFormat::EpochMs => (num(v)? * 1e6) as i128,
        TsFormat::EpochNs => exact(v)?,
        TsFormat::Filetime => (exact(v)? - 116_444_736_000_000_000) * 100,
    };
    i64::try_from(nanos).map_err(|_| format!("`{field}` is out of range"))
}

/// `cordon hunt`.
pub fn hunt(a: HuntArgs) -> Result<(), Failure> {
    let q = parse_query(&a.query)
        .map_err(|e| Failure::input(format!("query {}", e.render(&a.query))))?;
    let compiled = Compiler::new(&Library::default(), false)
        .query(&q)
        .map_err(|e| Failure::input(format!("query {}", e.render(&a.query))))?;
    let pipes = compiled.pipes.clone();
    let rule = Rule::adhoc(&a.query, compiled);
    let set = RuleSet {
        rules: vec![rule],
        library: Library::default(),
    };

    let mut reader = LineReader::open(&a.paths, DEFAULT_MAX_RECORD)
        .map_err(|e| Failure::input(e.to_string()))?;
    let mut buf = Vec::new();
    let mut records: Vec<(i64, String, Vec<u8>, Event)> = Vec::new();
    let (mut bad, mut no_ts) = (0u64, 0u64);
    while let Some(rec) = reader
        .next_record(&mut buf)
        .map_err(|e| Failure::input(e.to_string()))?
    {
        let mut ev = match decode_with(&buf, Schema::Generic) {
            Ok(ev) if !rec.oversized => ev,
            Ok(_) => {
                bad += 1;
                eprintln!(
                    "warning: {}:{}: record over {} bytes, skipped",
                    rec.source, rec.line, DEFAULT_MAX_RECORD
                );
                continue;
            }
            Err(e) => {
                bad += 1;
                if bad <= 5 {
                    eprintln!("warning: {}:{}: {e}, skipped", rec.source, rec.line);
                }
                continue;
            }
        };
        let cat = match ev.get_extra(&a.category_field) {
            Some(serde_json::Value::String(s)) => Category::Custom(s.as_str().into()),
            _ => match ev.get_extra("mcp.method.name").and_then(|v| v.as_str()) {
                Some(m) => Category::Custom(Category::from_method(m).as_str().into()),
                None => Category::Custom("".into()),
            },
        };
        ev.set_category(cat);
        let ts = match timestamp(&ev, &a.timestamp_field, a.timestamp_format) {
            Ok(t) => t,
            Err(e) => {
                no_ts += 1;
                if no_ts <= 5 {
                    eprintln!(
                        "warning: {}:{}: {e}; record skipped (no event time)",
                        rec.source, rec.line
                    );
                }
                continue;
            }
        };
        let tie = match &a.tiebreaker_field {
            Some(f) => match ev.get(f) {
                FieldValue::Str(s) => s.to_owned(),
                FieldValue::Int(i) => format!("{:020}", i128::from(i) - i128::from(i64::MIN)),
                FieldValue::Missing => String::new(),
                other => format!("{other:?}"),
            },
            None => String::new(),
        };
        records.push((ts, tie, buf.clone(), ev));
    }
    // EQL orders by timestamp, then tiebreaker; arrival breaks the remaining ties.
    records.sort_by(|x, y| x.0.cmp(&y.0).then_with(|| x.1.cmp(&y.1)));
    let mut engine = Engine::new(&set);
    let mut alerts = Vec::new();
    for (i, (ts, _, _, ev)) in records.iter_mut().enumerate() {
        // Core slots are invisible to a schemaless query: use them to carry order and identity.
        ev.set_timestamp_nanos(*ts);
        ev.set_str(CoreField::EventId, format!("r{i:012}"));
        engine.observe(ev, &mut alerts);
    }
    engine.finish(&mut alerts);
    let mut hits: Vec<(Vec<usize>, Vec<usize>)> = alerts
        .iter()
        .map(|al| {
            let idx = al
                .events
                .iter()
                .filter_map(|e| {
                    e.id()
                        .and_then(|id| id.strip_prefix('r'))
                        .and_then(|n| n.parse().ok())
                })
                .collect();
            (idx, al.missing_steps.clone())
        })
        .collect();
    for p in &pipes {
        match *p {
            Pipe::Head(n) => hits.truncate(n as usize),
            Pipe::Tail(n) => {
                let skip = hits.len().saturating_sub(n as usize);
                hits.drain(..skip);
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Failure::input(format!("stdout: {e}"));
    for (events, missing) in &hits {
        let steps = events.len() + missing.len();
        let mut it = events.iter();
        for pos in 0..steps {
            if missing.contains(&pos) {
                if a.print.is_some() {
                    writeln!(out, "-1").map_err(io)?;
                }
                continue;
            }
            let Some(&i) = it.next() else { break };
            let (_, _, raw, ev) = &records[i];
            match &a.print {
                Some(f) => {
                    let line = match ev
                        .get_extra(f)
                        .map(FieldValue::from_json)
                        .unwrap_or(FieldValue::Missing)
                    {
                        FieldValue::Missing => String::new(),
                        FieldValue::Str(s) => s.to_owned(),
                        FieldValue::Int(i) => i.to_string(),
                        FieldValue::Float(x) => x.to_string(),
                        FieldValue::Bool(b) => b.to_string(),
                        FieldValue::Fingerprints(l) => format!("{l:?}"),
                        FieldValue::Json(j) => j.to_string(),
                    };
                    writeln!(out, "{line}").map_err(io)?;
                }
                None => {
                    out.write_all(raw).map_err(io)?;
                    out.write_all(b"\n").map_err(io)?;
                }
            }
        }
    }
    out.flush().map_err(io)?;
    if bad + no_ts > 0 {
        eprintln!(
            "cordon: {} matches; {bad} records unreadable, {no_ts} matches without event time",
            hits.len()
        );
    }
    Ok(())
}
