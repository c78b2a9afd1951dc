//! Throughput of the hot path, each figure against a baseline measured in the same run:
//! a derive-based serde_json parse of the same bytes into a plain struct (`raw_parse`).
//!
//! - `decode`: Cordon's schema-aware decoder vs the raw parse;
//! - `rules`: 50 filter rules evaluated on decoded events;
//! - `file_pipeline`: reading the JSON-lines file, decoding and evaluating 50 rules, vs reading
//!   the same file and doing only the raw parse.
//!
//! Input: seeded generated traffic (`cordon generate` with seed 11): tool calls with
//! arguments and content fingerprints, about 990 bytes a line.

// criterion_group! defines an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;

use cordon_detect::Engine;
use cordon_ingest::generate::{generate, GenConfig};
use cordon_ingest::{decode_native, Event, Format, LineReader};
use cordon_rules::RuleSet;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;

/// The baseline: the same fields parsed by serde's derive into owned values.
#[allow(dead_code)]
#[derive(Deserialize)]
struct Plain {
    #[serde(rename = "event.id")]
    id: Option<String>,
    #[serde(rename = "@timestamp")]
    timestamp: Option<String>,
    #[serde(rename = "gen_ai.agent.id")]
    agent_id: Option<String>,
    #[serde(rename = "gen_ai.agent.name")]
    agent_name: Option<String>,
    #[serde(rename = "audit.principal.sub")]
    sub: Option<String>,
    #[serde(rename = "audit.principal.client_id")]
    client_id: Option<String>,
    #[serde(rename = "audit.token.jti")]
    jti: Option<String>,
    #[serde(rename = "audit.token.aud")]
    aud: Option<String>,
    #[serde(rename = "mcp.session.id")]
    session: Option<String>,
    #[serde(rename = "mcp.method.name")]
    method: Option<String>,
    #[serde(rename = "audit.target")]
    target: Option<String>,
    #[serde(rename = "server.address")]
    server: Option<String>,
    #[serde(rename = "gen_ai.tool.name")]
    tool: Option<String>,
    #[serde(rename = "gen_ai.tool.call.arguments")]
    args: Option<serde_json::Value>,
    #[serde(rename = "audit.decision")]
    decision: Option<String>,
    #[serde(rename = "audit.data_class")]
    data_class: Option<String>,
    #[serde(rename = "audit.result_bytes")]
    result_bytes: Option<i64>,
    #[serde(rename = "audit.duration_ms")]
    duration_ms: Option<f64>,
    #[serde(rename = "error.type")]
    error_type: Option<String>,
    #[serde(rename = "audit.result_fp")]
    result_fp: Option<Vec<String>>,
    #[serde(rename = "audit.args_fp")]
    args_fp: Option<Vec<String>>,
    #[serde(rename = "audit.tool.description_sha256")]
    descriptions: Option<serde_json::Value>,
}

fn lines() -> Vec<Vec<u8>> {
    let g = generate(&GenConfig {
        seed: 11,
        agents: 40,
        duration_nanos: 4 * 3_600_000_000_000,
        start_nanos: 1_793_606_400_000_000_000,
        ..GenConfig::default()
    });
    g.events
        .iter()
        .filter(|e| e.category().as_str() == "tool")
        .take(20_000)
        .map(|e| serde_json::to_vec(e).expect("serialise"))
        .collect()
}

