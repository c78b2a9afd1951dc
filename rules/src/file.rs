//! Rule files: YAML documents holding rules, named lists and macros.
//!
//! A file may hold several documents separated by `---`. A document with an `id` is a rule; a
//! document with `lists:` and/or `macros:` adds to the library shared by every rule of the set
//! (as in Falco, so that `egress_allowed_domains` is edited in one place). Loading collects
//! every error of every file before giving up, each with its file, line and column: the line
//! and column of a query error are those of the query text inside the YAML file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon_ingest::{decode_native, CoreField, Event, FieldRef};
use serde::Deserialize;

use crate::ast::{Expr, Literal, Span};
use crate::compile::{Compiled, CompiledQuery, Compiler, EventMatcher, Library, MacroDef};
use crate::error::{QueryError, RuleError, RuleErrors};
use crate::eval::Pred;
use crate::parser::{parse_duration, parse_expr, parse_query};

/// The built-in MCP rule pack (`rules/packs/`), embedded in the binary.
pub const BUILTIN: &[(&str, &str)] = &[
    ("packs/library.yaml", include_str!("../packs/library.yaml")),
    (
        "packs/mcp_filters.yaml",
        include_str!("../packs/mcp_filters.yaml"),
    ),
    (
        "packs/mcp_chains.yaml",
        include_str!("../packs/mcp_chains.yaml"),
    ),
    (
        "packs/mcp_baselines.yaml",
        include_str!("../packs/mcp_baselines.yaml"),
    ),
    (
        "packs/response.yaml",
        include_str!("../packs/response.yaml"),
    ),
];

/// Alert severity (OCSF `severity_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// 1
    Informational,
    /// 2
    Low,
    /// 3
    Medium,
    /// 4
    High,
    /// 5
    Critical,
}

impl Severity {
    /// OCSF `severity_id`.
    pub fn ocsf_id(self) -> u8 {
        self as u8 + 1
    }
    /// OCSF `severity` caption.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        }
    }
    /// Parses a severity name (case-insensitive; `info` too).
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_lowercase().as_str() {
            "informational" | "info" => Severity::Informational,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// Per-rule alert suppression: one alert per key value per window.
#[derive(Clone, Debug)]
pub struct Suppress {
    /// The fields whose values form the key.
    pub key: Vec<FieldRef>,
    /// The window, in event time.
    pub window: Duration,
}

/// An exception: matching events do not alert (counted apart).
#[derive(Clone, Debug)]
pub struct Exception {
    /// Its name.
    pub name: String,
    /// The condition.
    pub pred: Pred,
}

/// A rule's inline tests. Each case is a list of events: one event for a filter rule (written
/// as a mapping), or a scenario in order for a stateful rule (written as a list of mappings;
/// `@timestamp` defaults to one second apart, `event.id` to `t0000`, `t0001`, …).
#[derive(Clone, Debug, Default)]
pub struct RuleTests {
    /// Cases that must raise an alert.
    pub should_match: Vec<Vec<Event>>,
    /// Cases that must not.
    pub should_not_match: Vec<Vec<Event>>,
}

/// Where a rule was defined.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// The line of its first key.
    pub line: u32,
}

/// A loaded, compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// Version (bumped when the logic changes).
    pub version: u32,
    /// Short title.
    pub title: String,
    /// What it detects and why it matters.
    pub description: String,
    /// Severity.
    pub severity: Severity,
    /// Tags (OWASP Agentic Top 10, MITRE ATLAS).
    pub tags: Vec<String>,
    /// The playbook to run on an alert.
    pub playbook: Option<String>,
    /// Suppression.
    pub suppress: Option<Suppress>,
    /// The query as written.
    pub query_text: String,
    /// The compiled query.
    pub query: Compiled,
    /// Exceptions.
    pub exceptions: Vec<Exception>,
    /// Inline tests.
    pub tests: RuleTests,
    /// Where it was defined.
    pub origin: Origin,
}

/// Outcome of a rule against one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The query does not match.
    NoMatch,
    /// The query matches, but an exception applies.
    Excepted,
    /// The query matches.
    Match,
}

