//! Playbooks: what to do about an alert, as an ordered list of steps.
//!
//! A playbook file (YAML, one or more documents) binds itself to alerts by rule id (globs),
//! tag or minimum severity — and a rule may name its playbook with `playbook:` — and lists
//! steps, each an action with its target (a name from the configured allow-list: no URL ever
//! comes from a playbook or an event), parameters templated from the alert (`{{audit.token.jti}}`,
//! `{{alert.id}}`), `continue_on_error`, and `require_approval` gates that hold the following
//! steps until an analyst decides.
//!
//! Everything is checked at load, like rules: an unknown action, a missing target, an unknown
//! parameter, a template naming a field that no alert can have — each an error with the file,
//! line and column and a suggestion where one is close.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon_detect::Alert;
use cordon_ingest::CoreField;
use cordon_rules::Severity;
use serde::Deserialize;

/// The built-in playbooks (`rules/playbooks/`).
pub const BUILTIN: &[(&str, &str)] = &[(
    "rules/playbooks/contain.yaml",
    include_str!("../../rules/playbooks/contain.yaml"),
)];

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Revoke the agent's token at the identity provider (RFC 7009, or an IdP webhook).
    RevokeToken,
    /// Tell the gateway to deny calls to an MCP server.
    IsolateServer,
    /// Tell the gateway to deny calls by an agent (and its principal).
    QuarantineAgent,
    /// Post the alert summary to a chat or ticketing webhook.
    Notify,
    /// Hold the following steps until an analyst approves (or denies, or it expires).
    RequireApproval,
}

impl ActionKind {
    /// Every action with its name.
    pub const ALL: &'static [(&'static str, ActionKind)] = &[
        ("revoke_token", ActionKind::RevokeToken),
        ("isolate_server", ActionKind::IsolateServer),
        ("quarantine_agent", ActionKind::QuarantineAgent),
        ("notify", ActionKind::Notify),
        ("require_approval", ActionKind::RequireApproval),
    ];

    /// The action's name.
    pub fn name(self) -> &'static str {
        ActionKind::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }

    /// Parameters the action takes, with their defaults (templates).
    pub fn params(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            ActionKind::RevokeToken => &[
                ("token", Some("{{audit.token.jti}}")),
                ("token_type_hint", Some("access_token")),
                ("subject", Some("{{audit.principal.sub}}")),
            ],
            ActionKind::IsolateServer => &[
                ("server", Some("{{audit.target}}")),
                ("ttl", Some("1h")),
                ("reason", Some("{{alert.title}}")),
            ],
            ActionKind::QuarantineAgent => &[
                ("agent", Some("{{gen_ai.agent.id}}")),
                ("principal", Some("{{audit.principal.sub}}")),
                ("ttl", Some("1h")),
                ("reason", Some("{{alert.title}}")),
            ],
            ActionKind::Notify => &[(
                "text",
                Some("[{{alert.severity}}] {{alert.title}}: agent {{gen_ai.agent.id}} ({{alert.id}})"),
            )],
            ActionKind::RequireApproval => &[("expires", Some("1h"))],
        }
    }

    /// Whether the action calls a target.
    pub fn needs_target(self) -> bool {
        self != ActionKind::RequireApproval
    }
}

/// One step of a playbook.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What it does.
    pub action: ActionKind,
    /// The configured target it calls.
    pub target: Option<String>,
    /// Parameters, templated (defaults filled in).
    pub params: BTreeMap<String, String>,
    /// Whether the playbook goes on when this step fails.
    pub continue_on_error: bool,
    /// Line of the step in its file.
    pub line: u32,
}

/// Which alerts a playbook handles (any of the conditions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Binding {
    /// Rule ids or globs (`cordon.mcp.chain.*`).
    pub rules: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Alerts of this severity or above.
    pub min_severity: Option<Severity>,
}

/// A playbook.
#[derive(Clone, Debug, PartialEq)]
pub struct Playbook {
    /// Unique id (what rules name in `playbook:`).
    pub id: String,
    /// Short title.
    pub title: String,
    /// Which alerts it handles besides those whose rule names it.
    pub on: Binding,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Where it was defined.
    pub file: PathBuf,
    /// Line of its `id:`.
    pub line: u32,
}

/// An error in a playbook file, with where.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaybookError {
    /// The file.
    pub file: PathBuf,
    /// Line (1-based; 0 when the file itself is the problem).
    pub line: u32,
    /// Column (1-based).
    pub col: u32,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for PlaybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every error of a set of playbook files.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaybookErrors(pub Vec<PlaybookError>);

