//! Per-agent profiles: what each agent normally does, learnt online, and the features an
//! event gets from its agent's profile before rules see it (`baseline.rate`,
//! `baseline.volume`, `baseline.first_tool`, `baseline.first_server`,
//! `baseline.first_recipient`).
//!
//! Features are computed against the profile *before* the event is learnt. Novelty is only
//! reported once the agent has a history ([`NOVELTY_WARMUP`] events): an agent's first day is
//! all new. Sets of seen tools, servers and recipients hold 64-bit hashes, bounded per agent;
//! past the bound nothing new is learnt (and novelty is no longer claimed for that set), and the
//! number of agents is bounded with the least recently active evicted, both counted.

use std::hash::Hasher;

use cordon_ingest::{BaselineFeatures, CoreField, Event};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use serde_json::Value;

use crate::baseline::{RateModel, VolumeModel};

/// Events of an agent before novelty is reported.
pub const NOVELTY_WARMUP: u64 = 50;
/// Seen tools or servers kept per agent.
pub const MAX_SEEN: usize = 512;
/// Seen recipients kept per agent.
pub const MAX_RECIPIENTS: usize = 4096;
/// Agents kept.
pub const MAX_AGENTS: usize = 200_000;

/// Argument names whose values are recipients or destinations.
const RECIPIENT_ARGS: &[&str] = &[
    "to",
    "cc",
    "bcc",
    "recipient",
    "recipients",
    "email",
    "channel",
    "user",
    "url",
    "webhook",
    "webhook_url",
    "iban",
    "account",
    "destination",
    "share_with",
    "invitee",
];

/// One agent's profile.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Events learnt.
    pub events: u64,
    /// Calls per minute.
    pub rate: RateModel,
    /// Result sizes.
    pub volume: VolumeModel,
    tools: FxHashSet<u64>,
    servers: FxHashSet<u64>,
    recipients: FxHashSet<u64>,
    last: i64,
}

impl Profile {
    fn new() -> Profile {
        Profile {
            events: 0,
            rate: RateModel::new(60_000_000_000, 600.0),
            volume: VolumeModel::new(500.0),
            tools: FxHashSet::default(),
            servers: FxHashSet::default(),
            recipients: FxHashSet::default(),
            last: i64::MIN,
        }
    }

    /// Distinct tools, servers and recipients seen.
    pub fn seen(&self) -> (usize, usize, usize) {
        (self.tools.len(), self.servers.len(), self.recipients.len())
    }
}

/// A case-insensitive 64-bit hash of some strings, without allocating.
fn hash_parts(parts: &[&str]) -> u64 {
    let mut h = FxHasher::default();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.write_u8(0x1f);
        }
        for b in p.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
    }
    h.finish()
}

fn hash(s: &str) -> u64 {
    hash_parts(&[s])
}

fn recipients(args: &Value, out: &mut Vec<u64>) {
    let Some(m) = args.as_object() else { return };
    for (k, v) in m {
        if !RECIPIENT_ARGS.contains(&k.to_ascii_lowercase().as_str()) {
            continue;
        }
        match v {
            Value::String(s) => out.push(hash(destination(k, s))),
            Value::Array(a) => out.extend(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| hash(destination(k, s))),
            ),
            _ => {}
        }
    }
}

/// URLs count by host: a new path on a known host is not a new destination.
fn destination<'a>(key: &str, value: &'a str) -> &'a str {
    if key.eq_ignore_ascii_case("url") || key.to_ascii_lowercase().ends_with("_url") {
        let rest = value.split_once("://").map_or(value, |(_, r)| r);
        return rest.split(['/', '?', '#']).next().unwrap_or(rest);
    }
    value
}

/// Format name and version of profile snapshots.
pub const SNAPSHOT_FORMAT: &str = "cordon-profiles";
/// Current snapshot version; another version is refused with a clear error.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot<'a> {
    format: std::borrow::Cow<'a, str>,
    version: u32,
    agents: std::borrow::Cow<'a, FxHashMap<String, Profile>>,
}

