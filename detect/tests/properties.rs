//! Invariants of the engine over generated traffic: a replay yields the same alerts with the
//! same ids, and shifting every timestamp by whole days changes nothing but the times.

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
    fn replay_and_time_shift_invariance(seed in 0u64..10_000, shift_days in -4_000i64..4_000) {
        // Whole days: the pack has a time-of-day rule (off-hours administration), whose
        // verdicts rightly change with the hour.
        let shift_s = shift_days * 86_400;
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

fn chain_rules() -> RuleSet {
    RuleSet::from_text(
        "chains.yaml",
        r#"id: p.seq
title: seq
severity: low
query: 'sequence by gen_ai.agent.id with maxspan=20s [tool where audit.data_class == "secret"] [tool where gen_ai.tool.name : "send_*"] [tool where audit.decision == "deny"]'
---
id: p.thr
title: thr
severity: low
query: 'threshold by gen_ai.agent.id with window=30s, count >= 4 [tool where audit.decision == "deny"]'
---
id: p.miss
title: miss
severity: low
query: 'sequence by gen_ai.agent.id with maxspan=15s [tool where audit.data_class == "secret"] ![tool where audit.decision == "deny"]'
"#,
    )
    .unwrap()
}

/// Small random streams over few agents, tools and classes, so that chains do happen.
fn stream() -> impl Strategy<Value = Vec<Event>> {
    let one = (0u8..3, 0u8..4, 0u8..3, 0u8..2, 0u32..5);
    prop::collection::vec(one, 1..80).prop_map(|items| {
        let mut t = 0u32;
        items
            .into_iter()
            .enumerate()
            .map(|(i, (agent, tool, class, deny, gap))| {
                t += gap;
                let tool = ["send_email", "read_file", "send_dm", "query"][tool as usize];
                let class = ["secret", "internal", "pii"][class as usize];
                let decision = ["allow", "deny"][deny as usize];
                let text = format!(
                    r#"{{"event.id":"e{i:04}","@timestamp":"2026-11-20T10:{:02}:{:02}Z","mcp.method.name":"tools/call","gen_ai.agent.id":"a{agent}","gen_ai.tool.name":"{tool}","audit.data_class":"{class}","audit.decision":"{decision}"}}"#,
                    t / 60,
                    t % 60
                );
                cordon_ingest::decode_native(text.as_bytes()).unwrap()
            })
            .collect()
    })
}

fn pushed(set: &RuleSet, events: &[Event], lateness_s: u64) -> Vec<Alert> {
    let mut e = Engine::new(set).with_allowed_lateness(std::time::Duration::from_secs(lateness_s));
    let mut out = Vec::new();
    for ev in events {
        e.push(ev.clone(), &mut out).unwrap();
    }
    e.finish(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sequences_are_ordered_and_within_maxspan(events in stream()) {
        let set = chain_rules();
        for a in run(&set, &events) {
            let ts: Vec<i64> = a.events.iter().map(|e| e.timestamp_nanos().unwrap()).collect();
            prop_assert!(ts.windows(2).all(|w| w[0] <= w[1]), "out of order: {:?}", a.events);
            let span = ts.last().unwrap() - ts.first().unwrap();
            let max = match a.rule_id.as_str() { "p.seq" => 20, "p.thr" => 30, _ => 15 };
            prop_assert!(span <= max * 1_000_000_000, "{} spans {span} ns", a.rule_id);
            let agents: std::collections::HashSet<_> = a.events.iter().map(|e| e.agent_id()).collect();
            prop_assert_eq!(agents.len(), 1);
        }
    }

    #[test]
    fn shuffling_within_the_allowed_lateness_changes_nothing(events in stream(), seed in any::<u64>()) {
        let set = chain_rules();
        let ordered = pushed(&set, &events, 0);
        // Swap neighbours whose times differ by less than the lateness (5 s).
        let mut shuffled = events.clone();
        let mut x = seed | 1;
        for i in 1..shuffled.len() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            let gap = shuffled[i].timestamp_nanos().unwrap() - shuffled[i - 1].timestamp_nanos().unwrap();
            if x % 2 == 0 && gap < 5_000_000_000 {
                shuffled.swap(i - 1, i);
            }
        }
        let got = pushed(&set, &shuffled, 5);
        let ids = |v: &[Alert]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        prop_assert_eq!(ids(&ordered), ids(&got));
    }
}
