//! The event: one record per MCP call seen by an enforcement point.
//!
//! The core fields of DESIGN.md ("Events") are stored in typed slots indexed by [`CoreField`], so
//! that the detectors reach `gen_ai.agent.id` or `audit.decision` with an array index instead of a
//! map lookup. Every other field of the input is kept, flattened to its dotted name
//! (`{"a":{"b":1}}` becomes `a.b`), in a small vector: events carry few unknown fields, and a
//! linear scan over a handful of keys is cheaper than hashing them.
//!
//! The string slots share one buffer: each value is appended to `text` and the slot keeps its
//! span. Decoding an event therefore allocates once for all its strings instead of once per
//! field — the difference between this decoder and a derive-based one.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value as Json;

pub use crate::timestamp::TimestampError;

/// How a core field is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A string.
    Str,
    /// An RFC 3339 timestamp, kept as its text and parsed to nanoseconds.
    Timestamp,
    /// An integer.
    Int,
    /// A floating-point number.
    Float,
    /// Content fingerprints (64-bit values written as 16 hex digits).
    Fingerprints,
    /// Any JSON value (tool arguments, tool description hashes).
    Json,
}

macro_rules! core_fields {
    ($( $variant:ident => $name:literal, $kind:ident, $doc:literal; )*) => {
        /// The fields of the event schema that have a typed slot.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum CoreField {
            $( #[doc = $doc] $variant, )*
        }

        impl CoreField {
            /// Every core field, in schema order.
            pub const ALL: &'static [CoreField] = &[$(CoreField::$variant,)*];

            /// The dotted name of the field.
            pub const fn name(self) -> &'static str {
                match self { $(CoreField::$variant => $name,)* }
            }

            /// What the field holds.
            pub const fn doc(self) -> &'static str {
                match self { $(CoreField::$variant => $doc,)* }
            }

            /// The type of the field.
            pub const fn kind(self) -> FieldKind {
                match self { $(CoreField::$variant => FieldKind::$kind,)* }
            }

            /// Looks a field up by its dotted name.
            ///
            /// The decoder asks this for every key of every record, so it is built for that:
            /// the candidates are the names of the key's length, told apart by their last
            /// eight bytes before one full comparison. A hash probe was 8 % of a file run;
            /// this is a load and one or two integer comparisons for the common case, and an
            /// unknown key is usually refused without touching its bytes twice.
            pub fn from_name(name: &str) -> Option<CoreField> {
                static BY_LEN: std::sync::LazyLock<Vec<Vec<(u64, CoreField)>>> =
                    std::sync::LazyLock::new(|| {
                        let longest = CoreField::ALL.iter().map(|f| f.name().len()).max().unwrap_or(0);
                        let mut by_len = vec![Vec::new(); longest + 1];
                        for f in CoreField::ALL {
                            by_len[f.name().len()].push((name_tail(f.name().as_bytes()), *f));
                        }
                        by_len
                    });
                let bytes = name.as_bytes();
                let candidates = BY_LEN.get(bytes.len())?;
                let tail = name_tail(bytes);
                candidates
                    .iter()
                    .find(|(t, f)| *t == tail && same_head(f.name().as_bytes(), bytes))
                    .map(|(_, f)| *f)
            }
        }
    };
}

core_fields! {
    EventId => "event.id", Str, "Unique event id (ULID); the dedupe key.";
    Timestamp => "@timestamp", Timestamp, "Event time at the enforcement point (RFC 3339).";
    AgentId => "gen_ai.agent.id", Str, "The agent; baselines are keyed on it.";
    AgentName => "gen_ai.agent.name", Str, "The agent's name (its peer group).";
    PrincipalSub => "audit.principal.sub", Str, "Who the agent acts for.";
    PrincipalClientId => "audit.principal.client_id", Str, "The OAuth client of the agent.";
    PrincipalSpiffeId => "audit.principal.spiffe_id", Str, "The agent's workload identity.";
    TokenJti => "audit.token.jti", Str, "The id of the credential used.";
    TokenAud => "audit.token.aud", Str, "The audience of the credential used.";
    TokenScope => "audit.token.scope", Str, "The scope of the credential used.";
    SessionId => "mcp.session.id", Str, "MCP session (optional in newer revisions).";
    ConversationId => "gen_ai.conversation.id", Str, "Conversation id.";
    Method => "mcp.method.name", Str, "`tools/call`, `resources/read`, … (gives the category).";
    Target => "audit.target", Str, "The MCP server called.";
    ServerAddress => "server.address", Str, "The MCP server's address.";
    ToolName => "gen_ai.tool.name", Str, "The tool called.";
    Arguments => "gen_ai.tool.call.arguments", Json, "The tool's (possibly redacted) arguments.";
    Decision => "audit.decision", Str, "`allow`, `deny` or `redact` at the enforcement point.";
    DataClass => "audit.data_class", Str, "Sensitivity of what was touched.";
    ResultBytes => "audit.result_bytes", Int, "Size of the result.";
    DurationMs => "audit.duration_ms", Float, "Duration of the call in milliseconds.";
    ErrorType => "error.type", Str, "JSON-RPC error code or `tool_error`.";
    ResultFp => "audit.result_fp", Fingerprints, "Content fingerprints of the result.";
    ArgsFp => "audit.args_fp", Fingerprints, "Content fingerprints of the arguments.";
    ToolDescriptionSha256 => "audit.tool.description_sha256", Json, "On `tools/list`: hash of each tool's definition.";
    Capability => "audit.tool.capability", Str, "What the call does: read, write, delete, egress, credential, exec or admin (the enforcement point's label, else derived from the tool catalogue).";
}

/// The last eight bytes of a name (fewer, zero-padded, when it is shorter), as one integer.
#[inline]
fn name_tail(b: &[u8]) -> u64 {
    // Every core name, and nearly every key a record has, is eight bytes or longer: one
    // load. (A copy of a length known only at run time was a call to memcpy, once for every
    // key of every record.)
    if let Some(tail) = b.last_chunk::<8>() {
        return u64::from_le_bytes(*tail);
    }
    let mut t = [0u8; 8];
    t[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(t)
}

/// Whether two names of the same length whose tails ([`name_tail`]) are equal are equal:
/// compares them eight bytes at a time, inline (a `memcmp` call per key was a visible share
/// of decoding). The bytes past the last whole word are within the tail.
#[inline]
fn same_head(a: &[u8], b: &[u8]) -> bool {
    a.chunks_exact(8)
        .zip(b.chunks_exact(8))
        .all(|(x, y)| <[u8; 8]>::try_from(x).ok() == <[u8; 8]>::try_from(y).ok())
}

/// Slot of each core field among the string slots (`u8::MAX` for other kinds), computed
/// from the schema at compile time.
const STR_SLOTS: [u8; CoreField::ALL.len()] = {
    let mut out = [u8::MAX; CoreField::ALL.len()];
    let mut next = 0u8;
    let mut i = 0;
    while i < CoreField::ALL.len() {
        if matches!(
            CoreField::ALL[i].kind(),
            FieldKind::Str | FieldKind::Timestamp
        ) {
            out[i] = next;
            next += 1;
        }
        i += 1;
    }
    out
};

/// Number of string-typed slots (strings and the timestamp text).
const N_STR: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < STR_SLOTS.len() {
        if STR_SLOTS[i] != u8::MAX {
            n += 1;
        }
        i += 1;
    }
    n
};