impl Rule {
    /// A rule for an ad-hoc query (`cordon hunt`): no suppression, exceptions or tests.
    pub fn adhoc(query_text: &str, query: Compiled) -> Rule {
        Rule {
            id: "hunt".into(),
            version: 1,
            title: "hunt".into(),
            description: String::new(),
            severity: Severity::Informational,
            tags: Vec::new(),
            playbook: None,
            suppress: None,
            query_text: query_text.to_owned(),
            query,
            exceptions: Vec::new(),
            tests: RuleTests::default(),
            origin: Origin {
                file: PathBuf::from("<hunt>"),
                line: 0,
            },
        }
    }

    /// The single-event matcher of a filter rule (`None` for stateful rules).
    pub fn event_matcher(&self) -> Option<&EventMatcher> {
        match &self.query.query {
            CompiledQuery::Event(m) => Some(m),
            _ => None,
        }
    }

    /// Every single-event condition the rule tests events with: a filter rule's query; a
    /// sequence's steps (`![…]` ones included) and its `until`; a sample's steps; a
    /// threshold's counted events. An event that satisfies none of them cannot change what the
    /// rule holds, so an index may keep it from the rule.
    pub fn event_matchers(&self) -> Vec<&EventMatcher> {
        match &self.query.query {
            CompiledQuery::Event(m) => vec![m],
            CompiledQuery::Sequence(s) => s
                .steps
                .iter()
                .chain(&s.until)
                .map(|st| &st.matcher)
                .collect(),
            CompiledQuery::Sample(s) => s.steps.iter().map(|st| &st.matcher).collect(),
            CompiledQuery::Threshold(t) => vec![&t.step.matcher],
        }
    }

    /// Whether the rule spans several events (sequence, sample, threshold).
    pub fn is_stateful(&self) -> bool {
        self.event_matcher().is_none()
    }

    /// Whether an exception applies to the event.
    pub fn excepted(&self, ev: &Event) -> bool {
        self.exceptions.iter().any(|e| e.pred.matches(ev))
    }

    /// Evaluates a filter rule on one event (a stateful rule never matches one event alone).
    pub fn check(&self, ev: &Event) -> Verdict {
        match self.event_matcher() {
            Some(m) if m.matches(ev) => {
                if self.excepted(ev) {
                    Verdict::Excepted
                } else {
                    Verdict::Match
                }
            }
            _ => Verdict::NoMatch,
        }
    }

    /// Runs the inline tests with `alerts(rule, events)` telling whether a case raises an
    /// alert; returns one message per failure.
    pub fn run_tests_with(&self, alerts: &dyn Fn(&Rule, &[Event]) -> bool) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, case) in self.tests.should_match.iter().enumerate() {
            if !alerts(self, case) {
                failures.push(format!(
                    "{}: tests.match[{i}] should match but does not",
                    self.id
                ));
            }
        }
        for (i, case) in self.tests.should_not_match.iter().enumerate() {
            if alerts(self, case) {
                failures.push(format!(
                    "{}: tests.no_match[{i}] should not match but does",
                    self.id
                ));
            }
        }
        failures
    }

    /// Whether the rule needs the engine to be evaluated: it spans several events, or reads
    /// baseline features (set by the engine's per-agent profiles).
    pub fn needs_engine(&self) -> bool {
        match self.event_matcher() {
            None => true,
            Some(m) => m
                .pred
                .reads_field(&|f| matches!(f, cordon_ingest::FieldRef::Baseline(_))),
        }
    }

    /// Runs the inline tests of a filter rule; the tests of a rule that needs the engine
    /// ([`Rule::needs_engine`]) run with `cordon_detect::run_rule_tests` and are skipped here.
    pub fn run_tests(&self) -> Vec<String> {
        if self.needs_engine() {
            return Vec::new();
        }
        self.run_tests_with(&|r, case| case.iter().any(|e| r.check(e) == Verdict::Match))
    }

    /// Number of test cases.
    pub fn test_cases(&self) -> usize {
        self.tests.should_match.len() + self.tests.should_not_match.len()
    }
}

