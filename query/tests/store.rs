//! The shared alert store across instances: after a Kafka partition moves, its new owner
//! replays events since the last checkpoint and raises some alerts again; those another
//! instance already stored are recognised and not stored twice — whatever day partition
//! they fall in (partitions run at different points in event time, so the replayed alerts
//! need not be in the latest days).

#![allow(clippy::unwrap_used)]

use cordon_query::store::AlertStore;

#[test]
fn a_replayed_alert_of_an_old_day_is_not_stored_twice() {
    let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
        agents: 30,
        duration_nanos: 4 * 24 * 3_600_000_000_000,
        ..Default::default()
    });
    let set = cordon_rules::RuleSet::builtin().unwrap();
    let mut engine = cordon_detect::Engine::new(&set);
    let mut alerts = Vec::new();
    for ev in g.events {
        engine.push(ev, &mut alerts).unwrap();
    }
    engine.finish(&mut alerts);
    alerts.sort_by_key(|a| a.last_seen_ms);
    let day = |a: &cordon_detect::Alert| a.last_seen_ms / 86_400_000;
    let days: std::collections::BTreeSet<i64> = alerts.iter().map(day).collect();
    assert!(days.len() >= 3, "alerts on {} days", days.len());
    let oldest = alerts[0].clone();

    let dir = tempfile::tempdir().unwrap();
    // Two instances on one store. The first stores everything, the oldest day's alert last
    // (the partition that is behind in event time was the last to write before it died).
    let mut one = AlertStore::open(dir.path()).unwrap();
    let mut two = AlertStore::open(dir.path()).unwrap();
    for a in alerts.iter().skip(1) {
        one.append(a.clone()).unwrap();
    }
    one.flush().unwrap();
    one.append(oldest.clone()).unwrap();
    one.flush().unwrap();
    drop(one);
    // The partition moves to the second: it reloads recent ids, then replays.
    two.remember_recent().unwrap();
    two.append(oldest).unwrap();
    two.flush().unwrap();
    assert_eq!(
        two.stats().duplicates,
        1,
        "the replayed alert is recognised"
    );
}
