//! Conformance of sequences, samples and thresholds, written from the semantics of EQL
//! (Elasticsearch dialect) for `sequence`, `by`, `with maxspan`, `until`, `runs`, missing
//! steps `![…]` and `sample`, plus Cordon's cross-step fields, `lineage()` and thresholds.

#![allow(clippy::unwrap_used)]

use cordon_detect::{Alert, Engine};
use cordon_ingest::{decode_native, Event};
use cordon_rules::RuleSet;

/// An event `name` at second `t`, for agent `agent`, with extra JSON fields.
fn ev(t: u32, name: &str, agent: &str, extra: &str) -> Event {
    let sep = if extra.is_empty() { "" } else { "," };
    let text = format!(
        r#"{{"event.id":"e{t:05}-{name}","@timestamp":"2026-11-20T10:{:02}:{:02}Z","mcp.method.name":"tools/call","gen_ai.tool.name":"{name}","gen_ai.agent.id":"{agent}"{sep}{extra}}}"#,
        t / 60,
        t % 60
    );
    decode_native(text.as_bytes()).unwrap()
}

fn rule(query: &str) -> RuleSet {
    let text = format!(
        "id: t\ntitle: t\nseverity: high\nquery: |\n  {}\n",
        query.replace('\n', "\n  ")
    );
    RuleSet::from_text("t.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{query}"))
}

fn run(set: &RuleSet, events: &[Event]) -> Vec<Alert> {
    let mut e = Engine::new(set);
    let mut out = Vec::new();
    for x in events {
        e.observe(x, &mut out);
    }
    e.finish(&mut out);
    out
}

/// Each match as the tool names of its events, in step order.
fn names(alerts: &[Alert]) -> Vec<Vec<String>> {
    alerts
        .iter()
        .map(|a| {
            a.events
                .iter()
                .map(|e| {
                    e.id().unwrap().split('-').nth(1).unwrap().to_owned() + &e.id().unwrap()[1..6]
                })
                .collect()
        })
        .collect()
}

const AB: &str = r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#;

#[test]
fn steps_match_in_order_per_key() {
    let set = rule(AB);
    assert_eq!(
        names(&run(&set, &[ev(1, "a", "x", ""), ev(2, "b", "x", "")])),
        [["a00001", "b00002"]]
    );
    assert!(
        run(&set, &[ev(1, "b", "x", ""), ev(2, "a", "x", "")]).is_empty(),
        "out of order"
    );
    assert!(
        run(&set, &[ev(1, "a", "x", ""), ev(2, "b", "y", "")]).is_empty(),
        "different keys"
    );
    // One `a` extends once: two `b`s after one `a` make one match.
    assert_eq!(
        run(
            &set,
            &[
                ev(1, "a", "x", ""),
                ev(2, "b", "x", ""),
                ev(3, "b", "x", "")
            ]
        )
        .len(),
        1
    );
}

#[test]
fn maxspan_bounds_the_whole_sequence() {
    let set2 = rule(
        r#"sequence by gen_ai.agent.id with maxspan=30s [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    assert_eq!(
        run(&set2, &[ev(0, "a", "x", ""), ev(30, "b", "x", "")]).len(),
        1,
        "exactly maxspan is within"
    );
    assert!(run(&set2, &[ev(0, "a", "x", ""), ev(31, "b", "x", "")]).is_empty());
}

#[test]
fn until_closes_open_sequences() {
    let set = rule(
        r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"] until [tool where gen_ai.tool.name == "stop"]"#,
    );
    assert!(run(
        &set,
        &[
            ev(1, "a", "x", ""),
            ev(2, "stop", "x", ""),
            ev(3, "b", "x", "")
        ]
    )
    .is_empty());
    assert_eq!(
        run(
            &set,
            &[
                ev(1, "a", "x", ""),
                ev(2, "stop", "y", ""),
                ev(3, "b", "x", "")
            ]
        )
        .len(),
        1,
        "until is per key"
    );
    assert_eq!(
        run(
            &set,
            &[
                ev(1, "a", "x", ""),
                ev(2, "stop", "x", ""),
                ev(3, "a", "x", ""),
                ev(4, "b", "x", "")
            ]
        )
        .len(),
        1
    );
}