/// The built-in filter rules plus generated ones up to 50, shaped like real detections: most constrain the
/// tool, server or method (and so are indexed), some match tool names by wildcard or look at
/// fields outside the schema (and so run on every event); they use every operator family.
fn fifty_rules() -> RuleSet {
    const TOOLS: [&str; 8] = [
        "read_file",
        "send_email",
        "query",
        "fetch_url",
        "post_message",
        "get_file_contents",
        "write_file",
        "list_charges",
    ];
    let mut text = String::new();
    let mut builtin = RuleSet::builtin().expect("builtin rules");
    builtin.rules.retain(|r| !r.is_stateful());
    let n = 50 - builtin.rules.len();
    for i in 0..n {
        let t = TOOLS[i % TOOLS.len()];
        let q = match i % 8 {
            0 => format!(r#"tool where gen_ai.tool.name == "{t}" and audit.decision == "deny""#),
            1 => format!(
                r#"tool where gen_ai.tool.name in ("read_file", "get_file_contents") and gen_ai.tool.call.arguments.path like~ "*/x{i}/*""#
            ),
            2 => format!(
                r#"tool where audit.target == "srv-{i}" and audit.data_class in ("secret", "pii")"#
            ),
            3 => format!(r#"tool where gen_ai.tool.name : "x{i}_*" and audit.decision == "allow""#),
            4 => format!(
                r#"tool where gen_ai.tool.name == "query" and gen_ai.tool.call.arguments.sql regex~ ".*x{i}_table.*""#
            ),
            5 => format!(
                r#"tool where audit.target in ("gmail", "slack") and audit.result_bytes > {}"#,
                1_000_000 + i
            ),
            6 => format!(
                r#"resource where mcp.method.name == "resources/read" and startsWith(?mcp.resource.uri, "file:///x{i}")"#
            ),
            _ => format!(
                r#"any where ?audit.marker.x{i} != null or gen_ai.agent.id regex "agent-x{i}-[0-9]+""#
            ),
        };
        text.push_str(&format!(
            "---\nid: bench.{i}\ntitle: bench {i}\nseverity: low\nquery: '{q}'\n"
        ));
    }
    let mut set = RuleSet::from_text("bench.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    set.rules.extend(builtin.rules);
    assert_eq!(set.rules.len(), 50);
    set
}

fn bench(c: &mut Criterion) {
    let lines = lines();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let n = lines.len() as u64;
    eprintln!(
        "{} events, {} bytes per event on average",
        n,
        bytes / lines.len()
    );

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(n));
    g.bench_function("raw_parse", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(serde_json::from_slice::<Plain>(l).expect("parse"));
            }
        })
    });
    g.bench_function("decode_native", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(decode_native(l).expect("decode"));
            }
        })
    });
    g.finish();

    let set = fifty_rules();
    let events: Vec<Event> = lines
        .iter()
        .map(|l| decode_native(l).expect("decode"))
        .collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("evaluate", "50_rules"), |b| {
        let mut engine = Engine::new(&set);
        let mut out = Vec::new();
        b.iter(|| {
            for e in &events {
                engine.observe(e, &mut out);
            }
            out.clear();
        })
    });
    g.finish();

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    for l in &lines {
        f.write_all(l).expect("write");
        f.write_all(b"\n").expect("write");
    }
    drop(f);
    let paths = vec![path];
    let mut g = c.benchmark_group("file_pipeline");
    g.throughput(Throughput::Elements(n));
    g.bench_function("read_and_raw_parse", |b| {
        b.iter(|| {
            let mut r = LineReader::open(&paths, 1 << 20).expect("open");
            let mut buf = Vec::new();
            while r.next_record(&mut buf).expect("read").is_some() {
                black_box(serde_json::from_slice::<Plain>(&buf).expect("parse"));
            }
        })
    });
    g.bench_function("read_decode_50_rules", |b| {
        let mut engine = Engine::new(&set);
        let mut out = Vec::new();
        b.iter(|| {
            let mut r = LineReader::open(&paths, 1 << 20).expect("open");
            let mut buf = Vec::new();
            while r.next_record(&mut buf).expect("read").is_some() {
                let ev = Format::Native.decode(&buf).expect("decode");
                engine.observe(&ev, &mut out);
            }
            out.clear();
        })
    });
    g.finish();
}