impl CoreField {
    /// The index of a string-typed field in the string slots, if it is one.
    #[inline]
    const fn str_slot(self) -> Option<usize> {
        match STR_SLOTS[self as usize] {
            u8::MAX => None,
            s => Some(s as usize),
        }
    }

    /// The namespaces that belong to the schema: an unknown field under one of them is
    /// probably a typo of a core field.
    pub const NAMESPACES: &'static [&'static str] = &[
        "event.",
        "gen_ai.",
        "audit.",
        "mcp.",
        "server.",
        "error.",
        "baseline.",
        "response.",
    ];
}

/// The category of an event, derived from `mcp.method.name` (EQL's event category).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Category {
    /// `tools/call`.
    Tool,
    /// `resources/read`, `resources/subscribe`, …
    Resource,
    /// `prompts/get`.
    Prompt,
    /// `tools/list`, `resources/list`, `prompts/list`, … — catalogue listings.
    List,
    /// `initialize`, `ping`, `notifications/*`, session lifecycle.
    Session,
    /// Anything else, or no method at all.
    #[default]
    Other,
    /// A category read from a field of arbitrary JSON (`cordon hunt --category-field`).
    Custom(Box<str>),
}

impl Category {
    /// Derives the category from an MCP method name.
    pub fn from_method(method: &str) -> Category {
        if method == "tools/call" {
            Category::Tool
        } else if method.ends_with("/list") || method.ends_with("/templates/list") {
            Category::List
        } else if method.starts_with("resources/") {
            Category::Resource
        } else if method.starts_with("prompts/") {
            Category::Prompt
        } else if method == "initialize"
            || method == "ping"
            || method.starts_with("notifications/")
            || method.starts_with("session/")
        {
            Category::Session
        } else {
            Category::Other
        }
    }

    /// The category's name as used in queries (`tool where …`).
    pub fn as_str(&self) -> &str {
        match self {
            Category::Tool => "tool",
            Category::Resource => "resource",
            Category::Prompt => "prompt",
            Category::List => "list",
            Category::Session => "session",
            Category::Other => "other",
            Category::Custom(s) => s,
        }
    }

    /// The names of the built-in categories (for query checking).
    pub const BUILTIN: &'static [&'static str] =
        &["tool", "resource", "prompt", "list", "session", "other"];
}

/// A borrowed view of one field's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue<'a> {
    /// The field is absent or null.
    Missing,
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Content fingerprints.
    Fingerprints(&'a [u64]),
    /// Any other JSON value (arrays, objects).
    Json(&'a Json),
}

impl<'a> FieldValue<'a> {
    /// Views a JSON value as a field value (scalars become typed).
    pub fn from_json(v: &'a Json) -> FieldValue<'a> {
        match v {
            Json::Null => FieldValue::Missing,
            Json::Bool(b) => FieldValue::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => FieldValue::Int(i),
                None => FieldValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => FieldValue::Str(s),
            other => FieldValue::Json(other),
        }
    }
}

/// A resolved reference to a field, computed once when a rule is compiled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FieldRef {
    /// A typed core field.
    Core(CoreField),
    /// A path inside a JSON-typed core field (`gen_ai.tool.call.arguments.to`).
    CorePath(CoreField, Box<[Box<str>]>),
    /// Any other field, by its flattened dotted name.
    Extra(Box<str>),
    /// The event's category.
    Category,
    /// A baseline feature the engine computed for the event (`baseline.rate`, …).
    Baseline(BaselineField),
}

/// What the engine's per-agent baselines say about an event, set before rules see it: one
/// optional [`Baseline`] per [`BaselineField`] (absent while the model warms up, or when the
/// event has nothing to score, e.g. no result size).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaselineFeatures {
    items: [Option<Baseline>; BaselineField::ALL.len()],
}

/// One baseline feature of an event: the value rules read, and what it was judged on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    /// What rules read: a tail probability in [0, 1] for scores, 0 or 1 for flags, a share
    /// in [0, 1] for frequencies.
    pub value: f64,
    /// The observation (calls this minute, bytes, denials in the window, …).
    pub observed: f64,
    /// What the agent's profile expected (its learnt mean, typical size, share, …).
    pub expected: f64,
}

impl BaselineFeatures {
    /// The feature, if the profile computed it.
    #[inline]
    pub fn get(&self, f: BaselineField) -> Option<&Baseline> {
        self.items[f as usize].as_ref()
    }

    /// A feature's value (a score, a frequency, or 0/1 for a flag).
    pub fn value(&self, f: BaselineField) -> Option<f64> {
        self.get(f).map(|b| b.value)
    }

    /// A flag feature (novelty) as a boolean.
    pub fn is(&self, f: BaselineField) -> Option<bool> {
        self.get(f).map(|b| b.value > 0.5)
    }

    /// Sets a feature.
    #[inline]
    pub fn set(&mut self, f: BaselineField, value: f64, observed: f64, expected: f64) {
        self.items[f as usize] = Some(Baseline {
            value,
            observed,
            expected,
        });
    }

    /// Sets a flag feature (novelty).
    #[inline]
    pub fn flag(&mut self, f: BaselineField, on: bool) {
        let v = f64::from(u8::from(on));
        self.set(f, v, v, 0.0);
    }

    /// Every computed feature.
    pub fn iter(&self) -> impl Iterator<Item = (BaselineField, &Baseline)> {
        BaselineField::ALL
            .iter()
            .zip(self.items.iter())
            .filter_map(|((_, f), b)| b.as_ref().map(|b| (*f, b)))
    }
}

/// What kind of value a baseline feature is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineKind {
    /// A tail probability in [0, 1]: near 1 is unusually high for this agent.
    Score,
    /// Whether something is new for this agent (a boolean).
    Flag,
    /// The share of the agent's recent calls with this value, in [0, 1]: near 0 is rare.
    Frequency,
}

macro_rules! baseline_fields {
    ($($variant:ident => $name:literal, $kind:ident, $what:literal, $doc:literal;)*) => {
        /// The baseline features rules can read.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BaselineField {
            $(#[doc = $doc] $variant,)*
        }

        impl BaselineField {
            /// Every feature with its name.
            pub const ALL: &'static [(&'static str, BaselineField)] =
                &[$(($name, BaselineField::$variant),)*];

            /// What kind of value the feature is.
            pub fn kind(self) -> BaselineKind {
                match self { $(BaselineField::$variant => BaselineKind::$kind,)* }
            }

            /// What the feature measures, for alerts and `cordon baseline show`.
            pub fn what(self) -> &'static str {
                match self { $(BaselineField::$variant => $what,)* }
            }

            /// The feature's documentation.
            pub fn doc(self) -> &'static str {
                match self { $(BaselineField::$variant => $doc,)* }
            }

            /// The feature's dotted name.
            pub fn name(self) -> &'static str {
                match self { $(BaselineField::$variant => $name,)* }
            }
        }
    };
}

