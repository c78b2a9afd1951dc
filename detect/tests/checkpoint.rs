//! Checkpoints: an engine stopped anywhere in the stream, saved and restored into a fresh
//! engine, gives exactly the alerts of one that never stopped — chains whose first steps came
//! before the cut complete after it, baselines and suppression carry over, events waiting in
//! the reorder buffer are not lost.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cordon_detect::{Alert, Engine};
use cordon_ingest::generate::{generate, GenConfig};
use cordon_ingest::Event;
use cordon_rules::RuleSet;

const LATENESS: Duration = Duration::from_secs(600);

fn stream() -> Vec<Event> {
    let mut events = generate(&GenConfig {
        seed: 7,
        agents: 12,
        duration_nanos: 8 * 3_600_000_000_000,
        sessions_per_attack: 3,
        ..Default::default()
    })
    .events;
    // Some disorder, so the reorder buffer holds events at the cuts.
    for chunk in events.chunks_mut(4) {
        chunk.reverse();
    }
    events
}

fn engine(set: &RuleSet) -> Engine {
    Engine::new(set).with_allowed_lateness(LATENESS)
}

fn run(e: &mut Engine, events: &[Event], out: &mut Vec<Alert>) -> usize {
    let mut late = 0;
    for ev in events {
        late += usize::from(e.push(ev.clone(), out).is_err());
    }
    late
}

/// An engine that never stops, over every event: the engine, its alerts (windows closed at
/// the end) and the events it refused as late.
fn uninterrupted(set: &RuleSet, events: &[Event]) -> (Engine, Vec<Alert>, usize) {
    let mut whole = engine(set);
    let mut alerts = Vec::new();
    let late = run(&mut whole, events, &mut alerts);
    whole.finish(&mut alerts);
    (whole, alerts, late)
}

fn fingerprint(alerts: &[Alert]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| serde_json::to_string(&a.to_ocsf()).unwrap())
        .collect()
}

#[test]
fn restored_engine_gives_the_same_alerts() {
    let set = RuleSet::builtin().unwrap();
    let events = stream();
    let (whole, reference, late) = uninterrupted(&set, &events);
    assert!(reference.len() > 20, "{} alerts", reference.len());
    let rules: std::collections::BTreeSet<&str> =
        reference.iter().map(|a| a.rule_id.as_str()).collect();
    assert!(rules.len() >= 6, "{rules:?}");
    let reference = fingerprint(&reference);

    for cut in [1, events.len() / 7, events.len() / 2, events.len() * 5 / 6] {
        let mut first = engine(&set);
        let mut out = Vec::new();
        let mut late_here = run(&mut first, &events[..cut], &mut out);
        // The pipeline checkpoints a copy (taken between two events); both must restore.
        let bytes = if cut == 1 {
            first.checkpoint().unwrap()
        } else {
            let copy = first.clone_state();
            drop(first);
            copy.checkpoint().unwrap()
        };
        let mut second = engine(&set);
        let report = second.restore(&bytes).unwrap();
        assert_eq!(report.rules, set.rules.len());
        assert!(report.dropped.is_empty());
        late_here += run(&mut second, &events[cut..], &mut out);
        second.finish(&mut out);
        assert_eq!(late_here, late, "late events at cut {cut}");
        let got = fingerprint(&out);
        assert_eq!(got.len(), reference.len(), "alert count at cut {cut}");
        assert!(got == reference, "alerts differ at cut {cut}");
        assert_eq!(second.stats(), whole.stats(), "counters at cut {cut}");
        assert_eq!(second.rule_stats(), whole.rule_stats());
    }
}

/// The pipeline copies an engine at a checkpoint and writes the copy while the engine runs
/// on: the copy shares the rules' windows and partial matches until either side changes one.
/// Whatever the engine runs after the copy must not reach the copy's checkpoint.
#[test]
fn a_copy_is_not_changed_by_what_the_engine_runs_after_it() {
    let set = RuleSet::builtin().unwrap();
    let events = stream();
    for cut in [events.len() / 5, events.len() / 2] {
        let mut e = engine(&set);
        let mut out = Vec::new();
        run(&mut e, &events[..cut], &mut out);
        let at_cut = e.checkpoint().unwrap();
        let copy = e.clone_state();
        // Enough to extend, complete, expire and evict what the copy holds.
        run(&mut e, &events[cut..], &mut out);
        e.finish(&mut out);
        assert!(e.checkpoint().unwrap() != at_cut);
        assert!(
            copy.checkpoint().unwrap() == at_cut,
            "the copy taken at event {cut} changed after it"
        );
    }
}

