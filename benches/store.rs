//! The alert store: alerts written per second into Parquet (the store's own write path), and
//! SQL latency over a large store — filters and group-bys — with DataFusion, against DuckDB on
//! the same files in the same run when `python3 -c "import duckdb, pytz"` works
//! (`pip install duckdb pytz`); then a runaway query (a join that outgrows its memory pool)
//! beside an ingest, to see that the query fails clearly and the ingest keeps its rate.
//!
//! The large store is synthetic but shaped like the real one: rows are copies of real alerts
//! (generated traffic through the built-in rules) with new ids, agents and times spread over
//! 30 days, one compacted file per day, as `cordon store compact` leaves them. The big JSON
//! columns (evidence, OCSF) repeat a few hundred distinct values, which Parquet stores as a
//! dictionary, so the files stay small; the queries below do not read those columns.
//!
//! `CORDON_STORE_ALERTS` sets the ingest count (default 300 000), `CORDON_STORE_ROWS` the
//! large store's rows (default 10 000 000).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use cordon_query::sql::{Limits, Sql};
use cordon_query::store::{AlertStore, Location};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seed_alerts() -> Vec<cordon_detect::Alert> {
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
    seed
}

/// Appends `n` copies of the seed alerts through the store's writer; alerts per second.
fn ingest(dir: &std::path::Path, seed: &[cordon_detect::Alert], n: usize, tag: &str) -> f64 {
    let store = AlertStore::open_at(Location::Local(dir.to_path_buf()), None).expect("store");
    let t = Instant::now();
    for i in 0..n {
        let mut a = seed[i % seed.len()].clone();
        a.id = format!("{tag}-{i:09}");
        let shift = (i as i64 % 30) * 86_400_000;
        a.last_seen_ms += shift;
        a.first_seen_ms += shift;
        store.append(a).expect("append");
    }
    store.flush().expect("flush");
    n as f64 / t.elapsed().as_secs_f64()
}

/// Writes `rows` synthetic alerts as one file per day (30 days).
fn write_large(dir: &std::path::Path, seed: &[cordon_detect::Alert], rows: usize) {
    let refs: Vec<&cordon_detect::Alert> = seed.iter().take(256).collect();
    let template = cordon_query::store::to_batch(&refs).expect("batch");
    let k = template.num_rows() as u32;
    let day0 = seed[0].last_seen_ms - seed[0].last_seen_ms % 86_400_000;
    let per_day = rows / 30;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_page_size_limit(64 << 20)
        .build();
    let schema = template.schema();
    let col = |name: &str| schema.index_of(name).expect("column");
    for d in 0..30usize {
        let day = cordon_query::store::day(day0 + d as i64 * 86_400_000);
        let part = dir.join("alerts").join(format!("date={day}"));
        std::fs::create_dir_all(&part).expect("dir");
        let file = std::fs::File::create(part.join("part-large.parquet")).expect("file");
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))
            .expect("writer");
        let chunk = 100_000;
        let mut done = 0;
        while done < per_day {
            let m = chunk.min(per_day - done);
            let base = d * per_day + done;
            let idx = UInt32Array::from_iter_values((0..m).map(|i| ((base + i) as u32 * 7919) % k));
            let mut cols: Vec<ArrayRef> = template
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &idx, None).expect("take"))
                .collect();
            cols[col("alert_id")] = Arc::new(StringArray::from_iter_values(
                (0..m).map(|i| format!("syn-{:010}", base + i)),
            ));
            let times: Vec<i64> = (0..m)
                .map(|i| day0 + d as i64 * 86_400_000 + ((i as i64 * 86_400_000) / m as i64))
                .collect();
            cols[col("time")] =
                Arc::new(TimestampMillisecondArray::from(times.clone()).with_timezone("UTC"));
            cols[col("first_seen")] =
                Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC"));
            cols[col("agent_id")] = Arc::new(StringArray::from_iter_values(
                (0..m).map(|i| format!("agent-{:05}", (base + i) % 20_000)),
            ));
            let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
            w.write(&batch).expect("write");
            done += m;
        }
        w.close().expect("close");
    }
}

