//! The tool catalogue: what a call *does*, so that rules work on tools they have never seen.
//!
//! Every tool call gets a capability in `audit.tool.capability`: `read`, `write`, `delete`,
//! `egress` (sends data outside: email, chat, HTTP post, payments, sharing, invitations),
//! `credential`, `exec` or `admin`. The enforcement point's own label wins when the event
//! carries one. Otherwise, in order: an exact entry for the server and tool, a glob entry for
//! the server (`create_*`), an exact or glob entry for any server, then verb heuristics on the
//! tool name (`send_*`, `delete_*`, `*_upload`, …), then the argument names (`recipients`,
//! `url`, `iban`, …). A call that nothing explains gets no capability rather than a guess.
//!
//! When a tool name carries several verbs (`read_secret`), the most consequential wins:
//! admin, delete, exec, egress, credential, write, read.
//!
//! Catalogue files are YAML:
//! ```yaml
//! servers:
//!   github:
//!     delete_repository: delete
//!     "create_*": write
//! tools:
//!   "*_webhook": egress
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::event::{CoreField, Event};

/// What a call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Changes access: roles, users, policies, collaborators.
    Admin,
    /// Destroys data.
    Delete,
    /// Runs code or commands.
    Exec,
    /// Sends data outside.
    Egress,
    /// Touches secrets or credentials.
    Credential,
    /// Changes data.
    Write,
    /// Reads data.
    Read,
}

impl Capability {
    /// The name used in events and rules.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Admin => "admin",
            Capability::Delete => "delete",
            Capability::Exec => "exec",
            Capability::Egress => "egress",
            Capability::Credential => "credential",
            Capability::Write => "write",
            Capability::Read => "read",
        }
    }
}

/// Verbs (whole tokens of a tool name) and what they mean.
const VERBS: &[(&str, Capability)] = &[
    ("grant", Capability::Admin),
    ("revoke", Capability::Admin),
    ("role", Capability::Admin),
    ("roles", Capability::Admin),
    ("permission", Capability::Admin),
    ("permissions", Capability::Admin),
    ("policy", Capability::Admin),
    ("admin", Capability::Admin),
    ("user", Capability::Admin),
    ("users", Capability::Admin),
    ("collaborator", Capability::Admin),
    ("member", Capability::Admin),
    ("acl", Capability::Admin),
    ("audit", Capability::Admin),
    ("delete", Capability::Delete),
    ("remove", Capability::Delete),
    ("drop", Capability::Delete),
    ("destroy", Capability::Delete),
    ("purge", Capability::Delete),
    ("truncate", Capability::Delete),
    ("wipe", Capability::Delete),
    ("rm", Capability::Delete),
    ("unlink", Capability::Delete),
    ("exec", Capability::Exec),
    ("execute", Capability::Exec),
    ("run", Capability::Exec),
    ("shell", Capability::Exec),
    ("command", Capability::Exec),
    ("eval", Capability::Exec),
    ("spawn", Capability::Exec),
    ("bash", Capability::Exec),
    ("terminal", Capability::Exec),
    ("send", Capability::Egress),
    ("post", Capability::Egress),
    ("publish", Capability::Egress),
    ("share", Capability::Egress),
    ("invite", Capability::Egress),
    ("upload", Capability::Egress),
    ("email", Capability::Egress),
    ("mail", Capability::Egress),
    ("notify", Capability::Egress),
    ("reply", Capability::Egress),
    ("forward", Capability::Egress),
    ("transfer", Capability::Egress),
    ("pay", Capability::Egress),
    ("payment", Capability::Egress),
    ("payout", Capability::Egress),
    ("refund", Capability::Egress),
    ("tweet", Capability::Egress),
    ("webhook", Capability::Egress),
    ("gist", Capability::Egress),
    ("dm", Capability::Egress),
    ("secret", Capability::Credential),
    ("secrets", Capability::Credential),
    ("credential", Capability::Credential),
    ("credentials", Capability::Credential),
    ("token", Capability::Credential),
    ("tokens", Capability::Credential),
    ("password", Capability::Credential),
    ("passwords", Capability::Credential),
    ("apikey", Capability::Credential),
    ("vault", Capability::Credential),
    ("ssh", Capability::Credential),
    ("write", Capability::Write),
    ("create", Capability::Write),
    ("update", Capability::Write),
    ("edit", Capability::Write),
    ("put", Capability::Write),
    ("set", Capability::Write),
    ("insert", Capability::Write),
    ("add", Capability::Write),
    ("modify", Capability::Write),
    ("commit", Capability::Write),
    ("push", Capability::Write),
    ("merge", Capability::Write),
    ("patch", Capability::Write),
    ("rename", Capability::Write),
    ("move", Capability::Write),
    ("read", Capability::Read),
    ("get", Capability::Read),
    ("list", Capability::Read),
    ("search", Capability::Read),
    ("fetch", Capability::Read),
    ("query", Capability::Read),
    ("find", Capability::Read),
    ("describe", Capability::Read),
    ("show", Capability::Read),
    ("view", Capability::Read),
    ("download", Capability::Read),
    ("lookup", Capability::Read),
    ("browse", Capability::Read),
    ("select", Capability::Read),
];