impl fmt::Display for PlaybookErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlaybookErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    on: RawBinding,
    steps: Vec<RawStep>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    min_severity: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    continue_on_error: bool,
}

/// Names a template may use besides the event schema's core fields.
pub const ALERT_VARS: &[&str] = &[
    "alert.id",
    "alert.rule_id",
    "alert.title",
    "alert.severity",
    "alert.message",
    "alert.playbook",
];

/// The `{{name}}` references in a template.
fn references(t: &str) -> impl Iterator<Item = &str> {
    t.split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(name, _)| name.trim()))
}

/// Whether a template name is known.
fn known_var(name: &str) -> bool {
    ALERT_VARS.contains(&name) || CoreField::from_name(name).is_some()
}

/// Line and column (1-based) of the first occurrence of `needle` at or after line `from`.
fn find(text: &str, needle: &str, from: u32) -> Option<(u32, u32)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1) as usize)
        .find_map(|(i, l)| l.find(needle).map(|c| (i as u32 + 1, c as u32 + 1)))
}

/// Start lines of the YAML documents of a file (1-based).
fn document_lines(text: &str) -> Vec<u32> {
    let mut out = vec![1];
    for (i, l) in text.lines().enumerate() {
        if l.trim_end() == "---" && i > 0 {
            out.push(i as u32 + 2);
        }
    }
    out
}

