//! What a partition checkpoint costs at a high event rate, against writing the whole state
//! (the baseline, measured in the same run).
//!
//! One partition's share of generated traffic (seed 5, 150 agents, every attack) is run at
//! 8 000 events per second of event time, as the Kafka bench's live phase does at 32 000
//! events/s over 4 partitions: every session then falls inside the rules' windows, and a
//! session-keyed rule holds a window per session. After 14 s of it, a checkpoint is taken;
//! then one more second of events, and:
//!
//! - `copy`: the copy of the engine the pipeline takes on the engine thread;
//! - `full`: that copy written whole (against the chain's event log);
//! - `delta`: that copy written as a delta against the copy of a second before;
//! - `delta, buffer reused`: the same, with each checkpoint's bytes handed back once written
//!   (`cordon_detect::checkpoint::recycle`), as the Kafka committer does: the next one is
//!   written into the same memory instead of new pages.
//!
//! Bytes written are printed once, before the timings.

// criterion_group! defines an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;

use cordon_detect::checkpoint::EventLog;
use cordon_detect::Engine;
use cordon_ingest::generate::{generate, GenConfig};
use cordon_rules::RuleSet;
use criterion::{criterion_group, criterion_main, Criterion};

/// The allocator `cordon` runs with: checkpoints allocate a buffer per event, and the system
/// allocator would make them look slower than they are.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-time spacing: 8 000 events per second.
const STEP_NANOS: i64 = 125_000;
const SECOND: usize = 8_000;

fn setup() -> (Engine, Engine, EventLog) {
    let events = generate(&GenConfig {
        seed: 5,
        agents: 150,
        duration_nanos: 134 * 3_600_000_000_000,
        sessions_per_attack: 6,
        ..Default::default()
    })
    .events;
    // About a quarter of the agents, as one of four partitions keyed by agent would get.
    let mine: Vec<_> = events
        .into_iter()
        .filter(|e| {
            e.agent_id()
                .is_some_and(|a| a.bytes().map(u32::from).sum::<u32>() % 4 == 0)
        })
        .take(15 * SECOND)
        .collect();
    let set = RuleSet::builtin().expect("the built-in rules");
    let mut engine = Engine::new(&set).with_allowed_lateness(std::time::Duration::ZERO);
    let t0: i64 = 1_800_000_000_000_000_000;
    let mut out = Vec::new();
    let mut log = EventLog::default();
    let mut prev = None;
    for (i, mut ev) in mine.into_iter().enumerate() {
        ev.set_timestamp_nanos(t0 + i as i64 * STEP_NANOS);
        let _ = engine.push(ev, &mut out);
        if (i + 1) % SECOND == 0 && i + 1 < 15 * SECOND {
            let copy = engine.clone_state();
            log = copy
                .checkpoint_with(std::mem::take(&mut log))
                .expect("checkpoint")
                .log;
            prev = Some(copy);
        }
    }
    (engine, prev.expect("a checkpoint a second before"), log)
}

fn bench(c: &mut Criterion) {
    let (engine, prev, log) = setup();
    let now = engine.clone_state();
    let full = now.checkpoint_with(log.clone()).expect("full");
    let delta = now.checkpoint_delta(&prev, log.clone()).expect("delta");
    println!(
        "checkpoint after 15 s at 8 000 events/s: full {} bytes, delta {} bytes ({:.2} of full); new events {} in both; largest parts of the full one: {:?}",
        full.bytes.len(),
        delta.bytes.len(),
        delta.bytes.len() as f64 / full.bytes.len() as f64,
        delta.new_events,
        full.largest
    );
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(20);
    g.bench_function("copy", |b| b.iter(|| black_box(engine.clone_state())));
    g.bench_function("full", |b| {
        b.iter(|| black_box(now.checkpoint_with(log.clone()).expect("full")))
    });
    g.bench_function("delta", |b| {
        b.iter(|| black_box(now.checkpoint_delta(&prev, log.clone()).expect("delta")))
    });
    g.bench_function("delta, buffer reused", |b| {
        b.iter(|| {
            let w = now.checkpoint_delta(&prev, log.clone()).expect("delta");
            black_box(w.bytes.len());
            cordon_detect::checkpoint::recycle(w.bytes);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
