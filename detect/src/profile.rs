//! Per-agent profiles: what each agent normally does, learnt online, and the features an
//! event gets from its agent's profile before rules see it (every `baseline.*` field of
//! [`BaselineField`]: rate with seasonality, result and argument sizes, deny and error ratios,
//! session length and breadth, novelty and rarity of tools, servers, methods and recipients).
//!
//! Features are computed against the profile *before* the event is learnt, so an event is
//! judged by what came before it. Each model abstains during its own warm-up; novelty is only
//! reported once the agent has a history ([`NOVELTY_WARMUP`] events): an agent's first day is
//! all new.
//!
//! **Cold start from peers.** A new agent whose peer group (by default `gen_ai.agent.name`;
//! any field can be configured, e.g. a role) already has a warm member starts from a copy of
//! that member's profile — rate, sizes, ratios, sessions, tools, servers and methods, not
//! recipients, which are personal — so a new instance of a known agent is judged from its
//! first call by what its kind normally does.
//!
//! **Bounded state.** Vocabularies are bounded per agent ([`Vocabulary`]); agents idle for
//! [`Profiles::with_idle_after`] (event time) leave the hot map for a compact encoded cold
//! tier and come back on their next event; the hot map is capped ([`MAX_AGENTS`]) by moving
//! the least recently active tenth to the cold tier, and the cold tier is capped
//! ([`MAX_COLD`]) by dropping its oldest. Every move and drop is counted. The whole state
//! (hot and cold) is snapshotted to a versioned JSON file, written atomically.

use cordon_ingest::{BaselineFeatures, BaselineField, CoreField, Event, FieldRef, FieldValue};
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::baseline::{RateModel, RatioModel, Vocabulary, VolumeModel};

/// Events of an agent before novelty is reported.
pub const NOVELTY_WARMUP: u64 = 50;
/// Tools, servers or methods kept per agent.
pub const MAX_SEEN: usize = 512;
/// Recipients kept per agent.
pub const MAX_RECIPIENTS: usize = 4096;
/// Agents kept hot.
pub const MAX_AGENTS: usize = 200_000;
/// Agents kept in the cold tier.
pub const MAX_COLD: usize = 2_000_000;
/// Sessions of one agent followed at once.
const OPEN_SESSIONS: usize = 4;
/// Own events before an agent may stand for its peer group.
const PEER_READY: u64 = 200;
const MINUTE_NS: i64 = 60_000_000_000;

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

/// A session being followed: its calls and the distinct servers it touched.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct OpenSession {
    id: u64,
    last: i64,
    calls: u32,
    /// Distinct servers by linear counting: one bit of 128 per server hash; the estimate
    /// `-m ln(zeros / m)` corrects for collisions (exact in expectation, a few percent off
    /// for the handful of servers a session touches), in 16 bytes whatever the count.
    servers: [u64; 2],
}

impl OpenSession {
    fn add_server(&mut self, h: u64) {
        let bit = (h >> 57) as usize; // top 7 bits: 0..128
        self.servers[bit / 64] |= 1 << (bit % 64);
    }

    fn breadth(&self) -> f64 {
        let ones = self.servers[0].count_ones() + self.servers[1].count_ones();
        let zeros = f64::from(128 - ones).max(0.5);
        -128.0 * (zeros / 128.0).ln()
    }
}

/// The MCP methods an agent used. MCP has a score of methods and an agent uses a handful, so
/// a fixed inline set of 32-bit hashes, no table to chase: past [`MethodSet::CAP`] methods the
/// set is full and novelty is no longer claimed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MethodSet {
    hashes: [u32; 12],
    len: u8,
}

impl MethodSet {
    /// Methods kept.
    pub const CAP: usize = 12;

