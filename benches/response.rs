//! Alert-to-action latency on loopback: alerts submitted one after another to a responder
//! whose playbook quarantines the agent at a signed-webhook receiver (axum, same process);
//! the time from planning (durable in the outbox) to the receiver's 200, per action. Reports
//! the median and 99th percentile, and as a baseline in the same run the round trip of the
//! same POST sent directly with the same HTTP client (no outbox, no signature). Run with
//! `cargo bench --bench response` (`CORDON_ALERTS` sets the count, default 500).

use std::path::Path;
use std::time::{Duration, Instant};

use cordon_detect::Alert;
use cordon_respond::playbook::{parse, Playbooks};
use cordon_respond::{Outbox, Responder};

fn percentile(v: &mut [u128], p: f64) -> u128 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("CORDON_ALERTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

        // Baseline: the same POST, directly.
        let client = reqwest::Client::new();
        let mut direct = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            client
                .post(&url)
                .body(r#"{"type":"cordon.quarantine_agent"}"#)
                .send()
                .await
                .expect("post");
            direct.push(t.elapsed().as_micros());
        }

        let dir = std::env::temp_dir().join(format!("cordon-bench-response-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::env::set_var("CORDON_BENCH_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let cfg: cordon_respond::ResponseConfig = toml::from_str(&format!(
            "outbox = \"{}\"\n[targets.gateway]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"CORDON_BENCH_WHSEC\"\nrate_per_s = 100000\n",
            dir.join("outbox.redb").display()
        ))
        .expect("config");
        let playbooks = Playbooks {
            all: parse(
                Path::new("bench.yaml"),
                "id: q\non: {rules: ['*']}\nsteps:\n  - action: quarantine_agent\n    target: gateway\n",
            )
            .expect("playbook"),
        };
        let responder = Responder::new(
            Outbox::open(&cfg.outbox).expect("outbox"),
            playbooks,
            cfg.targets().expect("targets"),
            false,
            None,
        )
        .expect("responder");
        let set = cordon_rules::RuleSet::builtin().expect("rules");
        let rule = &set.rules[0];
        let mut e2e = Vec::with_capacity(n);
        for i in 0..n {
            let text = format!(
                r#"{{"event.id":"bench-{i}","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"agent-{i}","mcp.method.name":"tools/call"}}"#
            );
            let ev = cordon_ingest::decode_native(text.as_bytes()).expect("event");
            let alert = Alert::from_rule(rule, vec![ev]);
            let t = Instant::now();
            responder.submit(&alert).expect("submit");
            responder.drain(Duration::from_secs(30)).await.expect("drain");
            e2e.push(t.elapsed().as_micros());
        }
        let _ = std::fs::remove_dir_all(&dir);
        let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
        let (e50, e99) = (percentile(&mut e2e, 0.5), percentile(&mut e2e, 0.99));
        println!("alerts                         {n}");
        println!("direct POST (baseline)         p50 {d50} µs, p99 {d99} µs");
        println!("alert → action (outbox, signed, confirmed, logged)  p50 {e50} µs, p99 {e99} µs");
        println!(
            "ratio to the direct POST       p50 {:.1}×, p99 {:.1}×",
            e50 as f64 / d50.max(1) as f64,
            e99 as f64 / d99.max(1) as f64
        );
    });
}
