//! The alert store: alerts written per second into Parquet, and SQL latency over them — a
//! filter on one day and rule, and a group-by over everything — with DataFusion, against
//! DuckDB on the same files in the same run when `python3 -c "import duckdb"` works (`pip
//! install duckdb`). Real alerts from generated traffic are copied with new ids and times
//! spread over 30 days. `CORDON_STORE_ALERTS` sets the count (default 1 000 000).

use std::time::Instant;

use cordon_query::sql::{Limits, Sql};
use cordon_query::store::AlertStore;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("CORDON_STORE_ALERTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
        agents: 200,
        duration_nanos: 24 * 3_600_000_000_000,
        ..Default::default()
    });
    let set = cordon_rules::RuleSet::builtin().expect("rules");
    let mut engine = cordon_detect::Engine::new(&set);
    let mut seed = Vec::new();
    for ev in g.events {
        let _ = engine.push(ev, &mut seed);
    }
    engine.finish(&mut seed);
    let dir = std::env::temp_dir().join(format!("cordon-bench-store-{}", std::process::id()));
    let mut store = AlertStore::open(&dir).expect("store");
    let t = Instant::now();
    for i in 0..n {
        let mut a = seed[i % seed.len()].clone();
        a.id = format!("bench-{i:09}");
        let shift = (i as i64 % 30) * 86_400_000;
        a.last_seen_ms += shift;
        a.first_seen_ms += shift;
        store.append(a).expect("append");
    }
    store.flush().expect("flush");
    let secs = t.elapsed().as_secs_f64();
    let (_, files) = store.counts();
    println!(
        "alerts written        {n} in {secs:.1} s: {:.0} alerts/s ({files} files)",
        n as f64 / secs
    );
    let rule = seed[0].rule_id.clone();
    let day = jiff::Timestamp::from_millisecond(seed[0].last_seen_ms)
        .expect("time")
        .strftime("%Y-%m-%d")
        .to_string();
    let queries = [
        ("filter", format!("SELECT count(*) FROM alerts WHERE date = '{day}' AND rule_id = '{rule}'")),
        ("group-by", "SELECT rule_id, severity, count(*) AS n, max(time) FROM alerts GROUP BY rule_id, severity".to_owned()),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (name, q) in &queries {
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(async {
                    let s = Sql::open(
                        &dir,
                        Limits {
                            rows: 1_000_000,
                            ..Limits::default()
                        },
                    )
                    .await
                    .expect("open");
                    s.query(q).await.expect("query")
                });
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let df = median(times);
        let duck = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import duckdb, time\nc = duckdb.connect()\nq = \"\"\"{}\"\"\".replace('FROM alerts', \"FROM read_parquet('{}/alerts/*/*.parquet', hive_partitioning=true)\")\nts = []\nfor _ in range(5):\n    t = time.perf_counter(); c.execute(q).fetchall(); ts.append((time.perf_counter() - t) * 1e3)\nprint(sorted(ts)[2])",
                q,
                dir.display()
            ))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
        match duck {
            Some(d) => println!(
                "{name:<9} DataFusion {df:.1} ms, DuckDB {d:.1} ms: ratio {:.2}",
                df / d
            ),
            None => println!(
                "{name:<9} DataFusion {df:.1} ms (DuckDB not available: pip install duckdb)"
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