fn duckdb(dir: &std::path::Path, q: &str) -> Option<f64> {
    let script = format!(
        "import duckdb, time, pytz\nc = duckdb.connect()\nc.execute(\"SET threads TO 2\")\n\
         c.execute(\"CREATE VIEW alerts AS SELECT * FROM read_parquet('{}/alerts/*/*.parquet', hive_partitioning=true)\")\n\
         q = \"\"\"{q}\"\"\"\nts = []\nfor _ in range(5):\n    t = time.perf_counter(); c.execute(q).fetchall(); ts.append((time.perf_counter() - t) * 1e3)\nprint(sorted(ts)[2])",
        dir.display()
    );
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "DuckDB: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn main() {
    let n = env("CORDON_STORE_ALERTS", 300_000);
    let rows = env("CORDON_STORE_ROWS", 10_000_000);
    let seed = seed_alerts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = std::env::temp_dir().join(format!("cordon-bench-store-{}", std::process::id()));

    // 1. Ingest through the store's writer.
    let small = root.join("ingest");
    let rate = ingest(&small, &seed, n, "bench");
    let files = cordon_query::store::parquet_files(&small.join("alerts").join(format!(
        "date={}",
        cordon_query::store::day(seed[0].last_seen_ms)
    )))
    .map(|f| f.len())
    .unwrap_or(0);
    println!("ingest        {n} alerts: {rate:.0} alerts/s ({files} files in the first day)");

    // 2. SQL over the large store, DataFusion against DuckDB.
    let large = root.join("large");
    let t = Instant::now();
    write_large(&large, &seed, rows);
    println!(
        "large store   {rows} alerts written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rule = seed[0].rule_id.clone();
    let day = cordon_query::store::day(seed[0].last_seen_ms + 5 * 86_400_000);
    let queries = [
        ("filter-day", format!("SELECT count(*) AS n FROM alerts WHERE date = '{day}' AND rule_id = '{rule}'")),
        ("filter-agent", "SELECT alert_id, time, rule_id FROM alerts WHERE agent_id = 'agent-00042' ORDER BY time DESC LIMIT 100".to_owned()),
        ("group-by", "SELECT rule_id, severity, count(*) AS n, max(time) AS last FROM alerts GROUP BY rule_id, severity".to_owned()),
        ("per-day", "SELECT date, count(*) AS n FROM alerts GROUP BY date ORDER BY date".to_owned()),
    ];
    let limits = Limits {
        rows: 1_000_000,
        memory: 1 << 30,
        ..Limits::default()
    };
    let mut ratios = Vec::new();
    let session = rt.block_on(Sql::open(&large, limits)).expect("open");
    let open_ms = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(Sql::open(&large, limits)).expect("open");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!(
        "session open  {open_ms:.1} ms (every API request opens one: new files are seen at once)"
    );
    for (name, q) in &queries {
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(session.query(q)).expect("query");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let df = median(times);
        match duckdb(&large, q) {
            Some(d) => {
                ratios.push(df / d);
                println!("{name:<13} DataFusion {df:8.1} ms   DuckDB {d:8.1} ms   ratio {:.2}", df / d)
            }
            None => println!("{name:<13} DataFusion {df:8.1} ms   (DuckDB not available: pip install duckdb pytz)"),
        }
    }
    if !ratios.is_empty() {
        println!("median ratio  {:.2} (goal ≤ 2)", median(ratios));
    }

    // 3. A runaway query beside an ingest: the ingest's rate with and without it. The query
    // runs as `cordon run --listen` runs analyst SQL on this machine: a runtime of its own
    // with all cores but one (at least one), and as many partitions.
    let query_threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .saturating_sub(1)
        .max(1);
    let alone = ingest(&root.join("alone"), &seed, n / 3, "alone");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = {
        let (stop, large) = (stop.clone(), large.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(query_threads)
                .enable_all()
                .build()
                .expect("runtime");
            let mut messages = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let r = rt.block_on(async {
                    let s = Sql::open(
                        &large,
                        Limits {
                            memory: 256 << 20,
                            threads: query_threads,
                            ..Limits::default()
                        },
                    )
                    .await
                    .expect("open");
                    s.query("SELECT a.alert_id, b.alert_id FROM alerts a JOIN alerts b ON a.agent_id = b.agent_id ORDER BY a.message")
                        .await
                });
                messages.push(
                    r.err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "it succeeded".into()),
                );
            }
            messages
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let beside = ingest(&root.join("beside"), &seed, n / 3, "beside");
    stop.store(true, Ordering::Release);
    let messages = failures.join().expect("query thread");
    println!(
        "runaway query {} run(s) beside the ingest; first outcome: {}",
        messages.len(),
        messages.first().map(String::as_str).unwrap_or("-")
    );
    println!(
        "ingest rate   alone {alone:.0} alerts/s, beside the runaway query {beside:.0} alerts/s: ratio {:.2}",
        beside / alone
    );
    let _ = std::fs::remove_dir_all(&root);
}