/// A loaded rule set with its library.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    /// The rules, in load order.
    pub rules: Vec<Rule>,
    /// Named lists and macros.
    pub library: Library,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    id: Option<String>,
    version: Option<u32>,
    title: Option<String>,
    description: Option<String>,
    severity: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    references: Vec<String>,
    author: Option<String>,
    enabled: Option<bool>,
    query: Option<String>,
    playbook: Option<String>,
    suppress: Option<RawSuppress>,
    #[serde(default)]
    exceptions: Vec<RawException>,
    tests: Option<RawTests>,
    #[serde(default)]
    lists: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    macros: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuppress {
    key: Vec<String>,
    window: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    name: String,
    condition: Option<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTests {
    #[serde(default, rename = "match")]
    should_match: Vec<serde_json::Value>,
    #[serde(default)]
    no_match: Vec<serde_json::Value>,
}

/// One source text of a rule set.
struct Source {
    file: PathBuf,
    text: String,
    builtin: bool,
}

/// A YAML document of a source, with its first line in the file.
struct Doc<'a> {
    file: &'a Path,
    text: &'a str,
    first_line: u32,
    builtin: bool,
}

impl Doc<'_> {
    fn err(
        &self,
        line: u32,
        col: u32,
        item: Option<&str>,
        message: impl Into<String>,
    ) -> RuleError {
        RuleError {
            file: self.file.to_owned(),
            line,
            col,
            item: item.map(str::to_owned),
            message: message.into(),
            help: None,
        }
    }

    /// Where a top-level key's value starts, and how query positions map into the file.
    fn locate_key(&self, key: &str) -> Option<TextMap> {
        locate(self.text, key, 0).map(|m| m.offset(self.first_line - 1))
    }

    /// Where a nested key (`macros:` → `name:`) starts.
    fn locate_nested(&self, parent: &str, key: &str) -> Option<TextMap> {
        let start = self
            .text
            .lines()
            .position(|l| l.trim_end() == format!("{parent}:"))?;
        let rest: String = self
            .text
            .lines()
            .skip(start + 1)
            .take_while(|l| {
                l.is_empty() || l.starts_with(' ') || l.starts_with('\t') || l.starts_with('#')
            })
            .collect::<Vec<_>>()
            .join("\n");
        let indent = rest
            .lines()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or(2);
        locate(&rest, key, indent).map(|m| m.offset(self.first_line + start as u32))
    }

    fn query_error(&self, map: Option<&TextMap>, item: &str, e: QueryError) -> RuleError {
        let (line, col) = match map {
            Some(m) => m.map(e.span),
            None => (0, 0),
        };
        RuleError {
            file: self.file.to_owned(),
            line,
            col,
            item: Some(item.to_owned()),
            message: e.message,
            help: e.help,
        }
    }
}

/// Maps positions in a YAML scalar back to the file.
#[derive(Clone, Copy, Debug)]
struct TextMap {
    /// 1-based file line of the scalar's first line.
    line: u32,
    /// 1-based file column of the scalar's first character on its first line.
    first_col: u32,
    /// For block scalars: the indentation of the following lines (0-based columns).
    block_indent: Option<u32>,
}

impl TextMap {
    fn offset(mut self, lines: u32) -> TextMap {
        self.line += lines;
        self
    }
    fn map(&self, span: Span) -> (u32, u32) {
        match self.block_indent {
            Some(indent) => (self.line + span.line - 1, indent + span.col),
            None if span.line == 1 => (self.line, self.first_col + span.col - 1),
            None => (self.line + span.line - 1, span.col),
        }
    }
}

fn locate(text: &str, key: &str, indent: usize) -> Option<TextMap> {
    let prefix = format!("{}{key}:", " ".repeat(indent));
    let lines: Vec<&str> = text.lines().collect();
    let (i, line) = lines.iter().enumerate().find(|(_, l)| {
        l.starts_with(&prefix)
            && !l[indent..].starts_with(' ')
            && l[prefix.len()..].chars().next().is_none_or(|c| c == ' ')
    })?;
    let after = &line[prefix.len()..];
    let value = after.trim_start();
    let value_col = prefix.len() + (after.len() - value.len()) + 1;
    if value.starts_with('|') || value.starts_with('>') {
        let next = lines.get(i + 1)?;
        let block_indent = next.len() - next.trim_start().len();
        Some(TextMap {
            line: i as u32 + 2,
            first_col: block_indent as u32 + 1,
            block_indent: Some(block_indent as u32),
        })
    } else {
        let quoted = value.starts_with('"') || value.starts_with('\'');
        Some(TextMap {
            line: i as u32 + 1,
            first_col: value_col as u32 + u32::from(quoted),
            block_indent: None,
        })
    }
}