#[test]
fn runs_repeat_a_step() {
    let set = rule(
        r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] with runs=3 [tool where gen_ai.tool.name == "b"]"#,
    );
    let two = [
        ev(1, "a", "x", ""),
        ev(2, "a", "x", ""),
        ev(3, "b", "x", ""),
    ];
    assert!(run(&set, &two).is_empty());
    let three = [
        ev(1, "a", "x", ""),
        ev(2, "a", "x", ""),
        ev(3, "a", "x", ""),
        ev(4, "b", "x", ""),
    ];
    assert_eq!(
        names(&run(&set, &three)),
        [["a00001", "a00002", "a00003", "b00004"]]
    );
}

#[test]
fn missing_steps_middle_trailing_leading() {
    let mid = rule(
        r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] ![tool where gen_ai.tool.name == "x"] [tool where gen_ai.tool.name == "b"]"#,
    );
    let m = run(&mid, &[ev(1, "a", "u", ""), ev(2, "b", "u", "")]);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].missing_steps, [1]);
    assert!(run(
        &mid,
        &[
            ev(1, "a", "u", ""),
            ev(2, "x", "u", ""),
            ev(3, "b", "u", "")
        ]
    )
    .is_empty());
    assert_eq!(
        run(
            &mid,
            &[
                ev(1, "a", "u", ""),
                ev(2, "x", "v", ""),
                ev(3, "b", "u", "")
            ]
        )
        .len(),
        1
    );

    let trail = rule(
        r#"sequence by gen_ai.agent.id with maxspan=1m [tool where gen_ai.tool.name == "a"] ![tool where gen_ai.tool.name == "x"]"#,
    );
    // The span closes on the watermark (a later event of any key), not at end of input only.
    let m = run(&trail, &[ev(0, "a", "u", ""), ev(90, "z", "other", "")]);
    assert_eq!(m.len(), 1);
    assert!(run(
        &trail,
        &[
            ev(0, "a", "u", ""),
            ev(30, "x", "u", ""),
            ev(90, "z", "o", "")
        ]
    )
    .is_empty());
    assert_eq!(
        run(
            &trail,
            &[
                ev(0, "a", "u", ""),
                ev(61, "x", "u", ""),
                ev(90, "z", "o", "")
            ]
        )
        .len(),
        1,
        "x after the span"
    );

    let lead = rule(
        r#"sequence by gen_ai.agent.id with maxspan=1m ![tool where gen_ai.tool.name == "x"] [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    assert_eq!(
        run(&lead, &[ev(1, "a", "u", ""), ev(2, "b", "u", "")]).len(),
        1
    );
    assert!(run(
        &lead,
        &[
            ev(0, "x", "u", ""),
            ev(10, "a", "u", ""),
            ev(20, "b", "u", "")
        ]
    )
    .is_empty());
    assert_eq!(
        run(
            &lead,
            &[
                ev(0, "x", "u", ""),
                ev(70, "a", "u", ""),
                ev(80, "b", "u", "")
            ]
        )
        .len(),
        1
    );
}