baseline_fields! {
    Rate => "baseline.rate", Score, "calls per minute",
        "Tail probability of the agent's calls in this minute, against its rate at this hour of day and day of week.";
    Volume => "baseline.volume", Score, "result bytes",
        "Tail probability of this call's result size for the agent (log-normal).";
    ArgsVolume => "baseline.args_volume", Score, "argument bytes",
        "Tail probability of this call's argument size for the agent (log-normal).";
    DenyRatio => "baseline.deny_ratio", Score, "denied calls in 10 minutes",
        "Tail probability of the denied calls in the agent's current 10-minute window, given its usual deny ratio.";
    ErrorRatio => "baseline.error_ratio", Score, "failed calls in 10 minutes",
        "Tail probability of the failed calls in the agent's current 10-minute window, given its usual error ratio.";
    SessionCalls => "baseline.session_calls", Score, "calls in the session",
        "Tail probability of the calls so far in this session against the agent's session lengths.";
    SessionBreadth => "baseline.session_breadth", Score, "distinct servers in the session",
        "Tail probability of the distinct servers so far in this session against the agent's sessions.";
    FirstTool => "baseline.first_tool", Flag, "first use of tool",
        "The agent (or, for a new agent, its peer group) had never called this tool of this server.";
    FirstServer => "baseline.first_server", Flag, "first use of server",
        "The agent had never called this MCP server.";
    FirstMethod => "baseline.first_method", Flag, "first use of method",
        "The agent had never used this MCP method.";
    FirstRecipient => "baseline.first_recipient", Flag, "first use of recipient",
        "A recipient or destination in the arguments the agent had never used.";
    ToolFrequency => "baseline.tool_frequency", Frequency, "share of calls to this tool",
        "The share of the agent's recent calls that went to this tool (0: never).";
    ServerFrequency => "baseline.server_frequency", Frequency, "share of calls to this server",
        "The share of the agent's recent calls that went to this server (0: never).";
    RecipientFrequency => "baseline.recipient_frequency", Frequency, "share of sends to this recipient",
        "The share of the agent's recent recipients that were this one (the rarest, with several).";
    TokenRevoked => "response.token_revoked", Flag, "call with a token Cordon revoked",
        "The call used a token that a Cordon playbook revoked (true only after the revocation succeeded).";
    ServerIsolated => "response.server_isolated", Flag, "call to a server Cordon isolated",
        "The call went to an MCP server that a Cordon playbook isolated, within the isolation's TTL.";
    AgentQuarantined => "response.agent_quarantined", Flag, "call by an agent Cordon quarantined",
        "The call was made by an agent that a Cordon playbook quarantined, within the quarantine's TTL.";
}

impl BaselineField {
    /// Whether the feature is a number (a score or a frequency) rather than a boolean.
    pub fn is_score(self) -> bool {
        self.kind() != BaselineKind::Flag
    }

    /// Whether the feature's value departs from the profile enough to be shown as an
    /// anomaly in an alert.
    pub fn departs(self, b: &Baseline) -> bool {
        match self.kind() {
            BaselineKind::Score => b.value >= 0.99,
            BaselineKind::Flag => b.value > 0.5,
            BaselineKind::Frequency => b.value < 0.01,
        }
    }
}

impl FieldRef {
    /// Resolves a dotted name against the schema. With `schema` false every name is an
    /// extra field (for ad-hoc hunts over arbitrary JSON).
    pub fn resolve(name: &str, schema: bool) -> FieldRef {
        if !schema {
            return FieldRef::Extra(name.into());
        }
        if let Some((_, b)) = BaselineField::ALL.iter().find(|(n, _)| *n == name) {
            return FieldRef::Baseline(*b);
        }
        if let Some(f) = CoreField::from_name(name) {
            return FieldRef::Core(f);
        }
        for f in [CoreField::Arguments, CoreField::ToolDescriptionSha256] {
            if let Some(rest) = name
                .strip_prefix(f.name())
                .and_then(|r| r.strip_prefix('.'))
            {
                let path: Vec<Box<str>> = rest.split('.').map(Into::into).collect();
                return FieldRef::CorePath(f, path.into_boxed_slice());
            }
        }
        FieldRef::Extra(name.into())
    }

    /// The dotted name this reference reads.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            FieldRef::Core(f) => Cow::Borrowed(f.name()),
            FieldRef::CorePath(f, p) => Cow::Owned(format!("{}.{}", f.name(), p.join("."))),
            FieldRef::Extra(n) => Cow::Borrowed(n),
            FieldRef::Category => Cow::Borrowed("event.category"),
            FieldRef::Baseline(b) => Cow::Borrowed(
                BaselineField::ALL
                    .iter()
                    .find(|(_, x)| x == b)
                    .map(|(n, _)| *n)
                    .unwrap_or("baseline"),
            ),
        }
    }
}

/// Where a string slot's value lies in the event's text buffer, or a fingerprint list in
/// its list buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    start: u32,
    len: u32,
}

impl Slot {
    const NONE: Slot = Slot {
        start: 0,
        len: u32::MAX,
    };
}

impl Default for Slot {
    fn default() -> Slot {
        Slot::NONE
    }
}

/// One MCP call (or other method) as seen by an enforcement point.
///
/// Cheap to clone: the fields live behind a shared pointer and are copied only when a
/// shared event is changed. Open partial matches, the reorder buffer and checkpoint copies
/// hold the same event many times over; a copy of the engine's state then copies pointers,
/// not events.
#[derive(Clone, Debug, Default)]
pub struct Event(Arc<Fields>);

/// An event's fields (see [`Event`]).
#[derive(Clone, Debug, Default)]
struct Fields {
    text: String,
    slots: [Slot; N_STR],
    ts_nanos: Option<i64>,
    result_bytes: Option<i64>,
    duration_ms: Option<f64>,
    arguments: Option<Json>,
    /// The arguments' size as compact JSON, measured when they are set (while in cache).
    arguments_bytes: u32,
    /// Shared: a gateway sends the same map on every `tools/list` of a server, so the
    /// decoder hands out one copy of each recent map ([`Event::set_tool_description_sha256_shared`]),
    /// and comparing two events' maps is then a pointer comparison.
    tool_description_sha256: Option<Arc<Json>>,
    /// Both fingerprint lists, in one allocation of their exact size (`result_fp` and
    /// `args_fp` say where): a gateway sends both on most calls, and two boxes were two of
    /// the ten allocations a decoded event made.
    fps: Vec<u64>,
    result_fp: Option<Slot>,
    args_fp: Option<Slot>,
    extra: Vec<(Box<str>, Json)>,
    category: Category,
    baseline: Option<Box<BaselineFeatures>>,
    /// This value's id ([`Event::instance_id`]), given when first asked for; reset by every
    /// change.
    instance: OnceLock<u64>,
}