fn split_docs(text: &str) -> Vec<(String, u32)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1u32;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            if !cur.trim().is_empty() {
                docs.push((std::mem::take(&mut cur), start));
            }
            cur.clear();
            start = i as u32 + 2;
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        docs.push((cur, start));
    }
    docs
}

fn json_literal(v: &serde_json::Value) -> Option<Literal> {
    Some(match v {
        serde_json::Value::Null => Literal::Null,
        serde_json::Value::Bool(b) => Literal::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Literal::Int(i),
            None => Literal::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Literal::Str(s.clone()),
        _ => return None,
    })
}

/// Decodes a test scenario. An event may carry `_repeat: N` (N copies) and `_every: "30s"`
/// (the time between copies, default 1s): baseline and threshold rules need history.
/// Timestamps run on from 2026-01-01T00:00:00Z unless an event sets its own.
pub fn scenario(items: &[serde_json::Value]) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    let mut clock = 1_767_225_600_000_000_000i64;
    for (k, item) in items.iter().enumerate() {
        let mut item = item.clone();
        let obj = item
            .as_object_mut()
            .ok_or_else(|| format!("event {k}: a test event must be a mapping of fields"))?;
        let repeat = match obj.remove("_repeat") {
            None => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| format!("event {k}: `_repeat` must be a count from 1 to 100000"))?,
        };
        let every = match obj.remove("_every") {
            None => 1_000_000_000i64,
            Some(v) => v
                .as_str()
                .and_then(|s| parse_duration(s).or_else(|| humantime::parse_duration(s).ok()))
                .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
                .ok_or_else(|| format!("event {k}: `_every` must be a duration like \"30s\""))?,
        };
        for j in 0..repeat {
            let mut copy = item.clone();
            let obj = copy.as_object_mut().ok_or("not a mapping")?;
            if !obj.contains_key("event.id") {
                obj.insert("event.id".into(), format!("t{k:04}-{j:06}").into());
            }
            if !obj.contains_key("@timestamp") {
                let text = jiff::Timestamp::from_nanosecond(clock as i128)
                    .map(|t| t.to_string())
                    .map_err(|e| e.to_string())?;
                obj.insert("@timestamp".into(), text.into());
                clock += every;
            }
            out.push(test_event(&copy).map_err(|e| format!("event {k}: {e}"))?);
        }
    }
    Ok(out)
}

/// Decodes a test event written in YAML; `@timestamp` and `event.id` default.
pub fn test_event(v: &serde_json::Value) -> Result<Event, String> {
    let mut v = v.clone();
    let obj = v
        .as_object_mut()
        .ok_or_else(|| "a test event must be a mapping of fields".to_owned())?;
    obj.entry("@timestamp")
        .or_insert_with(|| serde_json::Value::from("2026-01-01T00:00:00Z"));
    let bytes = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    decode_native(&bytes).map_err(|e| e.to_string())
}

impl RuleSet {
    /// The built-in rule pack.
    pub fn builtin() -> Result<RuleSet, RuleErrors> {
        RuleSet::load_sources(builtin_sources())
    }