#[test]
fn changed_rules_drop_only_their_state_and_bad_bytes_are_refused() {
    let set = RuleSet::builtin().unwrap();
    let events = stream();
    let mut e = engine(&set);
    let mut out = Vec::new();
    run(&mut e, &events[..events.len() / 3], &mut out);
    let bytes = e.checkpoint().unwrap();

    let mut changed = set.clone();
    changed.rules[0].version += 1;
    let id = changed.rules[0].id.clone();
    changed.rules.pop();
    let mut r = engine(&changed);
    let report = r.restore(&bytes).unwrap();
    assert_eq!(report.rules, set.rules.len() - 2);
    assert!(report.dropped.contains(&id), "{report:?}");

    let err = engine(&set).restore(b"not a checkpoint").unwrap_err();
    assert!(
        err.to_string().contains("not a Cordon engine checkpoint"),
        "{err}"
    );
    let err = engine(&set).restore(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("damaged checkpoint"), "{err}");
}

/// `event.id` is the dedupe key: copies of events (a producer's retry, a relay's replay),
/// arriving right after the original or a little later, and on either side of a checkpoint,
/// change no alert and are counted.
#[test]
fn copies_of_events_change_nothing() {
    let set = RuleSet::builtin().unwrap();
    let events = stream();
    let (whole, reference, late) = uninterrupted(&set, &events);
    let reference = fingerprint(&reference);

    // Every 40th event again right after itself, every 97th again three events later.
    let mut copied = Vec::with_capacity(events.len() * 11 / 10);
    let mut copies = 0;
    for (i, ev) in events.iter().enumerate() {
        copied.push(ev.clone());
        if i % 40 == 0 {
            copied.push(ev.clone());
            copies += 1;
        }
        if i >= 3 && i % 97 == 0 {
            copied.push(events[i - 3].clone());
            copies += 1;
        }
    }
    let cut = copied.len() / 2;
    let mut first = engine(&set);
    let mut out = Vec::new();
    let mut late_here = run(&mut first, &copied[..cut], &mut out);
    let bytes = first.checkpoint().unwrap();
    let mut second = engine(&set);
    second.restore(&bytes).unwrap();
    late_here += run(&mut second, &copied[cut..], &mut out);
    second.finish(&mut out);
    assert_eq!(late_here, late);
    assert!(fingerprint(&out) == reference, "alerts differ with copies");
    assert_eq!(second.stats().duplicates, copies);
    assert_eq!(second.stats().events, whole.stats().events);
    // Same id, another time: not a copy (a gateway that reuses ids), so it is processed.
    let mut e = engine(&set);
    let mut ev = events[0].clone();
    e.push(ev.clone(), &mut out).unwrap();
    let ts = ev.timestamp_nanos().unwrap() + 1_000;
    ev.set_timestamp_nanos(ts);
    e.push(ev, &mut out).unwrap();
    e.finish(&mut out);
    assert_eq!((e.stats().duplicates, e.stats().events), (0, 2));
}

/// Checkpoints in a chain write only the events that earlier ones of the chain did not, and
/// restoring the chain gives exactly the alerts of an engine that never stopped.
#[test]
fn a_chain_of_checkpoints_restores_exactly_and_writes_each_event_once() {
    use cordon_detect::checkpoint::EventLog;
    let set = RuleSet::builtin().unwrap();
    let events = stream();
    let reference = fingerprint(&uninterrupted(&set, &events).1);

    let every = events.len() / 23;
    let mut first = engine(&set);
    let mut out = Vec::new();
    let mut chain: Vec<Vec<u8>> = Vec::new();
    let mut log = EventLog::default();
    let mut restored_at = 0;
    for (n, piece) in events.chunks(every).enumerate() {
        run(&mut first, piece, &mut out);
        // A new chain every 8 checkpoints, as a writer would when the chain outgrows the state.
        if n % 8 == 0 {
            chain.clear();
            log = EventLog::default();
        }
        let held = first.clone_state();
        let w = held.checkpoint_with(std::mem::take(&mut log)).unwrap();
        if !chain.is_empty() {
            assert!(
                w.new_events <= 2 * piece.len(),
                "checkpoint {n} wrote {} events after {} new ones",
                w.new_events,
                piece.len()
            );
        }
        chain.push(w.bytes);
        log = w.log;
        // Restore from the chain at a few points, and carry on with the restored engine.
        if n % 5 == 3 {
            let mut second = engine(&set);
            let parts: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            second.restore_chain(&parts).unwrap();
            // The last part alone lacks the chain's earlier events.
            if chain.len() > 1 && !log.is_empty() {
                let err = engine(&set)
                    .restore_chain(&parts[parts.len() - 1..])
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("none of the checkpoint's files"), "{err}");
            }
            first = second;
            restored_at += 1;
            // The restored engine's events are other values: its next checkpoint starts a
            // chain of its own.
            chain.clear();
            log = EventLog::default();
        }
    }
    assert!(restored_at >= 3);
    first.finish(&mut out);
    let got = fingerprint(&out);
    assert_eq!(got.len(), reference.len());
    assert!(got == reference, "alerts differ after chained checkpoints");
}