/// The setters a decoder uses, on the fields themselves: [`Event`]'s setters reach them
/// through [`Event::m`], and [`EventBuilder`] directly.
impl Fields {
    fn set_str(&mut self, f: CoreField, v: &str) {
        let Some(i) = f.str_slot() else { return };
        let (Ok(start), Ok(len)) = (u32::try_from(self.text.len()), u32::try_from(v.len())) else {
            return;
        };
        if len == u32::MAX {
            return;
        }
        if f == CoreField::Method {
            self.category = Category::from_method(v);
        }
        if self.text.capacity() == 0 {
            self.text.reserve(256);
        }
        self.text.push_str(v);
        self.slots[i] = Slot { start, len };
    }

    fn set_timestamp_text(&mut self, text: &str) -> Result<(), TimestampError> {
        self.ts_nanos = Some(crate::timestamp::parse_nanos(text)?);
        self.set_str(CoreField::Timestamp, text);
        Ok(())
    }

    fn set_arguments(&mut self, v: Json) {
        self.arguments_bytes = u32::try_from(json_size(&v)).unwrap_or(u32::MAX);
        self.arguments = Some(v);
    }

    fn set_fingerprints_from(&mut self, f: CoreField, fps: &mut [u64]) {
        let n = sort_distinct(fps);
        self.put_fingerprints(f, &fps[..n]);
    }

    /// Both lists at once (each sorted and distinct already), in one allocation of their
    /// exact size.
    fn set_fingerprint_lists(&mut self, result: Option<&[u64]>, args: Option<&[u64]>) {
        self.fps
            .reserve_exact(result.map_or(0, <[u64]>::len) + args.map_or(0, <[u64]>::len));
        if let Some(v) = result {
            self.put_fingerprints(CoreField::ResultFp, v);
        }
        if let Some(v) = args {
            self.put_fingerprints(CoreField::ArgsFp, v);
        }
    }

    /// Appends a sorted list and points `f` at it, growing the buffer only by the list's
    /// size. Replacing a list first rebuilds the buffer with only the other one, so replaced
    /// lists do not pile up.
    fn put_fingerprints(&mut self, f: CoreField, v: &[u64]) {
        let (mine, mut other) = match f {
            CoreField::ResultFp => (self.result_fp, self.args_fp),
            CoreField::ArgsFp => (self.args_fp, self.result_fp),
            _ => return,
        };
        let Ok(len) = u32::try_from(v.len()) else {
            return;
        };
        if mine.is_some() {
            let kept = self.fingerprints(other).unwrap_or_default();
            let mut fps = Vec::with_capacity(kept.len() + v.len());
            fps.extend_from_slice(kept);
            self.fps = fps;
            other = other.map(|o| Slot {
                start: 0,
                len: o.len,
            });
        } else {
            self.fps.reserve_exact(v.len());
        }
        let Ok(start) = u32::try_from(self.fps.len()) else {
            return;
        };
        self.fps.extend_from_slice(v);
        let mine = Some(Slot { start, len });
        (self.result_fp, self.args_fp) = match f {
            CoreField::ResultFp => (mine, other),
            _ => (other, mine),
        };
    }

    /// The list `slot` points at.
    fn fingerprints(&self, slot: Option<Slot>) -> Option<&[u64]> {
        let s = slot?;
        self.fps
            .get(s.start as usize..s.start as usize + s.len as usize)
    }

    fn set_extra(&mut self, name: Box<str>, v: Json) {
        if let Some(slot) = self.extra.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = v;
        } else {
            self.extra.push((name, v));
        }
    }
}

/// An event being decoded: its fields are written in place, and become an [`Event`] once
/// complete. Each of [`Event`]'s setters first makes sure the fields are not shared (an
/// atomic compare-and-swap and a check of the value's id, about thirty instructions); a
/// decoder sets twenty-odd fields per record, on fields no one else can see yet.
///
/// The fields are written where the event will keep them: [`build_event`] allocates them
/// first and lends them to the decoder. Built on the stack and moved into place after, the
/// fields (a few hundred bytes) were copied twice per record.
pub(crate) struct EventBuilder<'a>(&'a mut Fields);

/// Sorts `fps` and moves its distinct values to the front; returns how many there are.
pub(crate) fn sort_distinct(fps: &mut [u64]) -> usize {
    fps.sort_unstable();
    let mut n = 0;
    for i in 0..fps.len() {
        if n == 0 || fps[i] != fps[n - 1] {
            fps[n] = fps[i];
            n += 1;
        }
    }
    n
}

/// An event whose fields `fill` writes in place, or `None` if `fill` gives up.
pub(crate) fn build_event(fill: impl FnOnce(EventBuilder<'_>) -> Option<()>) -> Option<Event> {
    let mut fields = Arc::new(Fields::default());
    // Unique: made just above.
    let f = Arc::get_mut(&mut fields)?;
    let hint = TEXT_HINT.get();
    f.text.reserve_exact(hint);
    fill(EventBuilder(&mut *f))?;
    let used = f.text.len().next_multiple_of(16);
    TEXT_HINT.set(used.max(hint - hint / 32).max(64));
    Some(Event(fields))
}

thread_local! {
    /// The string bytes of this thread's recent events, as a slowly forgetting maximum: a
    /// decoded event's text is sized from it. A fixed 256 bytes was too small for a quarter
    /// of the generator's events (245–272 bytes of strings), each then grown and copied.
    static TEXT_HINT: std::cell::Cell<usize> = const { std::cell::Cell::new(256) };
}

impl EventBuilder<'_> {
    /// [`Event::set_str`].
    pub(crate) fn set_str(&mut self, f: CoreField, v: &str) {
        self.0.set_str(f, v);
    }
    /// [`Event::set_timestamp_text`].
    pub(crate) fn set_timestamp_text(&mut self, text: &str) -> Result<(), TimestampError> {
        self.0.set_timestamp_text(text)
    }
    /// [`Event::set_result_bytes`].
    pub(crate) fn set_result_bytes(&mut self, v: i64) {
        self.0.result_bytes = Some(v);
    }
    /// [`Event::set_duration_ms`].
    pub(crate) fn set_duration_ms(&mut self, v: f64) {
        self.0.duration_ms = Some(v);
    }
    /// [`Event::set_arguments`].
    pub(crate) fn set_arguments(&mut self, v: Json) {
        self.0.set_arguments(v);
    }
    /// [`Event::set_tool_description_sha256_shared`].
    pub(crate) fn set_tool_description_sha256_shared(&mut self, v: Arc<Json>) {
        self.0.tool_description_sha256 = Some(v);
    }
    /// Sets `audit.result_fp` and `audit.args_fp` (each sorted and distinct, see
    /// [`sort_distinct`]) in one allocation; `None` leaves a list unset.
    pub(crate) fn set_fingerprint_lists(&mut self, result: Option<&[u64]>, args: Option<&[u64]>) {
        self.0.set_fingerprint_lists(result, args);
    }
    /// [`Event::set_extra`].
    pub(crate) fn set_extra(&mut self, name: &str, v: Json) {
        self.0.set_extra(name.into(), v);
    }
}

impl Event {
    /// An empty event.
    pub fn new() -> Event {
        Event::default()
    }