    /// Loads rule files and directories (recursively, `*.yaml`/`*.yml`, sorted), on top of the
    /// built-in library of lists and macros (which a file may redefine).
    pub fn load(paths: &[PathBuf]) -> Result<RuleSet, RuleErrors> {
        let mut sources: Vec<Source> = builtin_sources()
            .into_iter()
            .filter(|s| s.file.ends_with("library.yaml"))
            .collect();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        for p in paths {
            collect_rule_files(p, &mut files, &mut errors);
        }
        files.sort();
        files.dedup();
        for f in files {
            match std::fs::read(&f) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => sources.push(Source {
                        file: f,
                        text,
                        builtin: false,
                    }),
                    Err(e) => errors.push(RuleError::file_level(
                        f,
                        format!("not UTF-8 text: {}", e.utf8_error()),
                    )),
                },
                Err(e) => errors.push(RuleError::file_level(f, e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        RuleSet::load_sources(sources)
    }

    /// Loads one rule file's text (for tests and the API).
    pub fn from_text(file: &str, text: &str) -> Result<RuleSet, RuleErrors> {
        let mut sources: Vec<Source> = builtin_sources()
            .into_iter()
            .filter(|s| s.file.ends_with("library.yaml"))
            .collect();
        sources.push(Source {
            file: file.into(),
            text: text.to_owned(),
            builtin: false,
        });
        RuleSet::load_sources(sources)
    }

    fn load_sources(sources: Vec<Source>) -> Result<RuleSet, RuleErrors> {
        let mut errors = Vec::new();
        let mut parsed: Vec<(Doc<'_>, RawDoc)> = Vec::new();
        let split: Vec<(&Source, Vec<(String, u32)>)> =
            sources.iter().map(|s| (s, split_docs(&s.text))).collect();
        for (src, docs) in &split {
            for (text, first_line) in docs {
                let doc = Doc {
                    file: &src.file,
                    text,
                    first_line: *first_line,
                    builtin: src.builtin,
                };
                match serde_norway::from_str::<RawDoc>(text) {
                    Ok(raw) => parsed.push((doc, raw)),
                    Err(e) => {
                        let (line, col) = e
                            .location()
                            .map(|l| (l.line() as u32 + first_line - 1, l.column() as u32))
                            .unwrap_or((*first_line, 0));
                        let msg = e.to_string();
                        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                        errors.push(doc.err(line, col, None, msg));
                    }
                }
            }
        }

        // Pass 1: the library. User files may redefine built-in names; two user files may not
        // define the same name.
        let mut library = Library::default();
        let mut defined: HashMap<String, (PathBuf, bool)> = HashMap::new();
        for (doc, raw) in &parsed {
            for (name, items) in &raw.lists {
                if let Some(e) = redefinition(&defined, doc, "list", name) {
                    errors.push(e);
                    continue;
                }
                let mut lits = Vec::new();
                for v in items {
                    match json_literal(v) {
                        Some(l) => lits.push(l),
                        None => errors.push(doc.err(
                            doc.first_line,
                            1,
                            Some(name),
                            "list items must be strings, numbers, booleans or null",
                        )),
                    }
                }
                library.lists.insert(name.clone(), lits);
                defined.insert(format!("list:{name}"), (doc.file.to_owned(), doc.builtin));
            }
            for (name, body) in &raw.macros {
                if let Some(e) = redefinition(&defined, doc, "macro", name) {
                    errors.push(e);
                    continue;
                }
                match parse_expr(body) {
                    Ok(expr) => {
                        library.macros.insert(name.clone(), MacroDef { expr });
                    }
                    Err(e) => {
                        let map = doc.locate_nested("macros", name);
                        errors.push(doc.query_error(map.as_ref(), &format!("macro `{name}`"), e));
                    }
                }
                defined.insert(format!("macro:{name}"), (doc.file.to_owned(), doc.builtin));
            }
        }
        // Check each macro body once on its own, so its errors point into its own text.
        for (doc, raw) in &parsed {
            for name in raw.macros.keys() {
                let Some(m) = library.macros.get(name) else {
                    continue;
                };
                if let Err(e) = Compiler::new(&library, true).condition(&m.expr) {
                    let map = doc.locate_nested("macros", name);
                    errors.push(doc.query_error(map.as_ref(), &format!("macro `{name}`"), e));
                }
            }
        }

        // Pass 2: rules.
        let mut rules: Vec<Rule> = Vec::new();
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        for (doc, raw) in parsed {
            let Some(id) = raw.id.clone() else {
                if raw.query.is_some() || raw.title.is_some() {
                    errors.push(doc.err(doc.first_line, 1, None, "a rule needs an `id`"));
                }
                continue;
            };
            if let Some(other) = ids.get(&id) {
                errors.push(doc.err(
                    doc.first_line,
                    1,
                    Some(&id),
                    format!("duplicate rule id (also in {})", other.display()),
                ));
                continue;
            }
            ids.insert(id.clone(), doc.file.to_owned());
            match build_rule(&doc, raw, &library) {
                Ok(Some(rule)) => rules.push(rule),
                Ok(None) => {}
                Err(mut es) => errors.append(&mut es),
            }
        }
        if errors.is_empty() {
            Ok(RuleSet { rules, library })
        } else {
            Err(RuleErrors(errors))
        }
    }

    /// Runs every rule's inline tests; returns the failures.
    pub fn run_tests(&self) -> Vec<String> {
        self.rules.iter().flat_map(Rule::run_tests).collect()
    }
}

/// A user file may redefine a built-in list or macro; two user files may not define one name.
fn redefinition(
    defined: &HashMap<String, (PathBuf, bool)>,
    doc: &Doc<'_>,
    kind: &str,
    name: &str,
) -> Option<RuleError> {
    match defined.get(&format!("{kind}:{name}")) {
        Some((other, false)) if !doc.builtin => Some(doc.err(
            doc.first_line,
            1,
            Some(name),
            format!("{kind} defined twice (also in {})", other.display()),
        )),
        _ => None,
    }
}

fn builtin_sources() -> Vec<Source> {
    BUILTIN
        .iter()
        .map(|(name, text)| Source {
            file: PathBuf::from(name),
            text: (*text).to_owned(),
            builtin: true,
        })
        .collect()
}

fn collect_rule_files(p: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<RuleError>) {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => match std::fs::read_dir(p) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        collect_rule_files(&path, out, errors);
                    } else if matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml")
                    ) {
                        out.push(path);
                    }
                }
            }
            Err(e) => errors.push(RuleError::file_level(p.to_owned(), e.to_string())),
        },
        Ok(_) => out.push(p.to_owned()),
        Err(e) => errors.push(RuleError::file_level(p.to_owned(), e.to_string())),
    }
}