fn closest<'a>(word: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    options
        .map(|o| (strsim::levenshtein(word, o), o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses the playbooks of one file's text.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Playbook>, PlaybookErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let starts = document_lines(text);
    let err = |line: u32, col: u32, message: String| PlaybookError {
        file: file.to_path_buf(),
        line,
        col,
        message,
    };
    for (doc_i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let base = starts.get(doc_i).copied().unwrap_or(1);
        let raw = match RawPlaybook::deserialize(doc) {
            Ok(r) => r,
            Err(e) => {
                let (line, col) = e
                    .location()
                    .map_or((base, 1), |l| (l.line() as u32, l.column() as u32));
                errors.push(err(line, col, format!("not a playbook: {e}")));
                continue;
            }
        };
        let line = find(text, "id:", base).map_or(base, |(l, _)| l);
        let mut steps = Vec::new();
        let mut at = line;
        let min_severity = match raw
            .on
            .min_severity
            .as_deref()
            .map(|s| (s, Severity::parse(s)))
        {
            None => None,
            Some((_, Some(s))) => Some(s),
            Some((s, None)) => {
                let (l, c) = find(text, "min_severity:", base).unwrap_or((line, 1));
                errors.push(err(
                    l,
                    c,
                    format!("unknown severity {s:?}; expected informational, low, medium, high or critical"),
                ));
                None
            }
        };
        if raw.steps.is_empty() {
            errors.push(err(line, 1, format!("playbook {:?} has no steps", raw.id)));
        }
        for (i, s) in raw.steps.into_iter().enumerate() {
            let (sl, sc) = find(text, "action:", at + 1).unwrap_or((at, 1));
            at = sl;
            let Some(action) = ActionKind::ALL
                .iter()
                .find(|(n, _)| *n == s.action)
                .map(|(_, k)| *k)
            else {
                let hint = closest(&s.action, ActionKind::ALL.iter().map(|(n, _)| *n))
                    .map(|h| format!("; did you mean {h}?"))
                    .unwrap_or_default();
                let names: Vec<&str> = ActionKind::ALL.iter().map(|(n, _)| *n).collect();
                errors.push(err(
                    sl,
                    sc,
                    format!(
                        "step {}: unknown action {:?}{hint} (actions: {})",
                        i + 1,
                        s.action,
                        names.join(", ")
                    ),
                ));
                continue;
            };
            if action.needs_target() && s.target.is_none() {
                errors.push(err(
                    sl,
                    sc,
                    format!(
                        "step {}: {} needs a target (a name under [response.targets] in the configuration)",
                        i + 1,
                        action.name()
                    ),
                ));
            }
            let mut params = BTreeMap::new();
            for (k, v) in &s.params {
                let allowed = action.params();
                if !allowed.iter().any(|(n, _)| n == k) {
                    let hint = closest(k, allowed.iter().map(|(n, _)| *n))
                        .map(|h| format!("; did you mean {h}?"))
                        .unwrap_or_default();
                    let (l, c) = find(text, &format!("{k}:"), sl).unwrap_or((sl, sc));
                    errors.push(err(
                        l,
                        c,
                        format!(
                            "step {}: {} has no parameter {k:?}{hint}",
                            i + 1,
                            action.name()
                        ),
                    ));
                    continue;
                }
                let Some(v) = scalar(v) else {
                    let (l, c) = find(text, &format!("{k}:"), sl).unwrap_or((sl, sc));
                    errors.push(err(
                        l,
                        c,
                        format!(
                            "step {}: parameter {k:?} must be a string, number or boolean",
                            i + 1
                        ),
                    ));
                    continue;
                };
                params.insert(k.clone(), v);
            }
            for (k, default) in action.params() {
                if let (false, Some(d)) = (params.contains_key(*k), default) {
                    params.insert((*k).to_owned(), (*d).to_owned());
                }
            }
            for (k, v) in &params {
                for name in references(v) {
                    if !known_var(name) {
                        let hint = closest(
                            name,
                            ALERT_VARS
                                .iter()
                                .copied()
                                .chain(CoreField::ALL.iter().map(|f| f.name())),
                        )
                        .map(|h| format!("; did you mean {h}?"))
                        .unwrap_or_default();
                        let (l, c) = find(text, &format!("{{{{{name}"), sl)
                            .or_else(|| find(text, name, sl))
                            .unwrap_or((sl, sc));
                        errors.push(err(
                            l,
                            c,
                            format!(
                                "step {}: parameter {k:?} names unknown field {name:?}{hint}",
                                i + 1
                            ),
                        ));
                    }
                }
                if matches!(k.as_str(), "ttl" | "expires") && references(v).next().is_none() {
                    if let Err(e) = humantime::parse_duration(v) {
                        let (l, c) = find(text, &format!("{k}:"), sl).unwrap_or((sl, sc));
                        errors.push(err(
                            l,
                            c,
                            format!(
                                "step {}: {k} {v:?} is not a duration like 30m or 1h ({e})",
                                i + 1
                            ),
                        ));
                    }
                }
            }
            steps.push(Step {
                action,
                target: s.target,
                params,
                continue_on_error: s.continue_on_error,
                line: sl,
            });
        }
        let _ = raw.description;
        out.push(Playbook {
            title: raw.title.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            on: Binding {
                rules: raw.on.rules,
                tags: raw.on.tags,
                min_severity,
            },
            steps,
            file: file.to_path_buf(),
            line,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PlaybookErrors(errors))
    }
}

/// A set of playbooks.
#[derive(Clone, Debug, Default)]
pub struct Playbooks {
    /// The playbooks, in load order.
    pub all: Vec<Playbook>,
}

impl Playbooks {
    /// The built-in playbooks.
    pub fn builtin() -> Result<Playbooks, PlaybookErrors> {
        let mut all = Vec::new();
        for (name, text) in BUILTIN {
            all.extend(parse(Path::new(name), text)?);
        }
        Playbooks::checked(all)
    }

    /// Loads playbook files or directories (their `.yaml`/`.yml` files, sorted).
    pub fn load(paths: &[PathBuf]) -> Result<Playbooks, PlaybookErrors> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| io_error(p, &e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                entries.sort();
                files.extend(entries);
            } else {
                files.push(p.clone());
            }
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| io_error(&f, &e))?;
            match parse(&f, &text) {
                Ok(p) => all.extend(p),
                Err(e) => errors.extend(e.0),
            }
        }
        if !errors.is_empty() {
            return Err(PlaybookErrors(errors));
        }
        Playbooks::checked(all)
    }

    fn checked(all: Vec<Playbook>) -> Result<Playbooks, PlaybookErrors> {
        let mut errors = Vec::new();
        for (i, p) in all.iter().enumerate() {
            if let Some(first) = all[..i].iter().find(|q| q.id == p.id) {
                errors.push(PlaybookError {
                    file: p.file.clone(),
                    line: p.line,
                    col: 1,
                    message: format!(
                        "playbook id {:?} already defined at {}:{}",
                        p.id,
                        first.file.display(),
                        first.line
                    ),
                });
            }
        }
        if errors.is_empty() {
            Ok(Playbooks { all })
        } else {
            Err(PlaybookErrors(errors))
        }
    }

    /// Checks that every target a step names is configured; returns the errors.
    pub fn check_targets(&self, known: &[&str]) -> Result<(), PlaybookErrors> {
        let mut errors = Vec::new();
        for p in &self.all {
            for s in &p.steps {
                if let Some(t) = &s.target {
                    if !known.contains(&t.as_str()) {
                        let hint = closest(t, known.iter().copied())
                            .map(|h| format!("; did you mean {h}?"))
                            .unwrap_or_default();
                        errors.push(PlaybookError {
                            file: p.file.clone(),
                            line: s.line,
                            col: 1,
                            message: format!(
                                "playbook {}: target {t:?} is not configured{hint} (configured: {})",
                                p.id,
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PlaybookErrors(errors))
        }
    }

    /// The playbooks an alert triggers: the one its rule names, then every playbook bound to
    /// its rule id, a tag of it, or its severity — each once.
    pub fn for_alert(&self, alert: &Alert) -> Vec<&Playbook> {
        let mut out: Vec<&Playbook> = Vec::new();
        if let Some(named) = &alert.playbook {
            if let Some(p) = self.all.iter().find(|p| &p.id == named) {
                out.push(p);
            }
        }
        for p in &self.all {
            if out.iter().any(|q| q.id == p.id) {
                continue;
            }
            let by_rule =
                p.on.rules.iter().any(|g| {
                    cordon_rules::wildcard::Wildcard::new(g, false).matches(&alert.rule_id)
                });
            let by_tag = p.on.tags.iter().any(|t| alert.tags.contains(t));
            let by_sev = p.on.min_severity.is_some_and(|s| alert.severity >= s);
            if by_rule || by_tag || by_sev {
                out.push(p);
            }
        }
        out
    }
}

fn io_error(p: &Path, e: &std::io::Error) -> PlaybookErrors {
    PlaybookErrors(vec![PlaybookError {
        file: p.to_path_buf(),
        line: 0,
        col: 0,
        message: e.to_string(),
    }])
}

/// The value of a template name for an alert: `alert.*`, else the field on the most recent
/// evidence event that has it.
pub fn var(alert: &Alert, name: &str) -> Option<String> {
    match name {
        "alert.id" => return Some(alert.id.clone()),
        "alert.rule_id" => return Some(alert.rule_id.clone()),
        "alert.title" => return Some(alert.title.clone()),
        "alert.severity" => return Some(alert.severity.name().to_owned()),
        "alert.message" => return Some(alert.message.clone()),
        "alert.playbook" => return alert.playbook.clone(),
        _ => {}
    }
    let f = CoreField::from_name(name)?;
    alert.events.iter().rev().find_map(|e| match e.core(f) {
        cordon_ingest::FieldValue::Str(s) => Some(s.to_owned()),
        cordon_ingest::FieldValue::Int(i) => Some(i.to_string()),
        cordon_ingest::FieldValue::Float(x) => Some(x.to_string()),
        cordon_ingest::FieldValue::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// Renders a template for an alert. A name with no value on the alert is an error that names
/// it (the step fails rather than sending a half-empty request).
pub fn render(template: &str, alert: &Alert) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = var(alert, name).ok_or_else(|| format!("the alert has no {name}"))?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a `ttl`/`expires` parameter.
pub fn duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{v:?} is not a duration ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_playbooks_load() {
        let p = Playbooks::builtin().unwrap();
        assert!(!p.all.is_empty());
        for pb in &p.all {
            assert!(!pb.steps.is_empty());
        }
    }

    #[test]
    fn bad_playbooks_name_where() {
        let text = "id: p1\nsteps:\n  - action: revoke_tokn\n    target: idp\n  - action: isolate_server\n  - action: notify\n    target: chat\n    params:\n      text: \"{{gen_ai.agent.idd}} did it\"\n      colour: red\n  - action: require_approval\n    params: {expires: soon}\n";
        let e = parse(Path::new("p.yaml"), text).unwrap_err();
        let msgs: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert!(
            msgs[0].starts_with(
                "p.yaml:3:5: step 1: unknown action \"revoke_tokn\"; did you mean revoke_token?"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("p.yaml:5:5: step 2: isolate_server needs a target"),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("p.yaml:10:7: step 3: notify has no parameter \"colour\"")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("p.yaml:9:14: step 3: parameter \"text\" names unknown field \"gen_ai.agent.idd\"; did you mean gen_ai.agent.id?")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("p.yaml:12:")
                    && m.contains("expires \"soon\" is not a duration")),
            "{msgs:?}"
        );
        let e = parse(Path::new("q.yaml"), "id: q\nsteps: []\nextra: 1\n").unwrap_err();
        assert!(e.0[0].message.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn targets_are_checked_against_the_configuration() {
        let p = Playbooks {
            all: parse(
                Path::new("p.yaml"),
                "id: p\nsteps:\n  - action: notify\n    target: chta\n",
            )
            .unwrap(),
        };
        let e = p.check_targets(&["chat", "idp"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("target \"chta\" is not configured; did you mean chat?"),
            "{e}"
        );
        assert!(p.check_targets(&["chta"]).is_ok());
    }
}