/// The profiles of every agent.
#[derive(Default, Debug)]
pub struct Profiles {
    agents: FxHashMap<String, Profile>,
    evicted: u64,
    scratch: Vec<u64>,
}

/// Novelty of a value against a bounded set: `None` while warming up or once the set is full.
fn novel(set: &mut FxHashSet<u64>, h: u64, cap: usize, warm: bool) -> Option<bool> {
    let new = !set.contains(&h);
    let full = set.len() >= cap;
    if new && !full {
        set.insert(h);
    }
    (warm && !full).then_some(new)
}

impl Profiles {
    /// Sets the event's baseline features from its agent's profile, then learns the event.
    pub fn annotate(&mut self, ev: &mut Event) {
        let Some(agent) = ev.agent_id() else { return };
        let Some(t) = ev.timestamp_nanos() else {
            return;
        };
        if !self.agents.contains_key(agent) {
            if self.agents.len() >= MAX_AGENTS {
                self.evict();
            }
            self.agents.insert(agent.to_owned(), Profile::new());
        }
        let Some(p) = self.agents.get_mut(agent) else {
            return;
        };
        let warm = p.events >= NOVELTY_WARMUP;
        let mut f = BaselineFeatures::default();
        p.last = p.last.max(t);
        if ev.str(CoreField::Method) == Some("tools/call") {
            let (count, score) = p.rate.observe(t);
            f.rate = score;
            f.rate_observed = Some(count);
            f.rate_expected = score.map(|_| p.rate.rate());
            if let Some(b) = ev.result_bytes() {
                f.volume = p.volume.score(b as f64);
                f.volume_expected = f.volume.map(|_| p.volume.typical());
                p.volume.update(b as f64);
            }
            if let Some(tool) = ev.tool_name() {
                let server = ev.str(CoreField::Target).unwrap_or("");
                f.first_tool = novel(&mut p.tools, hash_parts(&[server, tool]), MAX_SEEN, warm);
            }
            if let Some(server) = ev.str(CoreField::Target) {
                f.first_server = novel(&mut p.servers, hash(server), MAX_SEEN, warm);
            }
            if let Some(args) = ev.arguments() {
                self.scratch.clear();
                recipients(args, &mut self.scratch);
                if !self.scratch.is_empty() {
                    let mut any = None;
                    for &h in &self.scratch {
                        if let Some(n) = novel(&mut p.recipients, h, MAX_RECIPIENTS, warm) {
                            any = Some(any.unwrap_or(false) | n);
                        }
                    }
                    f.first_recipient = any;
                }
            }
        }
        p.events += 1;
        ev.set_baseline(f);
    }

    fn evict(&mut self) {
        let mut lasts: Vec<i64> = self.agents.values().map(|p| p.last).collect();
        let cut = self.agents.len() / 10;
        let (_, cutoff, _) = lasts.select_nth_unstable(cut);
        let cutoff = *cutoff;
        let before = self.agents.len();
        self.agents.retain(|_, p| p.last > cutoff);
        self.evicted += (before - self.agents.len()) as u64;
    }