/// Argument names that mean data leaves.
const EGRESS_ARGS: &[&str] = &[
    "recipients",
    "recipient",
    "to",
    "cc",
    "bcc",
    "email",
    "channel",
    "webhook",
    "webhook_url",
    "iban",
    "account_number",
    "amount",
    "destination",
    "share_with",
    "invitee",
];

/// The built-in entries for common MCP servers.
const BUILTIN: &str = include_str!("../catalogue.yaml");

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    #[serde(default)]
    servers: HashMap<String, HashMap<String, Capability>>,
    #[serde(default)]
    tools: HashMap<String, Capability>,
}

/// A tool catalogue.
#[derive(Default, Clone)]
pub struct Catalogue {
    exact: HashMap<(String, String), Capability>,
    globs: HashMap<String, Vec<(String, Capability)>>,
    any_exact: HashMap<String, Capability>,
    any_globs: Vec<(String, Capability)>,
}

fn is_glob(s: &str) -> bool {
    s.contains('*') || s.contains('?')
}

fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(si) = star {
            i = si + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

impl Catalogue {
    /// The built-in catalogue.
    pub fn builtin() -> Catalogue {
        Catalogue::from_yaml(BUILTIN).unwrap_or_default()
    }

    /// Parses catalogue YAML.
    pub fn from_yaml(text: &str) -> Result<Catalogue, String> {
        let raw: RawCatalogue = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Catalogue::default();
        c.add(raw);
        Ok(c)
    }

    /// The built-in catalogue extended (and overridden) by a file.
    pub fn load(path: &Path) -> Result<Catalogue, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let raw: RawCatalogue =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c = Catalogue::builtin();
        c.add(raw);
        Ok(c)
    }

    fn add(&mut self, raw: RawCatalogue) {
        for (server, tools) in raw.servers {
            for (tool, cap) in tools {
                if is_glob(&tool) {
                    let list = self.globs.entry(server.clone()).or_default();
                    list.retain(|(p, _)| *p != tool);
                    list.push((tool, cap));
                } else {
                    self.exact.insert((server.clone(), tool), cap);
                }
            }
        }
        for (tool, cap) in raw.tools {
            if is_glob(&tool) {
                self.any_globs.retain(|(p, _)| *p != tool);
                self.any_globs.push((tool, cap));
            } else {
                self.any_exact.insert(tool, cap);
            }
        }
    }

    /// The capability of a call to `tool` on `server` (from the catalogue and the name alone).
    pub fn lookup(&self, server: Option<&str>, tool: &str) -> Option<Capability> {
        if let Some(server) = server {
            if let Some(c) = self.exact.get(&(server.to_owned(), tool.to_owned())) {
                return Some(*c);
            }
            if let Some(list) = self.globs.get(server) {
                if let Some((_, c)) = list.iter().find(|(p, _)| glob_match(p, tool)) {
                    return Some(*c);
                }
            }
        }
        if let Some(c) = self.any_exact.get(tool) {
            return Some(*c);
        }
        if let Some((_, c)) = self.any_globs.iter().find(|(p, _)| glob_match(p, tool)) {
            return Some(*c);
        }
        verbs(tool)
    }

    /// The capability of an event's call: the catalogue and tool name, else its argument
    /// names.
    pub fn classify(&self, ev: &Event) -> Option<Capability> {
        let tool = ev.tool_name()?;
        if let Some(c) = self.lookup(ev.str(CoreField::Target), tool) {
            return Some(c);
        }
        let args = ev.arguments()?.as_object()?;
        args.keys()
            .any(|k| EGRESS_ARGS.contains(&k.to_ascii_lowercase().as_str()))
            .then_some(Capability::Egress)
    }
}