    /// Distinct methods seen.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether no method was seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `h` is new (then kept), or `None` once the set is full.
    fn observe(&mut self, h: u64) -> Option<bool> {
        let h = (h >> 32) as u32;
        let n = self.len();
        if self.hashes[..n].contains(&h) {
            return Some(false);
        }
        if n >= Self::CAP {
            return None;
        }
        self.hashes[n] = h;
        self.len += 1;
        Some(true)
    }
}

/// One agent's profile.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// The agent's own events learnt.
    pub events: u64,
    /// Calls per minute, with hour-of-day and day-of-week seasonality.
    pub rate: RateModel,
    /// Result sizes.
    pub volume: VolumeModel,
    /// Argument sizes.
    pub args_volume: VolumeModel,
    /// Denied calls.
    pub deny: RatioModel,
    /// Failed calls.
    pub errors: RatioModel,
    /// Calls per session.
    pub session_calls: VolumeModel,
    /// Distinct servers per session.
    pub session_breadth: VolumeModel,
    /// Tools used (server and tool).
    pub tools: Vocabulary,
    /// Servers used.
    pub servers: Vocabulary,
    /// MCP methods used.
    pub methods: MethodSet,
    /// Recipients and destinations used.
    pub recipients: Vocabulary,
    sessions: Vec<OpenSession>,
    last: i64,
    /// The peer whose profile this agent started from.
    pub peer: Option<Box<str>>,
}

impl Profile {
    fn new() -> Profile {
        Profile {
            events: 0,
            rate: RateModel::new(MINUTE_NS, 600.0),
            volume: VolumeModel::new(500.0),
            args_volume: VolumeModel::new(500.0),
            deny: RatioModel::new(10 * MINUTE_NS, 2000.0),
            errors: RatioModel::new(10 * MINUTE_NS, 2000.0),
            session_calls: VolumeModel::new(100.0).with_min_spread(0.3),
            session_breadth: VolumeModel::new(100.0).with_min_spread(0.3),
            tools: Vocabulary::new(5000.0),
            servers: Vocabulary::new(5000.0),
            methods: MethodSet::default(),
            recipients: Vocabulary::new(2000.0),
            sessions: Vec::new(),
            last: i64::MIN,
            peer: None,
        }
    }

    /// A new agent's start from a warm peer: its models, without what is personal or
    /// in flight (recipients, open sessions, the current minute and window).
    fn inherit(peer_id: &str, peer: &Profile) -> Profile {
        let mut p = peer.clone();
        p.events = 0;
        p.recipients = Vocabulary::new(2000.0);
        p.sessions.clear();
        p.rate.restart();
        p.deny.restart();
        p.errors.restart();
        p.last = i64::MIN;
        p.peer = Some(peer_id.into());
        p
    }

    /// Distinct tools, servers and recipients seen.
    pub fn seen(&self) -> (usize, usize, usize) {
        (self.tools.len(), self.servers.len(), self.recipients.len())
    }

    /// Time of the agent's last event (ns).
    pub fn last_seen(&self) -> i64 {
        self.last
    }

    /// Bytes this profile holds in memory: the struct and its vocabularies' tables.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Profile>()
            + self.tools.heap_bytes()
            + self.servers.heap_bytes()
            + self.recipients.heap_bytes()
            + self.sessions.capacity() * std::mem::size_of::<OpenSession>()
            + self.peer.as_ref().map_or(0, |p| p.len())
    }

    /// Whether tools, servers and methods are warm enough to claim novelty.
    fn warm(&self) -> bool {
        self.events >= NOVELTY_WARMUP || self.peer.is_some()
    }

    /// Follows the session: learns the oldest open session when a new one displaces it.
    fn session(&mut self, id: u64, t: i64) -> &mut OpenSession {
        if let Some(i) = self.sessions.iter().position(|s| s.id == id) {
            let s = &mut self.sessions[i];
            s.last = s.last.max(t);
            return &mut self.sessions[i];
        }
        if self.sessions.len() >= OPEN_SESSIONS {
            let oldest = (0..self.sessions.len())
                .min_by_key(|&i| self.sessions[i].last)
                .unwrap_or(0);
            let s = self.sessions.swap_remove(oldest);
            self.session_calls.update(f64::from(s.calls));
            self.session_breadth.update(s.breadth());
        }
        self.sessions.push(OpenSession {
            id,
            last: t,
            calls: 0,
            servers: [0; 2],
        });
        let last = self.sessions.len() - 1;
        &mut self.sessions[last]
    }
}

