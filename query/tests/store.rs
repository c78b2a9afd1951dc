//! The shared alert store across instances: after a Kafka partition moves, its new owner
//! replays events since the last checkpoint and raises some alerts again; those another
//! instance already stored are recognised and not stored twice — whatever day partition
//! they fall in (partitions run at different points in event time, so the replayed alerts
//! need not be in the latest days).

#![allow(clippy::unwrap_used)]

use cordon_query::store::AlertStore;

/// The built-in rules' alerts on `days` days of generated traffic of `agents` agents.
fn alerts_of(agents: usize, days: i64) -> Vec<cordon_detect::Alert> {
    let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
        agents,
        duration_nanos: days * 24 * 3_600_000_000_000,
        ..Default::default()
    });
    let set = cordon_rules::RuleSet::builtin().unwrap();
    let mut engine = cordon_detect::Engine::new(&set);
    let mut alerts = Vec::new();
    for ev in g.events {
        engine.push(ev, &mut alerts).unwrap();
    }
    engine.finish(&mut alerts);
    alerts
}

#[test]
fn a_replayed_alert_of_an_old_day_is_not_stored_twice() {
    let mut alerts = alerts_of(30, 4);
    alerts.sort_by_key(|a| a.last_seen_ms);
    let day = |a: &cordon_detect::Alert| a.last_seen_ms / 86_400_000;
    let days: std::collections::BTreeSet<i64> = alerts.iter().map(day).collect();
    assert!(days.len() >= 3, "alerts on {} days", days.len());
    let oldest = alerts[0].clone();

    let dir = tempfile::tempdir().unwrap();
    // Two instances on one store. The first stores everything, the oldest day's alert last
    // (the partition that is behind in event time was the last to write before it died).
    let one = AlertStore::open(dir.path()).unwrap();
    let two = AlertStore::open(dir.path()).unwrap();
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

/// When two writers do store one alert twice (a replay racing the other's write), compaction
/// keeps one row per alert: every writer's files of a day merged, copies dropped, the ids
/// and the other alerts' rows untouched.
#[test]
fn compaction_keeps_one_row_per_alert() {
    let alerts = alerts_of(20, 2);
    assert!(alerts.len() >= 2, "{} alerts", alerts.len());
    let dir = tempfile::tempdir().unwrap();
    // Two writers that never read each other's ids: every alert lands twice.
    let one = AlertStore::open(dir.path()).unwrap();
    let two = AlertStore::open(dir.path()).unwrap();
    for a in &alerts {
        one.append(a.clone()).unwrap();
        two.append(a.clone()).unwrap();
    }
    one.flush().unwrap();
    two.flush().unwrap();
    drop((one, two));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let count = |q: &str| -> i64 {
        let sql = rt
            .block_on(cordon_query::sql::Sql::open(
                dir.path(),
                cordon_query::sql::Limits::default(),
            ))
            .unwrap();
        let b = rt.block_on(sql.query(q)).unwrap();
        b[0].column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    let n = alerts.len() as i64;
    assert_eq!(count("SELECT count(*) FROM alerts"), 2 * n);
    let mut store = AlertStore::open(dir.path()).unwrap();
    assert!(store.compact(1).unwrap() >= 1);
    assert_eq!(count("SELECT count(*) FROM alerts"), n);
    assert_eq!(count("SELECT count(DISTINCT alert_id) FROM alerts"), n);
}