/// The full built-in pack on traffic of 10 000 agents, against the raw parse of the same
/// bytes; the state it holds; and an adversarial stream that opens a partial match on every
/// event (a secret read by a new agent each time).
fn pack(c: &mut Criterion) {
    let g = generate(&GenConfig {
        seed: 3,
        agents: 10_000,
        duration_nanos: 20 * 60_000_000_000,
        start_nanos: 1_793_613_600_000_000_000,
        ..GenConfig::default()
    });
    let lines: Vec<Vec<u8>> = g
        .events
        .iter()
        .take(100_000)
        .map(|e| serde_json::to_vec(e).expect("serialise"))
        .collect();
    let n = lines.len() as u64;
    let set = RuleSet::builtin().expect("builtin rules");
    let stateful = set.rules.iter().filter(|r| r.is_stateful()).count();
    eprintln!(
        "pack: {} rules ({stateful} multi-event), {n} events of 10k agents, {} bytes per event",
        set.rules.len(),
        lines.iter().map(Vec::len).sum::<usize>() / lines.len()
    );
    let mut grp = c.benchmark_group("pack");
    grp.throughput(Throughput::Elements(n));
    grp.bench_function("raw_parse", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(serde_json::from_slice::<Plain>(l).expect("parse"));
            }
        })
    });
    grp.bench_function("decode_full_pack", |b| {
        b.iter(|| {
            // The production path: reorder buffer, per-agent baselines, every rule.
            let mut engine = Engine::new(&set);
            let mut out = Vec::new();
            for l in &lines {
                let ev = decode_native(l).expect("decode");
                if engine.push(ev, &mut out).is_err() {
                    unreachable!("generated events are in order");
                }
            }
            engine.finish(&mut out);
            black_box(out.len())
        })
    });
    // The same events split by agent into two lanes, each run by its own engine, as
    // `cordon run --kafka` runs partitions: one lane after the other on one thread, then
    // each on its own thread. The second against the first is how the engines' side scales
    // from one core to two (this machine's all) with nothing else running — the Kafka
    // bench shares the cores with its broker and producer, so it cannot tell. (Against
    // `decode_full_pack` a lane is also cheaper per event: each engine holds half the
    // agents.)
    let lanes: [Vec<&[u8]>; 2] = {
        let mut lanes = [Vec::new(), Vec::new()];
        for l in &lines {
            let ev = decode_native(l).expect("decode");
            let agent = ev.agent_id().unwrap_or_default();
            let lane = agent
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31) ^ usize::from(b))
                % 2;
            lanes[lane].push(l.as_slice());
        }
        lanes
    };
    eprintln!(
        "pack: lanes of {} and {} events",
        lanes[0].len(),
        lanes[1].len()
    );
    let run_lane = |lane: &[&[u8]]| {
        let mut engine = Engine::new(&set);
        let mut out = Vec::new();
        for l in lane {
            let ev = decode_native(l).expect("decode");
            if engine.push(ev, &mut out).is_err() {
                unreachable!("generated events are in order");
            }
        }
        engine.finish(&mut out);
        out.len()
    };
    grp.bench_function("decode_full_pack_two_lanes_one_thread", |b| {
        b.iter(|| black_box(lanes.iter().map(|lane| run_lane(lane)).sum::<usize>()))
    });
    grp.bench_function("decode_full_pack_two_lanes_two_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                let runs: Vec<_> = lanes
                    .iter()
                    .map(|lane| s.spawn(|| run_lane(lane)))
                    .collect();
                black_box(
                    runs.into_iter()
                        .map(|r| r.join().expect("lane"))
                        .sum::<usize>(),
                )
            })
        })
    });
    grp.finish();

    // The per-agent baseline update alone, against the raw parse of the same events.
    let mut decoded: Vec<Event> = lines
        .iter()
        .map(|l| decode_native(l).expect("decode"))
        .collect();
    let mut grp = c.benchmark_group("baseline");
    grp.throughput(Throughput::Elements(n));
    grp.bench_function("raw_parse", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(serde_json::from_slice::<Plain>(l).expect("parse"));
            }
        })
    });
    grp.bench_function("profile_update", |b| {
        b.iter(|| {
            let mut profiles = cordon_detect::profile::Profiles::default();
            for ev in decoded.iter_mut() {
                profiles.annotate(ev);
            }
            black_box(profiles.stats())
        })
    });
    // Steady state: the same agents, known already, come back for the next 20 minutes (every
    // timestamp moved forward by the stream's span on each pass). The bench above pays for
    // creating 10 000 profiles from 10 events each; this one is the per-event update.
    let span = 20 * 60_000_000_000i64;
    let mut profiles = cordon_detect::profile::Profiles::default();
    for ev in decoded.iter_mut() {
        profiles.annotate(ev);
    }
    grp.bench_function("profile_update_steady", |b| {
        b.iter(|| {
            for ev in decoded.iter_mut() {
                let t = ev.timestamp_nanos().unwrap_or(0);
                ev.set_timestamp_nanos(t + span);
                profiles.annotate(ev);
            }
            black_box(profiles.stats())
        })
    });
    grp.finish();

    // State held after the stream, per open partial.
    let mut engine = Engine::new(&set);
    let mut out = Vec::new();
    for l in &lines {
        engine.observe(&decode_native(l).expect("decode"), &mut out);
    }
    for (id, s) in engine.state_stats() {
        if s.open > 0 {
            eprintln!(
                "pack state {id}: {} open, {} bytes, {} bytes each, rejected {}, evicted {}",
                s.open,
                s.bytes,
                s.bytes / s.open,
                s.rejected,
                s.evicted
            );
        }
    }

    // Adversarial: every event opens a partial of several chain rules.
    let adversarial: Vec<Event> = (0..200_000u64)
        .map(|i| {
            let text = format!(
                r#"{{"event.id":"adv{i:08}","@timestamp":"2026-11-20T10:{:02}:{:02}Z","mcp.method.name":"tools/call","gen_ai.agent.id":"agent-{i}","mcp.session.id":"s-{i}","audit.target":"filesystem","gen_ai.tool.name":"read_file","audit.data_class":"secret","audit.decision":"allow","audit.result_fp":["{:016x}","{:016x}"],"gen_ai.tool.call.arguments":{{"path":"/srv/.env"}}}}"#,
                (i / 3000) % 60,
                (i / 50) % 60,
                i,
                i + 1
            );
            decode_native(text.as_bytes()).expect("decode")
        })
        .collect();
    let mut grp = c.benchmark_group("adversarial");
    grp.throughput(Throughput::Elements(adversarial.len() as u64));
    grp.sample_size(10);
    grp.bench_function("open_partials_full_pack", |b| {
        b.iter(|| {
            let mut engine = Engine::new(&set);
            let mut out = Vec::new();
            for ev in &adversarial {
                engine.observe(ev, &mut out);
            }
            black_box(out.len())
        })
    });
    grp.finish();
    let mut engine = Engine::new(&set);
    let mut out = Vec::new();
    for ev in &adversarial {
        engine.observe(ev, &mut out);
    }
    for (id, s) in engine.state_stats() {
        if s.open > 0 {
            eprintln!(
                "adversarial state {id}: {} open, {} bytes, {} bytes each, evicted {}",
                s.open,
                s.bytes,
                s.bytes / s.open,
                s.evicted
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, pack
}
criterion_main!(benches);