/// The most consequential verb among the tokens of a tool name (`send_email`, `sendEmail`,
/// `file-upload` all tokenise).
pub fn verbs(tool: &str) -> Option<Capability> {
    let mut best: Option<Capability> = None;
    let mut token = String::new();
    let mut flush = |token: &mut String| {
        if !token.is_empty() {
            if let Some((_, c)) = VERBS.iter().find(|(v, _)| *v == token.as_str()) {
                best = Some(best.map_or(*c, |b| b.min(*c)));
            }
            token.clear();
        }
    };
    let mut prev_lower = false;
    for ch in tool.chars() {
        if ch == '_' || ch == '-' || ch == '.' || ch == '/' || ch == ' ' {
            flush(&mut token);
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower {
            flush(&mut token);
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        token.extend(ch.to_lowercase());
    }
    flush(&mut token);
    best
}

static INSTALLED: OnceLock<Catalogue> = OnceLock::new();

/// Installs the process-wide catalogue (once, at start-up; later calls are ignored).
pub fn install(c: Catalogue) {
    let _ = INSTALLED.set(c);
}

/// The process-wide catalogue (the built-in one unless another was installed).
pub fn installed() -> &'static Catalogue {
    INSTALLED.get_or_init(Catalogue::builtin)
}

/// Capabilities by (server, tool), as the catalogue and tool name give them.
type Cache = HashMap<(Box<str>, Box<str>), Option<Capability>>;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
}

/// Cap on cached (server, tool) pairs per thread.
const CACHE_CAP: usize = 16_384;

/// Sets `audit.tool.capability` on a tool call that has none, from the installed catalogue.
/// Lookups by (server, tool) are cached per thread: tool names repeat.
pub fn label(ev: &mut Event) {
    if ev.str(CoreField::Capability).is_some() {
        return;
    }
    let Some(tool) = ev.tool_name() else { return };
    let server = ev.str(CoreField::Target).unwrap_or("");
    let cached = CACHE.with(|c| c.borrow().get(&(server.into(), tool.into())).copied());
    let cap = match cached {
        Some(c) => c,
        None => {
            let by_name = installed().lookup(ev.str(CoreField::Target), tool);
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= CACHE_CAP {
                    c.clear();
                }
                c.insert((server.into(), tool.into()), by_name);
            });
            by_name
        }
    };
    let cap = cap.or_else(|| installed().classify(ev));
    if let Some(c) = cap {
        ev.set_str(CoreField::Capability, c.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_pick_the_most_consequential() {
        assert_eq!(verbs("send_email"), Some(Capability::Egress));
        assert_eq!(verbs("sendEmail"), Some(Capability::Egress));
        assert_eq!(verbs("file-upload"), Some(Capability::Egress));
        assert_eq!(verbs("read_secret"), Some(Capability::Credential));
        assert_eq!(verbs("create_user"), Some(Capability::Admin));
        assert_eq!(verbs("delete_file"), Some(Capability::Delete));
        assert_eq!(verbs("get_weather"), Some(Capability::Read));
        assert_eq!(verbs("frobnicate"), None);
    }

    #[test]
    fn catalogue_beats_heuristics_and_arguments_are_the_fallback() {
        let c = Catalogue::builtin();
        assert_eq!(
            c.lookup(Some("postgres"), "execute"),
            Some(Capability::Write)
        );
        assert_eq!(
            c.lookup(Some("github"), "create_gist"),
            Some(Capability::Egress)
        );
        assert_eq!(
            c.lookup(Some("elsewhere"), "execute"),
            Some(Capability::Exec)
        );
        let c = Catalogue::from_yaml(
            "servers:\n  acme:\n    \"sync_*\": egress\ntools:\n  frobnicate: delete\n",
        )
        .unwrap();
        assert_eq!(c.lookup(Some("acme"), "sync_all"), Some(Capability::Egress));
        assert_eq!(c.lookup(None, "frobnicate"), Some(Capability::Delete));
        let ev = crate::decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.name":"zap","gen_ai.tool.call.arguments":{"recipients":["x@y.z"]}}"#).unwrap();
        assert_eq!(c.classify(&ev), Some(Capability::Egress));
        assert!(Catalogue::from_yaml("servers:\n  a:\n    b: teleport\n").is_err());
    }

    #[test]
    fn the_enforcement_points_label_wins() {
        let ev = crate::decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.name":"send_email","audit.tool.capability":"read"}"#).unwrap();
        assert_eq!(ev.str(CoreField::Capability), Some("read"));
        let ev = crate::decode_native(
            br#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.name":"send_email"}"#,
        )
        .unwrap();
        assert_eq!(ev.str(CoreField::Capability), Some("egress"));
    }
}