/// A case-insensitive 64-bit hash of some strings, without allocating: the value of
/// rustc-hash 2's `FxHasher` fed each string's bytes, ASCII-lowercased, with a 0x1f byte
/// between strings (written out here, so a new rustc-hash cannot change it).
///
/// These hashes are what the profiles keep of tools, servers, methods, sessions and
/// recipients, in checkpoints and snapshots too, so the value must not change. Fed byte by
/// byte, the hasher is a chain of dependent multiplications (`h = (h + b) * K`), four or so
/// cycles a byte, and an event hashes about a hundred bytes. Unrolled, the same polynomial
/// takes eight bytes per step: `h * K^8 + b1 * K^8 + b2 * K^7 + … + b8 * K`, whose eight
/// products do not wait on one another (wrapping arithmetic is a ring, so the value is the
/// same bit for bit; `hash_matches_fxhasher` checks it).
fn hash_parts(parts: &[&str]) -> u64 {
    let mut h = 0u64;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = h.wrapping_add(0x1f).wrapping_mul(FX_K);
        }
        h = fx_lower(h, p.as_bytes());
    }
    // FxHasher::finish.
    h.rotate_left(26)
}

/// rustc-hash's FxHasher multiplier (64-bit).
const FX_K: u64 = 0xf1357aea2e62a9c5;

/// `FX_POW[i]` = `FX_K` to the power `i`.
const FX_POW: [u64; 9] = {
    let mut p = [1u64; 9];
    let mut i = 1;
    while i < 9 {
        p[i] = p[i - 1].wrapping_mul(FX_K);
        i += 1;
    }
    p
};

/// The FxHasher state `h` after `bytes`, each ASCII-lowercased, one `write_u8` each.
fn fx_lower(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        w = lower_ascii8(w);
        let b = |i: u32| (w >> (8 * i)) & 0xff;
        h = h
            .wrapping_add(b(0))
            .wrapping_mul(FX_POW[8])
            .wrapping_add(b(1).wrapping_mul(FX_POW[7]))
            .wrapping_add(b(2).wrapping_mul(FX_POW[6]))
            .wrapping_add(b(3).wrapping_mul(FX_POW[5]))
            .wrapping_add(b(4).wrapping_mul(FX_POW[4]))
            .wrapping_add(b(5).wrapping_mul(FX_POW[3]))
            .wrapping_add(b(6).wrapping_mul(FX_POW[2]))
            .wrapping_add(b(7).wrapping_mul(FX_POW[1]));
    }
    for &b in chunks.remainder() {
        h = h
            .wrapping_add(u64::from(b.to_ascii_lowercase()))
            .wrapping_mul(FX_K);
    }
    h
}

/// `u8::to_ascii_lowercase` on the eight bytes of a word at once: 0x20 is set in each byte
/// from `A` to `Z`, and no other byte changes (bytes from 0x80 up are not ASCII letters).
fn lower_ascii8(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = w & !HIGH;
    // Per byte, at most 0x7f + 0x3f: no carry crosses into the next byte.
    let at_least_a = low7.wrapping_add((0x80 - u64::from(b'A')) * ONES);
    let past_z = low7.wrapping_add((0x80 - u64::from(b'Z') - 1) * ONES);
    let upper = at_least_a & !past_z & !w & HIGH;
    w | (upper >> 2)
}

fn hash(s: &str) -> u64 {
    hash_parts(&[s])
}