    /// The fields to change: copied first when the event is shared.
    #[inline]
    fn m(&mut self) -> &mut Fields {
        let f = Arc::make_mut(&mut self.0);
        if f.instance.get().is_some() {
            f.instance = OnceLock::new();
        }
        f
    }

    /// An id of this event *value*, unique in the process: copies of the event share it, and
    /// a change gives the changed event a new one. Checkpoints use it: an event held in an
    /// open partial match is part of every checkpoint until the match closes, and with this
    /// id a checkpoint can refer to the copy an earlier one wrote instead of writing the
    /// event again.
    pub fn instance_id(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        *self
            .0
            .instance
            .get_or_init(|| NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// A string-typed core field.
    #[inline]
    pub fn str(&self, f: CoreField) -> Option<&str> {
        let slot = self.0.slots[f.str_slot()?];
        if slot.len == u32::MAX {
            return None;
        }
        let start = slot.start as usize;
        self.0.text.get(start..start + slot.len as usize)
    }

    /// Sets a string-typed core field; setting the method also sets the category.
    /// Does nothing for fields of other types, or for a value over 4 GiB.
    pub fn set_str(&mut self, f: CoreField, v: impl AsRef<str>) {
        if f.str_slot().is_some() {
            self.m().set_str(f, v.as_ref());
        }
    }

    /// Clears a core field.
    pub fn clear(&mut self, f: CoreField) {
        if let Some(i) = f.str_slot() {
            self.m().slots[i] = Slot::NONE;
        }
        match f {
            CoreField::Timestamp => self.m().ts_nanos = None,
            CoreField::ResultBytes => self.m().result_bytes = None,
            CoreField::DurationMs => self.m().duration_ms = None,
            CoreField::Arguments => self.m().arguments = None,
            CoreField::ToolDescriptionSha256 => self.m().tool_description_sha256 = None,
            CoreField::ResultFp => self.m().result_fp = None,
            CoreField::ArgsFp => self.m().args_fp = None,
            CoreField::Method => self.m().category = Category::Other,
            _ => {}
        }
    }

    /// `event.id`.
    pub fn id(&self) -> Option<&str> {
        self.str(CoreField::EventId)
    }
    /// `gen_ai.agent.id`.
    pub fn agent_id(&self) -> Option<&str> {
        self.str(CoreField::AgentId)
    }
    /// `mcp.session.id`.
    pub fn session_id(&self) -> Option<&str> {
        self.str(CoreField::SessionId)
    }
    /// `gen_ai.tool.name`.
    pub fn tool_name(&self) -> Option<&str> {
        self.str(CoreField::ToolName)
    }

    /// Event time in nanoseconds since the Unix epoch.
    pub fn timestamp_nanos(&self) -> Option<i64> {
        self.0.ts_nanos
    }

    /// Sets the event time; the `@timestamp` text becomes its RFC 3339 form.
    pub fn set_timestamp_nanos(&mut self, nanos: i64) {
        self.m().ts_nanos = Some(nanos);
        if let Ok(ts) = jiff::Timestamp::from_nanosecond(nanos as i128) {
            self.set_str(CoreField::Timestamp, ts.to_string());
        }
    }

    /// Sets `@timestamp` from RFC 3339 text, keeping the text as given.
    pub fn set_timestamp_text(&mut self, text: &str) -> Result<(), TimestampError> {
        self.m().set_timestamp_text(text)
    }

    /// `audit.result_bytes`.
    pub fn result_bytes(&self) -> Option<i64> {
        self.0.result_bytes
    }
    /// Sets `audit.result_bytes`.
    pub fn set_result_bytes(&mut self, v: i64) {
        self.m().result_bytes = Some(v);
    }
    /// `audit.duration_ms`.
    pub fn duration_ms(&self) -> Option<f64> {
        self.0.duration_ms
    }
    /// Sets `audit.duration_ms`.
    pub fn set_duration_ms(&mut self, v: f64) {
        self.m().duration_ms = Some(v);
    }
    /// `gen_ai.tool.call.arguments`.
    pub fn arguments(&self) -> Option<&Json> {
        self.0.arguments.as_ref()
    }
    /// Sets `gen_ai.tool.call.arguments`.
    pub fn set_arguments(&mut self, v: Json) {
        self.m().set_arguments(v);
    }

    /// The size of the arguments as compact JSON text (0 without arguments).
    pub fn arguments_bytes(&self) -> u32 {
        self.0.arguments_bytes
    }
    /// `audit.tool.description_sha256`.
    pub fn tool_description_sha256(&self) -> Option<&Json> {
        self.0.tool_description_sha256.as_deref()
    }
    /// Sets `audit.tool.description_sha256`.
    pub fn set_tool_description_sha256(&mut self, v: Json) {
        self.m().tool_description_sha256 = Some(Arc::new(v));
    }
    /// Sets `audit.tool.description_sha256` to a map shared with other events (the decoder
    /// keeps the recent ones): equal maps that share one copy compare by pointer.
    pub fn set_tool_description_sha256_shared(&mut self, v: Arc<Json>) {
        self.m().tool_description_sha256 = Some(v);
    }
    /// `audit.result_fp`.
    pub fn result_fp(&self) -> Option<&[u64]> {
        self.0.fingerprints(self.0.result_fp)
    }
    /// `audit.args_fp`.
    pub fn args_fp(&self) -> Option<&[u64]> {
        self.0.fingerprints(self.0.args_fp)
    }
    /// Sets a fingerprint list (`audit.result_fp` or `audit.args_fp`), kept sorted.
    pub fn set_fingerprints(&mut self, f: CoreField, mut fps: Vec<u64>) {
        self.set_fingerprints_from(f, &mut fps);
    }

    /// [`Event::set_fingerprints`] from a scratch slice (sorted and deduplicated in place),
    /// copied into one allocation of the exact size.
    pub fn set_fingerprints_from(&mut self, f: CoreField, fps: &mut [u64]) {
        if matches!(f, CoreField::ResultFp | CoreField::ArgsFp) {
            self.m().set_fingerprints_from(f, fps);
        }
    }

    /// Sets one flag feature, creating the feature set if the event has none.
    pub fn set_flag(&mut self, f: BaselineField, on: bool) {
        self.m()
            .baseline
            .get_or_insert_with(|| Box::new(BaselineFeatures::default()))
            .flag(f, on);
    }

    /// The baseline features the engine set, if any.
    pub fn baseline(&self) -> Option<&BaselineFeatures> {
        self.0.baseline.as_deref()
    }

    /// Sets the baseline features (the engine does, before rules see the event).
    pub fn set_baseline(&mut self, f: BaselineFeatures) {
        match &mut self.m().baseline {
            // Re-annotating (a replay) reuses the allocation.
            Some(b) => **b = f,
            None => self.m().baseline = Some(Box::new(f)),
        }
    }

    /// [`Event::set_baseline`] with features already on the heap: the engine fills them
    /// there, which saves copying a few hundred bytes per event into a new box.
    pub fn set_baseline_boxed(&mut self, f: Box<BaselineFeatures>) {
        self.m().baseline = Some(f);
    }

    /// The event's category.
    pub fn category(&self) -> &Category {
        &self.0.category
    }
    /// Overrides the category (hunts over arbitrary JSON).
    pub fn set_category(&mut self, c: Category) {
        self.m().category = c;
    }

    /// The fields that are not core fields, flattened to dotted names, in input order.
    pub fn extra(&self) -> &[(Box<str>, Json)] {
        &self.0.extra
    }

    /// Sets a non-core field (replacing an earlier value of the same name).
    pub fn set_extra(&mut self, name: impl Into<Box<str>>, v: Json) {
        self.m().set_extra(name.into(), v);
    }

    /// Removes a non-core field.
    pub fn remove_extra(&mut self, name: &str) {
        self.m().extra.retain(|(k, _)| &**k != name);
    }

    /// A non-core field by dotted name.
    #[inline]
    pub fn get_extra(&self, name: &str) -> Option<&Json> {
        self.0
            .extra
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v)
    }

    /// Reads a field through a reference resolved by [`FieldRef::resolve`].
    #[inline]
    pub fn field(&self, r: &FieldRef) -> FieldValue<'_> {
        match r {
            FieldRef::Core(f) => self.core(*f),
            FieldRef::CorePath(f, path) => {
                let root = match f {
                    CoreField::Arguments => self.0.arguments.as_ref(),
                    CoreField::ToolDescriptionSha256 => self.0.tool_description_sha256.as_deref(),
                    _ => None,
                };
                match root.and_then(|v| json_path(v, path)) {
                    Some(v) => FieldValue::from_json(v),
                    None => FieldValue::Missing,
                }
            }
            FieldRef::Extra(n) => match self.get_extra(n) {
                Some(v) => FieldValue::from_json(v),
                None => FieldValue::Missing,
            },
            FieldRef::Category => FieldValue::Str(self.0.category.as_str()),
            FieldRef::Baseline(b) => {
                let Some(f) = self.0.baseline.as_ref() else {
                    return FieldValue::Missing;
                };
                match f.get(*b) {
                    None => FieldValue::Missing,
                    Some(x) if b.kind() == BaselineKind::Flag => FieldValue::Bool(x.value > 0.5),
                    Some(x) => FieldValue::Float(x.value),
                }
            }
        }
    }

