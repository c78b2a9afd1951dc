//! Memory of per-agent baselines at scale: 100 000 agents (or `CORDON_AGENTS`), each with a
//! realistic working set — 80 calls over 4 sessions, 6 tools on 3 servers, 5 recipients —
//! then the same agents after going idle into the cold tier. Reports the hot bytes per agent
//! the profiles account for, the resident memory the process actually grew by, the cold
//! tier's bytes per agent, and the snapshot's size. Run with
//! `cargo bench --bench profile_memory`.

use std::time::Instant;

use cordon_detect::profile::Profiles;

fn rss_bytes() -> usize {
    // /proc/self/statm: sizes in pages; the second is resident.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let agents: usize = std::env::var("CORDON_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tools = [
        ("gmail", "send_email"),
        ("gmail", "search"),
        ("github", "get_issue"),
        ("github", "create_pr"),
        ("filesystem", "read_file"),
        ("filesystem", "list_dir"),
    ];
    let mut profiles = Profiles::default();
    let before = rss_bytes();
    let start = Instant::now();
    let mut events = 0u64;
    let t0 = 1_800_000_000_000_000_000i64;
    for a in 0..agents {
        let mut t = t0 + (a as i64 % 3_600) * 1_000_000_000;
        for i in 0..80usize {
            let (server, tool) = tools[(i * 7 + a) % tools.len()];
            let text = format!(
                r#"{{"event.id":"e","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"agent-{a:06}","gen_ai.agent.name":"kind-{k}","mcp.session.id":"s{a}-{s}","mcp.method.name":"tools/call","audit.target":"{server}","gen_ai.tool.name":"{tool}","gen_ai.tool.call.arguments":{{"to":["user{r}@corp.example"]}},"audit.result_bytes":{b},"audit.decision":"allow"}}"#,
                k = a % 50,
                s = i / 20,
                r = i % 5,
                b = 500 + (i * 37) % 4000,
            );
            let mut ev = cordon_ingest::decode_native(text.as_bytes()).expect("valid event");
            ev.set_timestamp_nanos(t);
            profiles.annotate(&mut ev);
            events += 1;
            t += 20_000_000_000;
        }
    }
    let elapsed = start.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    let st = profiles.stats();
    let hot = profiles.hot_bytes();
    println!("agents                      {agents}");
    println!(
        "events                      {events} in {:.2} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "profile struct              {} bytes",
        std::mem::size_of::<cordon_detect::profile::Profile>()
    );
    println!(
        "hot, accounted              {:.0} bytes/agent (struct + vocabularies + id)",
        hot as f64 / st.hot.max(1) as f64
    );
    println!(
        "hot, resident growth        {:.0} bytes/agent (incl. the map and allocator slack)",
        grown as f64 / agents as f64
    );
    // Two days later one agent calls: everyone else goes cold.
    let text = r#"{"event.id":"x","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"late","mcp.method.name":"tools/call"}"#;
    let mut ev = cordon_ingest::decode_native(text.as_bytes()).expect("valid event");
    ev.set_timestamp_nanos(t0 + 2 * 86_400_000_000_000);
    let start = Instant::now();
    profiles.annotate(&mut ev);
    let sweep = start.elapsed();
    let st = profiles.stats();
    println!(
        "cold tier                   {:.0} bytes/agent ({} agents moved in {:.2} s)",
        st.cold_bytes as f64 / st.cold.max(1) as f64,
        st.idled,
        sweep.as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("cordon-profile-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("profiles.json");
    let start = Instant::now();
    profiles.snapshot(&path).expect("snapshot");
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "snapshot                    {:.0} bytes/agent, written in {:.2} s",
        size as f64 / agents as f64,
        start.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