/// Deltas: after the first checkpoint of a chain, each one writes only the rules' windows and
/// partial matches that changed since the previous one. Restoring the full checkpoint and
/// every delta after it, in order, must give exactly the engine that wrote them: the same
/// alerts to the end of the stream, whichever checkpoint it restarts from. The stream's eight
/// hours are squeezed into three minutes, as at a high event rate: every session is then
/// inside the rules' windows, and most of a checkpoint is rule state.
#[test]
fn a_chain_of_deltas_restores_exactly() {
    use cordon_detect::checkpoint::EventLog;
    let set = RuleSet::builtin().unwrap();
    let mut events = stream();
    let t0 = events
        .iter()
        .filter_map(Event::timestamp_nanos)
        .min()
        .unwrap();
    for e in &mut events {
        if let Some(t) = e.timestamp_nanos() {
            e.set_timestamp_nanos(t0 + (t - t0) / 150);
        }
    }
    // Events a few seconds apart now: a short lateness, or the reorder buffer holds them all.
    let engine = |set: &RuleSet| Engine::new(set).with_allowed_lateness(Duration::from_secs(5));
    let mut whole = engine(&set);
    let mut reference = Vec::new();
    run(&mut whole, &events, &mut reference);
    whole.finish(&mut reference);
    let reference = fingerprint(&reference);

    let every = events.len() / 31;
    let mut first = engine(&set);
    let mut out = Vec::new();
    let mut chain: Vec<Vec<u8>> = Vec::new();
    let mut log = EventLog::default();
    let mut prev: Option<Engine> = None;
    let (mut restored_at, mut deltas, mut delta_bytes, mut full_bytes) = (0, 0, 0, 0);
    for (n, piece) in events.chunks(every).enumerate() {
        run(&mut first, piece, &mut out);
        if n % 10 == 0 {
            chain.clear();
            log = EventLog::default();
            prev = None;
        }
        let held = first.clone_state();
        let w = match &prev {
            Some(p) => {
                deltas += 1;
                // What a full checkpoint of the same state would have written.
                full_bytes += held.checkpoint_with(log.clone()).unwrap().bytes.len();
                let w = held.checkpoint_delta(p, std::mem::take(&mut log)).unwrap();
                delta_bytes += w.bytes.len();
                w
            }
            None => held.checkpoint_with(std::mem::take(&mut log)).unwrap(),
        };
        chain.push(w.bytes);
        log = w.log;
        prev = Some(held);
        if let (Some(p), true) = (&prev, n % 10 > 5) {
            // Nothing run since the copy: the delta writes no rule's state again.
            let again = first.clone_state();
            let unchanged = again.checkpoint_delta(p, log.clone()).unwrap().bytes.len();
            let full = again.checkpoint_with(log.clone()).unwrap().bytes.len();
            assert!(unchanged < full, "{unchanged} bytes, {full} in full");
        }
        if n % 4 == 3 {
            let parts: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            let mut second = engine(&set);
            second.restore_chain(&parts).unwrap();
            assert_eq!(
                second.stats(),
                first.stats(),
                "counters after checkpoint {n}"
            );
            // Open partials and counters; not the byte estimate, which follows how each
            // event's text happens to be laid out in memory.
            let open = |e: &Engine| -> Vec<String> {
                e.state_stats()
                    .into_iter()
                    .map(|(id, mut s)| {
                        s.bytes = 0;
                        format!("{id} {s:?}")
                    })
                    .collect()
            };
            assert_eq!(
                open(&second),
                open(&first),
                "rule state after checkpoint {n}"
            );
            if chain.len() > 1 {
                let err = engine(&set)
                    .restore_chain(&parts[1..])
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("not the full checkpoint"), "{err}");
            }
            first = second;
            restored_at += 1;
            chain.clear();
            log = EventLog::default();
            prev = None;
        }
    }
    assert!(
        restored_at >= 5 && deltas >= 10,
        "{restored_at} restores, {deltas} deltas"
    );
    first.finish(&mut out);
    let got = fingerprint(&out);
    assert_eq!(got.len(), reference.len());
    assert!(
        got == reference,
        "alerts differ after restoring from deltas"
    );
    assert!(
        delta_bytes < full_bytes,
        "deltas wrote {delta_bytes} bytes where full checkpoints would have written {full_bytes}"
    );
}