fn recipients(args: &Value, out: &mut Vec<u64>) {
    let Some(m) = args.as_object() else { return };
    for (k, v) in m {
        if !RECIPIENT_ARGS.iter().any(|r| r.eq_ignore_ascii_case(k)) {
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
    // `_url` compared in place: lowercasing the key allocated for every recipient.
    let k = key.as_bytes();
    if key.eq_ignore_ascii_case("url")
        || k.len() >= 4 && k[k.len() - 4..].eq_ignore_ascii_case(b"_url")
    {
        let rest = value.split_once("://").map_or(value, |(_, r)| r);
        return rest.split(['/', '?', '#']).next().unwrap_or(rest);
    }
    value
}

/// Format name and version of profile snapshots.
pub const SNAPSHOT_FORMAT: &str = "cordon-profiles";
/// Current snapshot version; another version is refused with a clear error.
pub const SNAPSHOT_VERSION: u32 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot<'a> {
    format: std::borrow::Cow<'a, str>,
    version: u32,
    peer_field: std::borrow::Cow<'a, str>,
    idle_after_ns: i64,
    peers: std::borrow::Cow<'a, FxHashMap<String, String>>,
    agents: FxHashMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, Profile>>,
}

/// What the profiles hold and have moved, for `--stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileStats {
    /// Agents in memory.
    pub hot: usize,
    /// Agents in the cold tier.
    pub cold: usize,
    /// Bytes of the cold tier.
    pub cold_bytes: usize,
    /// Agents moved to the cold tier after being idle.
    pub idled: u64,
    /// Agents moved to the cold tier to keep the hot map under its cap.
    pub evicted: u64,
    /// Agents brought back from the cold tier by a new event.
    pub revived: u64,
    /// Agents dropped from the cold tier to keep it under its cap (their history is lost).
    pub dropped: u64,
    /// Agents started from a peer's profile.
    pub from_peer: u64,
    /// Cold entries that failed to decode (started afresh).
    pub damaged: u64,
}

/// The profiles of every agent.
#[derive(Clone, Debug)]
pub struct Profiles {
    agents: FxHashMap<String, Profile>,
    cold: FxHashMap<String, (i64, Vec<u8>)>,
    peers: FxHashMap<String, String>,
    peer_field: FieldRef,
    idle_after: i64,
    max_hot: usize,
    max_cold: usize,
    watermark: i64,
    swept: i64,
    stats: ProfileStats,
    scratch: Vec<u64>,
}

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles {
            agents: FxHashMap::default(),
            cold: FxHashMap::default(),
            peers: FxHashMap::default(),
            peer_field: FieldRef::Core(CoreField::AgentName),
            idle_after: 24 * 60 * MINUTE_NS,
            max_hot: MAX_AGENTS,
            max_cold: MAX_COLD,
            watermark: i64::MIN,
            swept: i64::MIN,
            stats: ProfileStats::default(),
            scratch: Vec::new(),
        }
    }
}

impl Profiles {
    /// Groups agents into peer groups by this field (default `gen_ai.agent.name`).
    pub fn with_peer_field(mut self, field: &str) -> Profiles {
        self.peer_field = FieldRef::resolve(field, true);
        self.peers.clear();
        self
    }