    /// Writes every profile to `path` atomically (a temporary file, then a rename): a crash
    /// leaves the previous snapshot whole.
    pub fn snapshot(&self, path: &std::path::Path) -> Result<(), String> {
        let snap = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            agents: std::borrow::Cow::Borrowed(&self.agents),
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(&snap).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a snapshot. A file of another format or version, or a damaged one, is an error
    /// that says which; the caller starts fresh.
    pub fn restore(path: &std::path::Path) -> Result<Profiles, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let head: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a profile snapshot ({e})", path.display()))?;
        if head.get("format").and_then(|f| f.as_str()) != Some(SNAPSHOT_FORMAT) {
            return Err(format!(
                "{}: not a profile snapshot (no \"format\": \"{SNAPSHOT_FORMAT}\")",
                path.display()
            ));
        }
        let version = head.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(SNAPSHOT_VERSION)) {
            return Err(format!(
                "{}: snapshot version {}, this Cordon reads version {SNAPSHOT_VERSION}",
                path.display(),
                version.map_or("unknown".to_owned(), |v| v.to_string())
            ));
        }
        let snap: Snapshot<'static> = serde_json::from_value(head)
            .map_err(|e| format!("{}: damaged profile snapshot ({e})", path.display()))?;
        Ok(Profiles {
            agents: snap.agents.into_owned(),
            evicted: 0,
            scratch: Vec::new(),
        })
    }

    /// Every profiled agent's id.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// An agent's profile.
    pub fn get(&self, agent: &str) -> Option<&Profile> {
        self.agents.get(agent)
    }

    /// Agents profiled, and agents evicted to stay under the cap.
    pub fn counts(&self) -> (usize, u64) {
        (self.agents.len(), self.evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(i: i64, tool: &str, to: &str) -> Event {
        let text = format!(
            r#"{{"event.id":"e{i}","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a","mcp.method.name":"tools/call","audit.target":"gmail","gen_ai.tool.name":"{tool}","gen_ai.tool.call.arguments":{{"to":["{to}"],"url":"https://docs.example/p{i}"}},"audit.result_bytes":100}}"#
        );
        let mut ev = cordon_ingest::decode_native(text.as_bytes()).unwrap();
        ev.set_timestamp_nanos(1_800_000_000_000_000_000 + i * 30_000_000_000);
        ev
    }

    #[test]
    fn novelty_after_warm_up_only() {
        let mut p = Profiles::default();
        let mut ev = call(0, "send_email", "x@corp.example");
        p.annotate(&mut ev);
        assert_eq!(ev.baseline().unwrap().first_tool, None, "warming up");
        for i in 1..100 {
            let mut ev = call(i, "send_email", &format!("u{}@corp.example", i % 5));
            p.annotate(&mut ev);
        }
        let mut known = call(100, "send_email", "u1@corp.example");
        p.annotate(&mut known);
        let f = known.baseline().unwrap();
        assert_eq!(
            (f.first_tool, f.first_server, f.first_recipient),
            (Some(false), Some(false), Some(false)),
            "a new URL path on a known host is not new"
        );
        let mut new = call(101, "send_email", "drop@evil.example");
        p.annotate(&mut new);
        assert_eq!(new.baseline().unwrap().first_recipient, Some(true));
        let mut tool = call(102, "share_file", "u1@corp.example");
        p.annotate(&mut tool);
        assert_eq!(tool.baseline().unwrap().first_tool, Some(true));
    }

    #[test]
    fn snapshot_restore_continue_equals_an_uninterrupted_run() {
        let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
            agents: 6,
            duration_nanos: 6 * 3_600_000_000_000,
            ..Default::default()
        });
        let mut straight = Profiles::default();
        let mut a: Vec<Event> = g.events.clone();
        for ev in a.iter_mut() {
            straight.annotate(ev);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.json");
        let mut first = Profiles::default();
        let mut b: Vec<Event> = g.events.clone();
        let half = b.len() / 2;
        for ev in b[..half].iter_mut() {
            first.annotate(ev);
        }
        first.snapshot(&path).unwrap();
        let mut second = Profiles::restore(&path).unwrap();
        for ev in b[half..].iter_mut() {
            second.annotate(ev);
        }
        assert_eq!(a, b, "same features on every event");
        for agent in straight.agents() {
            assert_eq!(straight.get(agent), second.get(agent));
        }
    }

    #[test]
    fn damaged_or_foreign_snapshots_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            b"{\"format\":\"cordon-profiles\",\"version\":1,\"agents\":{",
        )
        .unwrap();
        assert!(Profiles::restore(&path)
            .unwrap_err()
            .contains("not a profile snapshot"));
        std::fs::write(
            &path,
            b"{\"format\":\"cordon-profiles\",\"version\":9,\"agents\":{}}",
        )
        .unwrap();
        assert!(Profiles::restore(&path).unwrap_err().contains("version 9"));
        std::fs::write(
            &path,
            b"{\"format\":\"cordon-profiles\",\"version\":1,\"agents\":{\"a\":1}}",
        )
        .unwrap();
        assert!(Profiles::restore(&path).unwrap_err().contains("damaged"));
        std::fs::write(&path, b"[]").unwrap();
        assert!(Profiles::restore(&path).is_err());
    }
}