    /// Reads a core field.
    #[inline]
    pub fn core(&self, f: CoreField) -> FieldValue<'_> {
        let opt = match f.kind() {
            FieldKind::Str | FieldKind::Timestamp => self.str(f).map(FieldValue::Str),
            FieldKind::Int => self.0.result_bytes.map(FieldValue::Int),
            FieldKind::Float => self.0.duration_ms.map(FieldValue::Float),
            FieldKind::Fingerprints => match f {
                CoreField::ResultFp => self.result_fp().map(FieldValue::Fingerprints),
                _ => self.args_fp().map(FieldValue::Fingerprints),
            },
            FieldKind::Json => match f {
                CoreField::Arguments => self.0.arguments.as_ref().map(FieldValue::from_json),
                _ => self
                    .0
                    .tool_description_sha256
                    .as_deref()
                    .map(FieldValue::from_json),
            },
        };
        opt.unwrap_or(FieldValue::Missing)
    }

    /// Reads any field by its dotted name (slow path: resolves the name on every call).
    pub fn get(&self, name: &str) -> FieldValue<'_> {
        match self.field(&FieldRef::resolve(name, true)) {
            FieldValue::Missing => match self.get_extra(name) {
                Some(v) => FieldValue::from_json(v),
                None => FieldValue::Missing,
            },
            v => v,
        }
    }

    /// Approximate bytes the event holds, inline and on the heap (for state-size metrics).
    ///
    /// Counts what the allocator hands out, not what the values need: a string's capacity,
    /// an array's slots, and an object's B-tree nodes (serde_json's map is a `BTreeMap`,
    /// whose every node has room for eleven entries, so a one-key `arguments` object holds
    /// about 630 bytes). An event held in several places (shared by [`Event::clone`]) is
    /// counted in full by each holder, as is a shared `tool_description_sha256` map.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let f = &*self.0;
        size_of::<Event>()
            + 2 * size_of::<usize>() // the shared pointer's counts
            + size_of::<Fields>()
            + f.text.capacity()
            + f.arguments.as_ref().map_or(0, json_heap_bytes)
            + f.tool_description_sha256.as_deref().map_or(0, |m| {
                2 * size_of::<usize>() + size_of::<Json>() + json_heap_bytes(m)
            })
            + size_of::<u64>() * f.fps.capacity()
            + size_of::<(Box<str>, Json)>() * f.extra.capacity()
            + f.extra
                .iter()
                .map(|(k, v)| k.len() + json_heap_bytes(v))
                .sum::<usize>()
            + f.baseline
                .as_ref()
                .map_or(0, |_| size_of::<BaselineFeatures>())
    }

    /// The event as a flat JSON object with dotted keys.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// Heap bytes a JSON value holds beyond its own slot (see [`Event::heap_bytes`]).
fn json_heap_bytes(v: &Json) -> usize {
    use std::mem::size_of;
    match v {
        Json::String(s) => s.capacity(),
        Json::Array(a) => {
            size_of::<Json>() * a.capacity() + a.iter().map(json_heap_bytes).sum::<usize>()
        }
        Json::Object(m) => {
            btree_node_bytes(m.len())
                + m.iter()
                    .map(|(k, v)| k.capacity() + json_heap_bytes(v))
                    .sum::<usize>()
        }
        Json::Null | Json::Bool(_) | Json::Number(_) => 0,
    }
}

/// The nodes of a `BTreeMap<String, Json>` of `n` entries, as the standard library lays
/// them out: a leaf has room for eleven keys and values beside its parent link and lengths;
/// a node above the leaves adds twelve child pointers. An empty map allocates nothing; a map
/// of up to eleven entries is one leaf. Larger maps are counted with nodes two thirds full,
/// about where keys inserted in no particular order leave them after splits.
fn btree_node_bytes(n: usize) -> usize {
    use std::mem::size_of;
    const CAPACITY: usize = 11;
    const FILLED: usize = 2 * CAPACITY / 3;
    let leaf = 2 * size_of::<usize>() + CAPACITY * (size_of::<String>() + size_of::<Json>());
    let internal = leaf + (CAPACITY + 1) * size_of::<usize>();
    match n {
        0 => 0,
        1..=CAPACITY => leaf,
        _ => {
            let leaves = n.div_ceil(FILLED);
            let mut above = 0;
            let mut level = leaves;
            while level > 1 {
                level = level.div_ceil(FILLED + 1);
                above += level;
            }
            leaves * leaf + above * internal
        }
    }
}

