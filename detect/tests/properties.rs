//! Invariants of the engine over generated traffic: a replay yields the same alerts with the
//! same ids, and shifting every timestamp by the same amount changes nothing but the times.

#![allow(clippy::unwrap_used)]

use cordon_detect::{Alert, Engine};
use cordon_ingest::generate::{generate, GenConfig};
use cordon_ingest::Event;
use cordon_rules::RuleSet;
use proptest::prelude::*;

fn run(set: &RuleSet, events: &[Event]) -> Vec<Alert> {
    let mut e = Engine::new(set);
    let mut out = Vec::new();
    for ev in events {
        e.observe(ev, &mut out);
    }
    e.finish(&mut out);
    out
}

fn key(a: &Alert) -> (String, Vec<String>) {
    (
        a.rule_id.clone(),
        a.events
            .iter()
            .map(|e| e.id().unwrap().to_owned())
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn replay_and_time_shift_invariance(seed in 0u64..10_000, shift_s in -400_000_000i64..400_000_000) {
        let set = RuleSet::builtin().unwrap();
        let g = generate(&GenConfig { seed, agents: 6, duration_nanos: 3 * 3_600_000_000_000, ..GenConfig::default() });
        let first = run(&set, &g.events);
        let again = run(&set, &g.events);
        prop_assert_eq!(
            first.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
            again.iter().map(|a| a.id.clone()).collect::<Vec<_>>()
        );
        let shifted: Vec<Event> = g
            .events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.set_timestamp_nanos(e.timestamp_nanos().unwrap() + shift_s * 1_000_000_000);
                e
            })
            .collect();
        let moved = run(&set, &shifted);
        prop_assert_eq!(first.iter().map(key).collect::<Vec<_>>(), moved.iter().map(key).collect::<Vec<_>>());
        for (a, b) in first.iter().zip(&moved) {
            prop_assert_eq!(a.last_seen_ms + shift_s * 1000, b.last_seen_ms);
        }
    }
}
