//! Baselines through the engine: features reach rules only after warm-up, and alerts of rules
//! that read them carry OCSF `anomaly_analyses` with the baseline and the departing value.

#![allow(clippy::unwrap_used)]

use cordon_detect::{Alert, Engine};
use cordon_rules::RuleSet;

/// Runs one of the call-rate rule's own test scenarios through the production path.
fn call_rate(matching: bool, case: usize) -> (Vec<Alert>, Engine) {
    let set = RuleSet::builtin().unwrap();
    let rule = set
        .rules
        .iter()
        .find(|r| r.id == "cordon.mcp.anomaly.call_rate")
        .unwrap();
    let one = RuleSet {
        rules: vec![rule.clone()],
        library: Default::default(),
    };
    let cases = if matching {
        &rule.tests.should_match
    } else {
        &rule.tests.should_not_match
    };
    let mut engine = Engine::new(&one);
    let mut out = Vec::new();
    for ev in &cases[case] {
        engine.push(ev.clone(), &mut out).unwrap();
    }
    engine.finish(&mut out);
    (out, engine)
}

#[test]
fn rate_anomaly_alerts_carry_their_baseline() {
    let (out, engine) = call_rate(true, 0);
    assert_eq!(out.len(), 1, "one alert (suppressed after)");
    let o = out[0].to_ocsf();
    let a = o["anomaly_analyses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["baselines"][0]["observation_parameter"] == "calls per minute")
        .unwrap();
    let expected: f64 = a["baselines"][0]["observations"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let observed: u64 = a["anomalies"][0]["observations"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(expected < 3.0 && observed as f64 > 5.0 * expected, "{a}");
    assert!(
        o["unmapped"]["cordon.baseline"]["baseline.rate"]
            .as_f64()
            .unwrap()
            > 0.999999
    );
    let st = engine.profiles().stats();
    assert_eq!((st.hot, st.cold, st.evicted, st.dropped), (1, 0, 0, 0));
}

#[test]
fn without_history_baseline_rules_stay_silent() {
    // The burst alone, with no history: warm-up, no alert.
    let (out, _) = call_rate(false, 1);
    assert!(out.is_empty());
}