fn json_path<'a>(mut v: &'a Json, path: &[Box<str>]) -> Option<&'a Json> {
    for seg in path {
        v = match v {
            Json::Object(m) => m.get(&**seg)?,
            Json::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl PartialEq for Event {
    /// Events are equal when every field has the same value (however they were built).
    fn eq(&self, other: &Event) -> bool {
        CoreField::ALL
            .iter()
            .all(|&f| self.core(f) == other.core(f))
            && self.0.extra == other.0.extra
            && self.0.category == other.0.category
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_fields(s, true)
    }
}

impl Event {
    /// The event as JSON text without its content fingerprints, which the caller keeps in
    /// binary: engine checkpoints hold many events, and writing fingerprints as hex text was
    /// most of their cost.
    ///
    /// The same text serde_json writes for the event (a test holds it to that), written
    /// directly: field names are known, and a string with nothing to escape — nearly every
    /// one — is copied whole instead of byte by byte through serde_json's escaper, which
    /// was most of a checkpoint's time. Numbers, free-form values and strings that need
    /// escapes still go through serde_json.
    pub fn to_json_without_fingerprints(&self) -> String {
        fn string(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
            if crate::decode::first_special(s.as_bytes()).is_some() {
                return serde_json::to_writer(&mut *out, s);
            }
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
            Ok(())
        }
        fn write(e: &Event, out: &mut Vec<u8>) -> serde_json::Result<()> {
            out.push(b'{');
            let mut first = true;
            let mut key = |out: &mut Vec<u8>, k: &str| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                string(out, k).map(|()| out.push(b':'))
            };
            for &f in CoreField::ALL {
                match e.core(f) {
                    FieldValue::Missing | FieldValue::Fingerprints(_) => continue,
                    FieldValue::Str(v) => {
                        key(out, f.name())?;
                        string(out, v)?;
                    }
                    FieldValue::Int(v) => {
                        key(out, f.name())?;
                        serde_json::to_writer(&mut *out, &v)?;
                    }
                    FieldValue::Float(v) => {
                        key(out, f.name())?;
                        serde_json::to_writer(&mut *out, &v)?;
                    }
                    FieldValue::Bool(v) => {
                        key(out, f.name())?;
                        out.extend_from_slice(if v { b"true" } else { b"false" });
                    }
                    FieldValue::Json(v) => {
                        key(out, f.name())?;
                        serde_json::to_writer(&mut *out, v)?;
                    }
                }
            }
            for (k, v) in &e.0.extra {
                key(out, k)?;
                serde_json::to_writer(&mut *out, v)?;
            }
            out.push(b'}');
            Ok(())
        }
        // Sized once: grown from empty, a record of a kilobyte or two is reallocated and
        // copied several times.
        let mut out = Vec::with_capacity(self.heap_bytes() + 512);
        if write(self, &mut out).is_err() {
            return String::new();
        }
        // Only whole strings and serde_json's output were written: valid UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`Event::to_json_without_fingerprints`] as serde_json writes it, for its test.
    #[cfg(test)]
    fn to_json_without_fingerprints_reference(&self) -> String {
        struct NoFingerprints<'a>(&'a Event);
        impl Serialize for NoFingerprints<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize_fields(s, false)
            }
        }
        serde_json::to_string(&NoFingerprints(self)).unwrap_or_default()
    }

    fn serialize_fields<S: Serializer>(&self, s: S, fingerprints: bool) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for &f in CoreField::ALL {
            match self.core(f) {
                FieldValue::Missing => {}
                FieldValue::Fingerprints(_) if !fingerprints => {}
                FieldValue::Str(v) => m.serialize_entry(f.name(), v)?,
                FieldValue::Int(v) => m.serialize_entry(f.name(), &v)?,
                FieldValue::Float(v) => m.serialize_entry(f.name(), &v)?,
                FieldValue::Bool(v) => m.serialize_entry(f.name(), &v)?,
                FieldValue::Fingerprints(v) => {
                    let hex: Vec<String> =
                        v.iter().map(|fp| crate::fingerprint::to_hex(*fp)).collect();
                    m.serialize_entry(f.name(), &hex)?
                }
                FieldValue::Json(v) => m.serialize_entry(f.name(), v)?,
            }
        }
        for (k, v) in &self.0.extra {
            m.serialize_entry(&**k, v)?;
        }
        m.end()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