fn build_rule(doc: &Doc<'_>, raw: RawDoc, lib: &Library) -> Result<Option<Rule>, Vec<RuleError>> {
    let id = raw.id.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let key_line = |k: &str| doc.locate_key(k).map(|m| m.line).unwrap_or(doc.first_line);
    let missing = |k: &str| {
        doc.err(
            doc.first_line,
            1,
            Some(&id),
            format!("missing required key `{k}`"),
        )
    };
    if !raw.lists.is_empty() || !raw.macros.is_empty() {
        errors.push(doc.err(doc.first_line, 1, Some(&id), "a rule document cannot also define `lists` or `macros`: put them in their own document"));
    }
    // Documentation-only keys: accepted and checked for type, not used by the engine.
    let _ = (&raw.references, &raw.author);
    let severity = match raw.severity.as_deref() {
        None => {
            errors.push(missing("severity"));
            Severity::Medium
        }
        Some(s) => Severity::parse(s).unwrap_or_else(|| {
            errors.push(doc.err(
                key_line("severity"),
                1,
                Some(&id),
                format!(
                    "unknown severity {s:?}: expected informational, low, medium, high or critical"
                ),
            ));
            Severity::Medium
        }),
    };
    let title = raw.title.clone().unwrap_or_else(|| {
        errors.push(missing("title"));
        String::new()
    });
    let Some(query_text) = raw.query.clone() else {
        errors.push(missing("query"));
        return Err(errors);
    };
    let qmap = doc.locate_key("query");
    let query = match parse_query(&query_text).and_then(|q| Compiler::new(lib, true).query(&q)) {
        Ok(q) => Some(q),
        Err(e) => {
            errors.push(doc.query_error(qmap.as_ref(), &id, e));
            None
        }
    };

    let suppress = match &raw.suppress {
        None => None,
        Some(s) => {
            let line = key_line("suppress");
            let window =
                parse_duration(&s.window).or_else(|| humantime::parse_duration(&s.window).ok());
            if window.is_none() {
                errors.push(doc.err(
                    line,
                    1,
                    Some(&id),
                    format!(
                        "suppress.window: invalid duration {:?}: expected e.g. \"10m\"",
                        s.window
                    ),
                ));
            }
            let mut key = Vec::new();
            for k in &s.key {
                match Compiler::new(lib, true).field_ref(k, Span::default()) {
                    Ok(r) => key.push(r),
                    Err(e) => errors.push(RuleError {
                        help: e.help,
                        ..doc.err(line, 1, Some(&id), format!("suppress.key: {}", e.message))
                    }),
                }
            }
            window.map(|window| Suppress { key, window })
        }
    };

    let mut exceptions = Vec::new();
    for (i, ex) in raw.exceptions.iter().enumerate() {
        let line = key_line("exceptions");
        let cond = match (&ex.condition, ex.fields.is_empty()) {
            (Some(c), true) => {
                parse_expr(c).map_err(|e| format!("exceptions[{i}] ({}): {}", ex.name, e))
            }
            (None, false) => exception_expr(&ex.fields, &ex.values)
                .map_err(|e| format!("exceptions[{i}] ({}): {e}", ex.name)),
            _ => Err(format!(
                "exceptions[{i}] ({}): give either `condition` or `fields` with `values`",
                ex.name
            )),
        };
        match cond.and_then(|e| {
            Compiler::new(lib, true)
                .condition(&e)
                .map_err(|e| format!("exceptions[{i}] ({}): {}", ex.name, e))
        }) {
            Ok(pred) => exceptions.push(Exception {
                name: ex.name.clone(),
                pred,
            }),
            Err(msg) => errors.push(doc.err(line, 1, Some(&id), msg)),
        }
    }

    let mut tests = RuleTests::default();
    if let Some(t) = &raw.tests {
        let line = key_line("tests");
        for (list, out, name) in [
            (&t.should_match, &mut tests.should_match, "match"),
            (&t.no_match, &mut tests.should_not_match, "no_match"),
        ] {
            for (i, v) in list.iter().enumerate() {
                let case: Result<Vec<Event>, String> = match v {
                    serde_json::Value::Array(items) => scenario(items),
                    single => test_event(single).map(|e| vec![e]),
                };
                match case {
                    Ok(evs) => out.push(evs),
                    Err(e) => {
                        errors.push(doc.err(line, 1, Some(&id), format!("tests.{name}[{i}]: {e}")))
                    }
                }
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let Some(query) = query else {
        return Err(errors);
    };
    Ok(Some(Rule {
        id,
        version: raw.version.unwrap_or(1),
        title,
        description: raw.description.unwrap_or_default(),
        severity,
        tags: raw.tags,
        playbook: raw.playbook,
        suppress,
        query_text,
        query,
        exceptions,
        tests,
        origin: Origin {
            file: doc.file.to_owned(),
            line: doc.first_line,
        },
    }))
}

/// Falco-style exception: `fields: [a, b]`, `values: [[x, y], …]` — any row equal on all fields.
fn exception_expr(fields: &[String], values: &[Vec<serde_json::Value>]) -> Result<Expr, String> {
    let field = |name: &str| Expr::Field {
        name: name.trim_start_matches('?').to_owned(),
        optional: name.starts_with('?'),
        quoted: false,
        span: Span::default(),
    };
    let mut rows = Vec::new();
    for (r, row) in values.iter().enumerate() {
        if row.len() != fields.len() {
            return Err(format!(
                "values[{r}] has {} items for {} fields",
                row.len(),
                fields.len()
            ));
        }
        let mut conj: Option<Expr> = None;
        for (f, v) in fields.iter().zip(row) {
            let lit =
                json_literal(v).ok_or_else(|| format!("values[{r}]: items must be scalars"))?;
            let cmp = Expr::Binary {
                op: crate::ast::BinOp::Eq,
                lhs: Box::new(field(f)),
                rhs: Box::new(Expr::Lit(lit, Span::default())),
                span: Span::default(),
            };
            conj = Some(match conj {
                None => cmp,
                Some(prev) => Expr::Binary {
                    op: crate::ast::BinOp::And,
                    lhs: Box::new(prev),
                    rhs: Box::new(cmp),
                    span: Span::default(),
                },
            });
        }
        if let Some(c) = conj {
            rows.push(c);
        }
    }
    rows.into_iter()
        .reduce(|a, b| Expr::Binary {
            op: crate::ast::BinOp::Or,
            lhs: Box::new(a),
            rhs: Box::new(b),
            span: Span::default(),
        })
        .ok_or_else(|| "no values".to_owned())
}

/// The core field names, for listings and completion.
pub fn schema_fields() -> impl Iterator<Item = &'static str> {
    CoreField::ALL.iter().map(|f| f.name())
}