    /// Moves agents idle for this long (event time) to the cold tier (default 24 h).
    pub fn with_idle_after(mut self, idle: std::time::Duration) -> Profiles {
        self.idle_after = i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX).max(1);
        self
    }

    /// Caps the hot map and the cold tier (defaults [`MAX_AGENTS`], [`MAX_COLD`]).
    pub fn with_caps(mut self, hot: usize, cold: usize) -> Profiles {
        self.max_hot = hot.max(1);
        self.max_cold = cold;
        self
    }

    /// The agent's profile, brought in from the cold tier or a peer, or new.
    fn enter(&mut self, agent: &str, group: Option<&str>) -> &mut Profile {
        if !self.agents.contains_key(agent) {
            if self.agents.len() >= self.max_hot {
                self.evict();
            }
            let p = match self.cold.remove(agent) {
                Some((_, bytes)) => {
                    self.stats.revived += 1;
                    postcard::from_bytes::<Profile>(&bytes).unwrap_or_else(|_| {
                        self.stats.damaged += 1;
                        Profile::new()
                    })
                }
                None => {
                    // The group's representative, hot or cold.
                    let peer = group.and_then(|g| self.peers.get(g)).and_then(|id| {
                        match self.agents.get(id) {
                            Some(p) => Some(Profile::inherit(id, p)),
                            None => self.cold.get(id).and_then(|(_, bytes)| {
                                postcard::from_bytes::<Profile>(bytes)
                                    .ok()
                                    .map(|p| Profile::inherit(id, &p))
                            }),
                        }
                    });
                    match peer {
                        Some(p) => {
                            self.stats.from_peer += 1;
                            p
                        }
                        None => Profile::new(),
                    }
                }
            };
            self.agents.insert(agent.to_owned(), p);
        }
        self.agents
            .get_mut(agent)
            .expect("the agent was inserted above")
    }

    /// Sets the event's baseline features from its agent's profile, then learns the event.
    pub fn annotate(&mut self, ev: &mut Event) {
        let Some(agent) = ev.agent_id() else { return };
        let Some(t) = ev.timestamp_nanos() else {
            return;
        };
        if t > self.watermark {
            self.watermark = t;
            if t.saturating_sub(self.swept) >= MINUTE_NS {
                self.swept = t;
                self.sweep();
            }
        }
        let group = match ev.field(&self.peer_field) {
            FieldValue::Str(g) => Some(g),
            _ => None,
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let p = self.enter(agent, group);
        let mut f = Box::<BaselineFeatures>::default();
        let warm = p.warm();
        let own_warm = p.events >= NOVELTY_WARMUP;
        p.last = p.last.max(t);
        let method = ev.str(CoreField::Method).unwrap_or("");
        let new_method = p.methods.observe(hash(method));
        if warm {
            if let Some(new) = new_method {
                f.flag(BaselineField::FirstMethod, new);
            }
        }
        if method == "tools/call" {
            let origin = *p.rate.origin().get_or_insert(t);
            let (count, score) = p.rate.observe(t);
            if let Some(score) = score {
                f.set(BaselineField::Rate, score, count as f64, p.rate.expected());
            }
            let offset = t.saturating_sub(origin);
            let denied = ev.str(CoreField::Decision) == Some("deny");
            let (k, score) = p.deny.observe(offset, denied);
            if let Some(score) = score {
                f.set(
                    BaselineField::DenyRatio,
                    score,
                    f64::from(k),
                    p.deny.ratio(),
                );
            }
            let failed = ev.str(CoreField::ErrorType).is_some();
            let (k, score) = p.errors.observe(offset, failed);
            if let Some(score) = score {
                f.set(
                    BaselineField::ErrorRatio,
                    score,
                    f64::from(k),
                    p.errors.ratio(),
                );
            }
            if let Some(b) = ev.result_bytes() {
                let b = b as f64;
                if let Some((score, typical)) = p.volume.observe(b) {
                    f.set(BaselineField::Volume, score, b, typical);
                }
            }
            if ev.arguments().is_some() {
                let size = f64::from(ev.arguments_bytes());
                if let Some((score, typical)) = p.args_volume.observe(size) {
                    f.set(BaselineField::ArgsVolume, score, size, typical);
                }
            }
            let server = ev.str(CoreField::Target);
            if let Some(tool) = ev.tool_name() {
                let seen = p
                    .tools
                    .observe(hash_parts(&[server.unwrap_or(""), tool]), MAX_SEEN);
                if warm {
                    if let Some(new) = seen.new {
                        f.flag(BaselineField::FirstTool, new);
                    }
                    f.set(
                        BaselineField::ToolFrequency,
                        seen.share,
                        seen.share,
                        seen.share,
                    );
                }
            }
            // The server's hash, once: the session below wants it too.
            let server_hash = server.map_or(0, hash);
            if server.is_some() {
                let seen = p.servers.observe(server_hash, MAX_SEEN);
                if warm {
                    if let Some(new) = seen.new {
                        f.flag(BaselineField::FirstServer, new);
                    }
                    f.set(
                        BaselineField::ServerFrequency,
                        seen.share,
                        seen.share,
                        seen.share,
                    );
                }
            }
            if let Some(sid) = ev.str(CoreField::SessionId) {
                let s = p.session(hash(sid), t);
                s.calls = s.calls.saturating_add(1);
                s.add_server(server_hash);
                let (calls, breadth) = (f64::from(s.calls), s.breadth());
                if let Some(score) = p.session_calls.score(calls) {
                    f.set(
                        BaselineField::SessionCalls,
                        score,
                        calls,
                        p.session_calls.typical(),
                    );
                }
                if let Some(score) = p.session_breadth.score(breadth) {
                    f.set(
                        BaselineField::SessionBreadth,
                        score,
                        breadth,
                        p.session_breadth.typical(),
                    );
                }
            }
            if let Some(args) = ev.arguments() {
                scratch.clear();
                recipients(args, &mut scratch);
                if !scratch.is_empty() {
                    let (mut any, mut rarest) = (None, f64::INFINITY);
                    for &h in &scratch {
                        let seen = p.recipients.observe(h, MAX_RECIPIENTS);
                        rarest = rarest.min(seen.share);
                        if let Some(n) = seen.new {
                            any = Some(any.unwrap_or(false) | n);
                        }
                    }
                    if own_warm {
                        if let Some(new) = any {
                            f.flag(BaselineField::FirstRecipient, new);
                        }
                        f.set(BaselineField::RecipientFrequency, rarest, rarest, rarest);
                    }
                }
            }
        }
        p.events += 1;
        let ready = p.events == PEER_READY && p.peer.is_none();
        self.scratch = scratch;
        if let (true, Some(g)) = (ready, group) {
            let stands = self
                .peers
                .get(g)
                .is_some_and(|id| self.agents.contains_key(id) || self.cold.contains_key(id));
            if !stands {
                self.peers.insert(g.to_owned(), agent.to_owned());
            }
        }
        ev.set_baseline_boxed(f);
    }

    /// Moves agents idle since `watermark - idle_after` to the cold tier.
    fn sweep(&mut self) {
        let cutoff = self.watermark.saturating_sub(self.idle_after);
        let idle: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, p)| p.last < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for agent in idle {
            self.freeze(&agent);
            self.stats.idled += 1;
        }
    }

    fn freeze(&mut self, agent: &str) {
        let Some(p) = self.agents.remove(agent) else {
            return;
        };
        if self.max_cold == 0 {
            self.stats.dropped += 1;
            return;
        }
        if self.cold.len() >= self.max_cold {
            if let Some(oldest) = self
                .cold
                .iter()
                // Ties by name: the map's order differs in a restored copy.
                .min_by_key(|(k, (last, _))| (*last, *k))
                .map(|(k, _)| k.clone())
            {
                self.cold.remove(&oldest);
                self.stats.dropped += 1;
            }
        }
        match postcard::to_allocvec(&p) {
            Ok(bytes) => {
                self.cold.insert(agent.to_owned(), (p.last, bytes));
            }
            Err(_) => self.stats.dropped += 1,
        }
    }

    /// Moves the least recently active tenth of the hot agents to the cold tier.
    fn evict(&mut self) {
        let mut lasts: Vec<i64> = self.agents.values().map(|p| p.last).collect();
        let cut = self.agents.len() / 10;
        let (_, cutoff, _) = lasts.select_nth_unstable(cut);
        let cutoff = *cutoff;
        let out: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, p)| p.last <= cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for agent in out {
            self.freeze(&agent);
            self.stats.evicted += 1;
        }
    }

    /// Everything the profiles hold, exactly, for an engine checkpoint (unlike
    /// [`Profiles::snapshot`], which is a portable file of the learnt baselines, this keeps
    /// the hot/cold split, the sweep clock and the counters, so a restored engine behaves
    /// as one that never stopped).
    pub(crate) fn save_bytes(&self) -> Result<Vec<u8>, String> {
        crate::checkpoint::to_bytes(&(
            &self.agents,
            &self.cold,
            &self.peers,
            self.peer_field.name(),
            self.idle_after,
            self.watermark,
            self.swept,
            &self.stats,
        ))
    }

    /// Replaces the profiles with saved ones, keeping this instance's caps.
    pub(crate) fn load_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        type Saved = (
            FxHashMap<String, Profile>,
            FxHashMap<String, (i64, Vec<u8>)>,
            FxHashMap<String, String>,
            String,
            i64,
            i64,
            i64,
            ProfileStats,
        );
        let (agents, cold, peers, peer_field, idle_after, watermark, swept, stats): Saved =
            crate::checkpoint::from_bytes(bytes)?;
        self.agents = agents;
        self.cold = cold;
        self.peers = peers;
        self.peer_field = FieldRef::resolve(&peer_field, true);
        self.idle_after = idle_after;
        self.watermark = watermark;
        self.swept = swept;
        self.stats = stats;
        Ok(())
    }

    /// Writes every profile, hot and cold, to `path` atomically (a temporary file, then a
    /// rename): a crash leaves the previous snapshot whole.
    pub fn snapshot(&self, path: &std::path::Path) -> Result<(), String> {
        let mut agents: FxHashMap<std::borrow::Cow<'_, str>, std::borrow::Cow<'_, Profile>> = self
            .agents
            .iter()
            .map(|(k, p)| (k.as_str().into(), std::borrow::Cow::Borrowed(p)))
            .collect();
        for (k, (_, bytes)) in &self.cold {
            if let Ok(p) = postcard::from_bytes::<Profile>(bytes) {
                agents.insert(k.as_str().into(), std::borrow::Cow::Owned(p));
            }
        }
        let snap = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            peer_field: self.peer_field.name(),
            idle_after_ns: self.idle_after,
            peers: std::borrow::Cow::Borrowed(&self.peers),
            agents,
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(&snap).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a snapshot. A file of another format or version, or a damaged one, is an error
    /// that says which; the caller starts fresh. Agents idle at the snapshot's latest time go
    /// straight to the cold tier.
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
        let mut out = Profiles::default().with_peer_field(&snap.peer_field);
        out.idle_after = snap.idle_after_ns.max(1);
        out.peers = snap.peers.into_owned();
        out.agents = snap
            .agents
            .into_iter()
            .map(|(k, p)| (k.into_owned(), p.into_owned()))
            .collect();
        out.watermark = out
            .agents
            .values()
            .map(|p| p.last)
            .max()
            .unwrap_or(i64::MIN);
        out.swept = out.watermark;
        out.sweep();
        out.stats.idled = 0;
        Ok(out)
    }

    /// Every profiled agent's id, hot and cold.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents
            .keys()
            .chain(self.cold.keys())
            .map(String::as_str)
    }

    /// An agent's profile (decoded from the cold tier if it is there).
    pub fn get(&self, agent: &str) -> Option<std::borrow::Cow<'_, Profile>> {
        if let Some(p) = self.agents.get(agent) {
            return Some(std::borrow::Cow::Borrowed(p));
        }
        let (_, bytes) = self.cold.get(agent)?;
        postcard::from_bytes(bytes)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    /// What the profiles hold and have moved.
    pub fn stats(&self) -> ProfileStats {
        ProfileStats {
            hot: self.agents.len(),
            cold: self.cold.len(),
            cold_bytes: self.cold.values().map(|(_, b)| b.len()).sum(),
            ..self.stats
        }
    }

    /// Bytes the hot profiles hold (structs and tables, not the map's own buckets).
    pub fn hot_bytes(&self) -> usize {
        self.agents
            .iter()
            .map(|(k, p)| k.capacity() + p.memory_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The hash as it was written before it was unrolled: an `FxHasher` fed byte by byte.
    fn fx_reference(parts: &[&str]) -> u64 {
        use std::hash::Hasher;
        let mut h = rustc_hash::FxHasher::default();
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

    #[test]
    fn lower_ascii8_is_to_ascii_lowercase() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let w = u64::from(b) << (8 * at) | 0x4161_7a5a_4080_c35b & !(0xff << (8 * at));
                let want = u64::from_le_bytes(w.to_le_bytes().map(|c| c.to_ascii_lowercase()));
                assert_eq!(lower_ascii8(w), want, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn url_keys_count_by_host() {
        let url = "https://Paste.evil.example/x?y#z";
        for key in ["url", "URL", "webhook_url", "Callback_URL", "_url"] {
            assert_eq!(destination(key, url), "Paste.evil.example", "{key}");
        }
        for key in ["to", "urls", "url_", "curl", "é_url_"] {
            assert_eq!(destination(key, url), url, "{key}");
        }
    }

    proptest! {
        /// The key test compares in place what the lowercased key was asked before.
        #[test]
        fn url_key_test_is_the_lowercased_one(key in "(?i)[a-zé_]{0,3}(_url|url|_ur|x)?") {
            let v = "https://h.example/p";
            let was = key.eq_ignore_ascii_case("url") || key.to_ascii_lowercase().ends_with("_url");
            prop_assert_eq!(destination(&key, v) != v, was);
        }

        /// Profiles keep these hashes in checkpoints and snapshots: the unrolled hash must
        /// give the byte-by-byte value for every length, case and byte.
        #[test]
        fn hash_matches_fxhasher(parts in proptest::collection::vec(".{0,40}", 1..4),
                                 bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            prop_assert_eq!(hash_parts(&refs), fx_reference(&refs));
            let ascii: String = bytes.iter().map(|&b| char::from(b & 0x7f)).collect();
            prop_assert_eq!(hash(&ascii), fx_reference(&[&ascii]));
            prop_assert_eq!(hash("Send_EMAIL"), fx_reference(&["send_email"]));
        }
    }

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
        assert_eq!(
            ev.baseline().unwrap().is(BaselineField::FirstTool),
            None,
            "warming up"
        );
        for i in 1..100 {
            let mut ev = call(i, "send_email", &format!("u{}@corp.example", i % 5));
            p.annotate(&mut ev);
        }
        let mut known = call(100, "send_email", "u1@corp.example");
        p.annotate(&mut known);
        let f = known.baseline().unwrap();
        assert_eq!(
            (
                f.is(BaselineField::FirstTool),
                f.is(BaselineField::FirstServer),
                f.is(BaselineField::FirstRecipient)
            ),
            (Some(false), Some(false), Some(false)),
            "a new URL path on a known host is not new"
        );
        let mut new = call(101, "send_email", "drop@evil.example");
        p.annotate(&mut new);
        assert_eq!(
            new.baseline().unwrap().is(BaselineField::FirstRecipient),
            Some(true)
        );
        let mut tool = call(102, "share_file", "u1@corp.example");
        p.annotate(&mut tool);
        assert_eq!(
            tool.baseline().unwrap().is(BaselineField::FirstTool),
            Some(true)
        );
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
            b"{\"format\":\"cordon-profiles\",\"version\":2,\"agents\":{",
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
            b"{\"format\":\"cordon-profiles\",\"version\":2,\"agents\":{\"a\":1}}",
        )
        .unwrap();
        assert!(Profiles::restore(&path).unwrap_err().contains("damaged"));
        std::fs::write(&path, b"[]").unwrap();
        assert!(Profiles::restore(&path).is_err());
    }
}