/// The size of a JSON value as compact JSON text, computed without writing it (escapes in
/// strings are not counted: a size for baselines, not a byte-exact length).
pub fn json_size(v: &Json) -> usize {
    match v {
        Json::Null => 4,
        Json::Bool(b) => 4 + usize::from(!*b),
        Json::Number(n) => n.as_u64().map_or(8, |u| (u.max(1).ilog10() + 1) as usize),
        Json::String(s) => s.len() + 2,
        Json::Array(a) => 2 + a.iter().map(json_size).sum::<usize>() + a.len().saturating_sub(1),
        Json::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 3 + json_size(v))
                .sum::<usize>()
                + m.len().saturating_sub(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_bytes_counts_the_nodes_and_slots_the_allocator_hands_out() {
        use std::mem::size_of;
        let slot = size_of::<String>() + size_of::<Json>();
        // The count models serde_json's map as a B-tree, which keeps its keys sorted; a crate
        // that turned on serde_json's `preserve_order` (an insertion-ordered hash map) would
        // change both, and this says so.
        let mut order = serde_json::Map::new();
        order.insert("b".to_owned(), Json::Null);
        order.insert("a".to_owned(), Json::Null);
        assert_eq!(order.keys().collect::<Vec<_>>(), ["a", "b"]);
        // Built apart: a copy of a shared event copies its text to its exact size.
        let event = || {
            let mut e = Event::new();
            e.set_str(CoreField::ToolName, "read_file");
            e
        };
        let bare = event();
        let mut with = event();
        with.set_arguments(serde_json::json!({ "path": "/srv/.env" }));
        // A one-key object is a whole leaf of eleven slots, plus the key's and value's text.
        let grown = with.heap_bytes() - bare.heap_bytes();
        assert!(
            grown >= 11 * slot + "path".len() + "/srv/.env".len(),
            "{grown}"
        );
        // An array is its slots, used or not.
        let mut list = Vec::with_capacity(64);
        list.push(Json::Bool(true));
        let mut map = serde_json::Map::new();
        map.insert("xs".to_owned(), Json::Array(list));
        let mut arr = event();
        arr.set_arguments(Json::Object(map));
        let grown = arr.heap_bytes() - bare.heap_bytes();
        assert!(grown >= 11 * slot + 64 * size_of::<Json>(), "{grown}");
        // Every entry of a map of any size has a slot; more entries never take fewer bytes.
        let mut last = 0;
        for n in 0..3_000 {
            let b = btree_node_bytes(n);
            assert!(b >= n * slot && b >= last, "{n} entries: {b} bytes");
            last = b;
        }
        assert_eq!(btree_node_bytes(0), 0);
    }

    /// The direct writer must give serde_json's text byte for byte: checkpoints written by
    /// either read back the same, and a string that needs an escape must get it.
    #[test]
    fn events_are_written_as_serde_json_writes_them() {
        let mut events = crate::generate::generate(&crate::generate::GenConfig {
            seed: 9,
            agents: 5,
            duration_nanos: 3_600_000_000_000,
            sessions_per_attack: 1,
            ..Default::default()
        })
        .events;
        events.truncate(300);
        let awkward = [
            "quote \" inside",
            "back\\slash",
            "new\nline and tab\t",
            "\u{1} control",
            "exactly8",
            "seven!!",
            "\"",
            "",
            "ünïcödé → ✓ and a long tail past one word",
            "a long string whose only special byte is near the end\u{1f}",
        ];
        for (i, text) in awkward.iter().enumerate() {
            let mut e = Event::new();
            e.set_str(CoreField::ToolName, text);
            e.set_str(CoreField::AgentId, format!("{text}{i}"));
            e.set_extra(*text, serde_json::json!({ "k": text, "n": [1, 2.5, -3] }));
            e.set_extra("plain", Json::String((*text).to_owned()));
            e.set_arguments(serde_json::json!({ *text: text }));
            events.push(e);
        }
        let mut ev = Event::new();
        ev.set_str(CoreField::ToolName, "t");
        ev.set_extra("nan", serde_json::json!(null));
        events.push(ev);
        for (i, e) in events.iter().enumerate() {
            let (fast, reference) = (
                e.to_json_without_fingerprints(),
                e.to_json_without_fingerprints_reference(),
            );
            assert_eq!(fast, reference, "event {i}");
            assert!(!fast.is_empty(), "event {i}");
        }
    }

    #[test]
    fn copies_share_their_fields_until_one_changes() {
        let mut a = Event::new();
        a.set_str(CoreField::ToolName, "read_file");
        a.set_arguments(serde_json::json!({"path": "/etc/passwd"}));
        let id = a.instance_id();
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.0, &b.0), "a copy shares the fields");
        assert_eq!(b.instance_id(), id, "and the id");
        b.set_str(CoreField::ToolName, "send_email");
        assert!(!Arc::ptr_eq(&a.0, &b.0), "a change copies first");
        assert_eq!(a.tool_name(), Some("read_file"));
        assert_eq!(b.tool_name(), Some("send_email"));
        assert_eq!(a.arguments(), b.arguments());
        assert_ne!(b.instance_id(), id, "the changed event is another value");
        assert_eq!(a.instance_id(), id, "the original keeps its id");
        // A change to an event nobody shares gives it a new id too.
        let mut c = Event::new();
        let before = c.instance_id();
        c.set_result_bytes(12);
        assert_ne!(c.instance_id(), before);
    }

    #[test]
    fn json_size_is_the_compact_length() {
        for text in [
            r#"{"to":["a@b.c","d@e.f"],"n":12345,"ok":true,"no":false,"x":null,"o":{"k":[1,2,{}],"e":[]}}"#,
            r#"[]"#,
            r#""plain""#,
            r#"0"#,
        ] {
            let v: Json = serde_json::from_str(text).unwrap();
            assert_eq!(
                json_size(&v),
                serde_json::to_string(&v).unwrap().len(),
                "{text}"
            );
        }
    }

    #[test]
    fn string_slots_are_distinct_and_dense() {
        let mut seen = Vec::new();
        for &f in CoreField::ALL {
            if let Some(i) = f.str_slot() {
                assert!(i < N_STR, "{f:?} slot {i}");
                assert!(!seen.contains(&i), "{f:?} shares slot {i}");
                seen.push(i);
            }
        }
        assert_eq!(seen.len(), N_STR);
    }

    #[test]
    fn fingerprints_are_kept_sorted_and_distinct() {
        let mut a = Event::new();
        a.set_fingerprints_from(CoreField::ResultFp, &mut [3, 1, 3, 2, 1]);
        a.set_fingerprints(CoreField::ArgsFp, vec![9, 7, 9]);
        assert_eq!(a.result_fp(), Some(&[1, 2, 3][..]));
        assert_eq!(a.args_fp(), Some(&[7, 9][..]));
        a.set_fingerprints_from(CoreField::ArgsFp, &mut []);
        assert_eq!(a.args_fp(), Some(&[][..]));
        assert_eq!(a.result_fp(), Some(&[1, 2, 3][..]));
    }

    #[test]
    fn fingerprint_lists_share_a_buffer_but_not_values() {
        let mut a = Event::new();
        a.set_fingerprints(CoreField::ArgsFp, vec![5, 4]);
        let shared = a.clone();
        // Set on a copy: the other keeps its lists.
        a.set_fingerprints_from(CoreField::ResultFp, &mut [8, 6]);
        a.set_fingerprints_from(CoreField::ArgsFp, &mut [1]);
        assert_eq!(
            (a.result_fp(), a.args_fp()),
            (Some(&[6, 8][..]), Some(&[1][..]))
        );
        assert_eq!(
            (shared.result_fp(), shared.args_fp()),
            (None, Some(&[4, 5][..]))
        );
        assert_eq!(a.get("audit.result_fp"), FieldValue::Fingerprints(&[6, 8]));
        // Replaced lists do not pile up in the buffer.
        for i in 0..100 {
            a.set_fingerprints(CoreField::ResultFp, vec![i, i + 1]);
        }
        assert_eq!(a.result_fp(), Some(&[99, 100][..]));
        assert_eq!(a.args_fp(), Some(&[1][..]));
        assert!(a.heap_bytes() < shared.heap_bytes() + 64);
        a.clear(CoreField::ResultFp);
        assert_eq!((a.result_fp(), a.args_fp()), (None, Some(&[1][..])));
        // Not a fingerprint field: nothing is set.
        a.set_fingerprints(CoreField::AgentId, vec![2]);
        assert_eq!(a.get("gen_ai.agent.id"), FieldValue::Missing);
    }

    #[test]
    fn names_round_trip() {
        for &f in CoreField::ALL {
            assert_eq!(CoreField::from_name(f.name()), Some(f));
        }
        // Near misses: same length and tail, a prefix, a suffix, another case, empty.
        for miss in [
            "",
            "x",
            "event.ix",
            "xvent.id",
            "event.i",
            "vent.id",
            "EVENT.ID",
            "audit.decisiom",
            "gen_ai.tool.call.arguments.url",
            "audit.tool.description_sha256x",
        ] {
            assert_eq!(CoreField::from_name(miss), None, "{miss}");
        }
    }

    #[test]
    fn categories_from_methods() {
        assert_eq!(Category::from_method("tools/call"), Category::Tool);
        assert_eq!(Category::from_method("tools/list"), Category::List);
        assert_eq!(Category::from_method("resources/read"), Category::Resource);
        assert_eq!(
            Category::from_method("resources/templates/list"),
            Category::List
        );
        assert_eq!(Category::from_method("prompts/get"), Category::Prompt);
        assert_eq!(Category::from_method("initialize"), Category::Session);
        assert_eq!(
            Category::from_method("sampling/createMessage"),
            Category::Other
        );
    }

    #[test]
    fn paths_into_arguments() {
        let mut ev = Event::new();
        ev.set_arguments(serde_json::json!({"to": ["a@b.c"], "opts": {"cc": "x"}}));
        let r = FieldRef::resolve("gen_ai.tool.call.arguments.opts.cc", true);
        assert_eq!(ev.field(&r), FieldValue::Str("x"));
        let r = FieldRef::resolve("gen_ai.tool.call.arguments.to.0", true);
        assert_eq!(ev.field(&r), FieldValue::Str("a@b.c"));
    }
}