#[test]
fn per_step_keys_join_positionally_and_optional_keys_join_null() {
    let set = rule(
        r#"sequence [tool where gen_ai.tool.name == "a"] by gen_ai.agent.id [tool where gen_ai.tool.name == "b"] by ?delegate"#,
    );
    assert_eq!(
        run(
            &set,
            &[ev(1, "a", "x", ""), ev(2, "b", "y", r#""delegate":"x""#)]
        )
        .len(),
        1
    );
    assert!(run(
        &set,
        &[ev(1, "a", "x", ""), ev(2, "b", "y", r#""delegate":"z""#)]
    )
    .is_empty());
    let opt = rule(
        r#"sequence by ?team [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    assert_eq!(
        run(&opt, &[ev(1, "a", "x", ""), ev(2, "b", "y", "")]).len(),
        1,
        "null joins null"
    );
    let req = rule(
        r#"sequence by ?team [tool where gen_ai.tool.name == "a"] by gen_ai.agent.id [tool where gen_ai.tool.name == "b"] by gen_ai.agent.id"#,
    );
    assert!(
        run(&req, &[ev(1, "a", "x", ""), ev(2, "b", "y", "")]).is_empty(),
        "null team, different agents"
    );
}

#[test]
fn replaying_step_one_neither_resets_nor_starves_a_chain() {
    let set = rule(
        r#"sequence by gen_ai.agent.id with maxspan=10m [tool where gen_ai.tool.name == "read"] [tool where gen_ai.tool.name == "send" and lineage($1) > 0]"#,
    );
    let secret = r#""audit.result_fp":["00000000000000aa"]"#;
    let noise = r#""audit.result_fp":["00000000000000bb"]"#;
    let mut evs = vec![ev(0, "read", "x", secret)];
    for i in 1..200 {
        evs.push(ev(i, "read", "x", noise));
    }
    evs.push(ev(
        300,
        "send",
        "x",
        r#""audit.args_fp":["00000000000000aa"]"#,
    ));
    let m = run(&set, &evs);
    assert_eq!(
        m.len(),
        1,
        "the flood of step-1 events did not push out the real one"
    );
    assert_eq!(m[0].events[0].id(), Some("e00000-read"));
    // Two reads then two sends: each send extends the earliest open read.
    let evs = [
        ev(0, "read", "x", secret),
        ev(1, "read", "x", secret),
        ev(2, "send", "x", r#""audit.args_fp":["00000000000000aa"]"#),
        ev(3, "send", "x", r#""audit.args_fp":["00000000000000aa"]"#),
    ];
    assert_eq!(
        names(&run(&set, &evs)),
        [["read00000", "send00002"], ["read00001", "send00003"]]
    );
}

#[test]
fn cross_step_fields_and_lineage() {
    let set = rule(
        r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b" and audit.target != $1.audit.target]"#,
    );
    assert_eq!(
        run(
            &set,
            &[
                ev(1, "a", "x", r#""audit.target":"s1""#),
                ev(2, "b", "x", r#""audit.target":"s2""#)
            ]
        )
        .len(),
        1
    );
    assert!(run(
        &set,
        &[
            ev(1, "a", "x", r#""audit.target":"s1""#),
            ev(2, "b", "x", r#""audit.target":"s1""#)
        ]
    )
    .is_empty());
    let lin = rule(
        r#"sequence by gen_ai.agent.id [tool where gen_ai.tool.name == "read"] [tool where gen_ai.tool.name == "send" and lineage($1) >= 2]"#,
    );
    let read = r#""audit.result_fp":["0000000000000001","0000000000000002","0000000000000003"]"#;
    assert_eq!(
        run(
            &lin,
            &[
                ev(1, "read", "x", read),
                ev(
                    2,
                    "send",
                    "x",
                    r#""audit.args_fp":["0000000000000002","0000000000000003"]"#
                )
            ]
        )
        .len(),
        1
    );
    assert!(run(
        &lin,
        &[
            ev(1, "read", "x", read),
            ev(
                2,
                "send",
                "x",
                r#""audit.args_fp":["0000000000000003","0000000000000009"]"#
            )
        ]
    )
    .is_empty());
    let err = RuleSet::from_text("t.yaml", "id: t\ntitle: t\nseverity: low\nquery: 'sequence [tool where $2.audit.target == \"x\"] [tool where true]'\n").unwrap_err();
    assert!(err.to_string().contains("not an earlier step"), "{err}");
}

#[test]
fn samples_are_unordered_and_temporal_with_maxspan() {
    let set = rule(
        r#"sample by gen_ai.agent.id [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    assert_eq!(
        names(&run(&set, &[ev(1, "b", "x", ""), ev(2, "a", "x", "")])),
        [["a00002", "b00001"]]
    );
    let temporal = rule(
        r#"sample by gen_ai.agent.id with maxspan=1m [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    assert!(run(&temporal, &[ev(0, "b", "x", ""), ev(90, "a", "x", "")]).is_empty());
    assert_eq!(
        run(&temporal, &[ev(0, "b", "x", ""), ev(50, "a", "x", "")]).len(),
        1
    );
}

#[test]
fn thresholds_count_and_distinct_in_sliding_windows() {
    let set = rule(
        r#"threshold by gen_ai.agent.id with window=1m, count >= 5 [tool where gen_ai.tool.name == "deny"]"#,
    );
    let burst: Vec<Event> = (0..5).map(|i| ev(i * 10, "deny", "x", "")).collect();
    let m = run(&set, &burst);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].events.len(), 5);
    let slow: Vec<Event> = (0..10).map(|i| ev(i * 20, "deny", "x", "")).collect();
    assert!(run(&set, &slow).is_empty(), "never 5 within a minute");
    let ten: Vec<Event> = (0..10).map(|i| ev(i, "deny", "x", "")).collect();
    assert_eq!(
        run(&set, &ten).len(),
        2,
        "the window restarts after an alert"
    );

    let d = rule(
        r#"threshold by gen_ai.agent.id with window=10m, distinct(audit.target) > 2 [tool where true]"#,
    );
    let same: Vec<Event> = (0..6)
        .map(|i| ev(i, "t", "x", r#""audit.target":"s1""#))
        .collect();
    assert!(run(&d, &same).is_empty());
    let spread: Vec<Event> = (0..3)
        .map(|i| ev(i, "t", "x", &format!(r#""audit.target":"s{i}""#)))
        .collect();
    assert_eq!(run(&d, &spread).len(), 1);

    // Values leave the window by their last sighting: s0 at 0 s is gone by 650 s, s1 stays
    // while it is seen again, and a value seen anew counts again.
    let at = |t: u32, target: &str| ev(t, "t", "x", &format!(r#""audit.target":"{target}""#));
    let refreshed = [
        at(0, "s0"),
        at(60, "s1"),
        at(120, "s1"),
        at(650, "s2"),
        at(700, "s0"),
    ];
    assert_eq!(
        run(&d, &refreshed).len(),
        1,
        "s1, s2 and s0 within 10 minutes"
    );
    let expired = [at(0, "s0"), at(60, "s1"), at(650, "s2"), at(700, "s0")];
    assert!(
        run(&d, &expired).is_empty(),
        "at 700 s, s1 (last seen at 60 s) has left the window"
    );
}

#[test]
fn reorder_buffer_puts_events_in_order_and_refuses_late_ones() {
    let set = rule(AB);
    let mut e = Engine::new(&set).with_allowed_lateness(std::time::Duration::from_secs(10));
    let mut out = Vec::new();
    e.push(ev(5, "b", "x", ""), &mut out).unwrap();
    e.push(ev(1, "a", "x", ""), &mut out).unwrap();
    e.push(ev(40, "z", "x", ""), &mut out).unwrap();
    assert_eq!(out.len(), 1, "a before b once reordered");
    let late = e.push(ev(2, "a", "x", ""), &mut out).unwrap_err();
    assert!(late
        .reason(std::time::Duration::from_secs(10))
        .contains("behind the watermark"));
    assert_eq!(e.stats().late, 1);
    assert_eq!(e.stats().reordered, 1);
}

#[test]
fn state_is_bounded_and_counted() {
    let set = rule(
        r#"sequence by gen_ai.agent.id with maxspan=1h [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    let mut e = Engine::new(&set);
    let mut out = Vec::new();
    for i in 0..20 {
        e.observe(&ev(i, "a", "x", ""), &mut out);
    }
    let (_, s) = e.state_stats().into_iter().next().unwrap();
    assert_eq!(s.open, cordon_detect::sequence::PER_KEY_STAGE_CAP);
    assert_eq!(
        s.rejected,
        20 - cordon_detect::sequence::PER_KEY_STAGE_CAP as u64
    );
    assert!(s.bytes > 0);
}

#[test]
fn multi_valued_keys_join_on_any_shared_value() {
    let set = rule(
        r#"sequence with maxspan=1h [tool where gen_ai.tool.name == "read"] by audit.result_fp [tool where gen_ai.tool.name == "send" and gen_ai.agent.id != $1.gen_ai.agent.id] by audit.args_fp"#,
    );
    let read = ev(
        1,
        "read",
        "x",
        r#""audit.result_fp":["0000000000000001","0000000000000002"]"#,
    );
    let other = ev(2, "read", "y", r#""audit.result_fp":["0000000000000005"]"#);
    let send = ev(
        3,
        "send",
        "z",
        r#""audit.args_fp":["0000000000000002","0000000000000007"]"#,
    );
    let m = run(&set, &[read.clone(), other, send]);
    assert_eq!(
        names(&m),
        [["read00001", "send00003"]],
        "one match, though the read fanned out under two keys"
    );
    let same_agent = ev(3, "send", "x", r#""audit.args_fp":["0000000000000002"]"#);
    assert!(run(&set, &[read.clone(), same_agent]).is_empty());
    let unrelated = ev(3, "send", "z", r#""audit.args_fp":["0000000000000009"]"#);
    assert!(run(&set, &[read, unrelated]).is_empty());
}

#[test]
fn the_global_cap_evicts_the_oldest_partials_and_counts_them() {
    use cordon_detect::sequence::SequenceDetector;
    use cordon_detect::Stateful;
    use cordon_rules::CompiledQuery;
    let set = rule(
        r#"sequence by gen_ai.agent.id with maxspan=1h [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    let CompiledQuery::Sequence(spec) = set.rules[0].query.query.clone() else {
        panic!("a sequence")
    };
    let mut d = SequenceDetector::with_caps(spec, 100);
    let mut out = Vec::new();
    for i in 0..1000 {
        d.observe(&ev(i, "a", &format!("agent{i}"), ""), &mut out);
    }
    let s = d.state();
    assert!(s.open <= 100, "{s:?}");
    assert!(s.evicted >= 900, "{s:?}");
    // The newest partials survive: the last agent's chain still completes, the first's not.
    d.observe(&ev(1001, "b", "agent999", ""), &mut out);
    d.observe(&ev(1002, "b", "agent0", ""), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].events[0].agent_id(), Some("agent999"));
}

/// At the cap, partials that start at the same time are evicted in key order, not in the
/// iteration order of the detector's map (which depends on its history: a detector restored
/// from a checkpoint iterates differently from the one that wrote it), so an engine that was
/// checkpointed and restored keeps the same partials as one that ran straight through.
#[test]
fn the_global_cap_breaks_ties_the_same_way_every_time() {
    use cordon_detect::sequence::SequenceDetector;
    use cordon_detect::Stateful;
    use cordon_rules::CompiledQuery;
    let set = rule(
        r#"sequence by gen_ai.agent.id with maxspan=1h [tool where gen_ai.tool.name == "a"] [tool where gen_ai.tool.name == "b"]"#,
    );
    let CompiledQuery::Sequence(spec) = set.rules[0].query.query.clone() else {
        panic!("a sequence")
    };
    // 300 chains opened in the same second (every eviction is a tie), with a checkpoint and
    // restore after `restore_at` of them; then every chain's second step.
    let survivors = |restore_at: Option<usize>| {
        let mut d = SequenceDetector::with_caps(spec.clone(), 100);
        let mut out = Vec::new();
        for i in 0..300 {
            if restore_at == Some(i) {
                let saved = d.save().unwrap();
                d = SequenceDetector::with_caps(spec.clone(), 100);
                d.load(&saved).unwrap();
            }
            d.observe(
                &ev(5, "a", &format!("agent{:03}", (i * 7) % 300), ""),
                &mut out,
            );
        }
        for i in 0..300 {
            d.observe(&ev(6, "b", &format!("agent{i:03}"), ""), &mut out);
        }
        let mut done: Vec<String> = out
            .iter()
            .map(|f| f.events[0].agent_id().unwrap_or_default().to_owned())
            .collect();
        done.sort();
        done
    };
    let straight = survivors(None);
    assert!(
        !straight.is_empty() && straight.len() <= 100,
        "{}",
        straight.len()
    );
    for at in [40, 95, 101, 150, 233, 299] {
        assert_eq!(survivors(Some(at)), straight, "restored after {at}");
    }
    // The keys that sort last survive.
    assert_eq!(straight.last().map(String::as_str), Some("agent299"));
}

#[test]
fn a_reload_keeps_partial_matches_of_unchanged_rules_only() {
    let two = |second_version: u32| {
        RuleSet::from_text(
            "t.yaml",
            &format!(
                "id: same\ntitle: t\nseverity: high\nquery: |\n  {AB}\n---\n\
                 id: bumped\nversion: {second_version}\ntitle: t\nseverity: high\nquery: |\n  {AB}\n"
            ),
        )
        .unwrap()
    };
    let mut e = Engine::new(&two(1));
    let mut out = Vec::new();
    e.observe(&ev(1, "a", "x", ""), &mut out);
    // Between step 1 and step 2: a new version of one rule, one rule added, none removed.
    let mut next = two(2);
    next.rules.push(
        rule(r#"tool where gen_ai.tool.name == "b""#)
            .rules
            .remove(0),
    );
    let report = e.replace_rules(&next);
    assert_eq!(report.kept, ["same"]);
    assert_eq!(report.changed, ["bumped"]);
    assert_eq!(report.added, ["t"]);
    assert!(report.removed.is_empty());
    e.observe(&ev(2, "b", "x", ""), &mut out);
    e.finish(&mut out);
    let mut fired: Vec<&str> = out.iter().map(|a| a.rule_id.as_str()).collect();
    fired.sort_unstable();
    // `same` completes its chain across the reload; `bumped` starts empty; `t` is live.
    assert_eq!(fired, ["same", "t"]);
    assert_eq!(e.rules().len(), 3);
    assert_eq!(e.rule_stats()[0].alerts, 1);
    // Removed rules go; a rule whose query changed under the same id starts again.
    let report = e.replace_rules(&rule(AB));
    assert_eq!(report.removed, ["same", "bumped"]);
    assert_eq!(report.changed, ["t"]);
    assert_eq!(e.rule_stats()[0].alerts, 0);
}
