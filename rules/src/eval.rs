//! The compiled, predicate form of a condition and its evaluation.
//!
//! Compilation resolves every field name to a [`FieldRef`] (a slot index for core fields),
//! expands macros and named lists, builds wildcard and regex matchers and hash sets once, and
//! folds the tree into [`Pred`] (booleans) and [`CExpr`] (values). Evaluation walks that small
//! tree with borrowed values: no string is parsed, looked up by name or allocated per event
//! except where a function builds a new string.
//!
//! Null semantics follow EQL: a comparison with a missing value is null, `not null` is null,
//! `and`/`or` are three-valued (`null and false` is false, `null or true` is true), and a
//! condition that ends null does not match. `x == null` and `x != null` test presence.
//! Multi-valued fields (lists) match when any element matches.

use std::borrow::Cow;
use std::cmp::Ordering;

use cordon_ingest::{Event, FieldRef, FieldValue};
use regex::Regex;
use rustc_hash::FxHashSet;
use serde_json::Value as Json;
use smallvec::SmallVec;

use crate::functions::Func;
use crate::wildcard::Wildcard;

/// A runtime value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val<'a> {
    /// Absent or null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating-point.
    Float(f64),
    /// String.
    Str(Cow<'a, str>),
    /// A multi-valued field: content fingerprints (compared as their hex text).
    Fps(&'a [u64]),
    /// A multi-valued field: JSON array.
    Array(&'a [Json]),
    /// A JSON object (compared whole by `==` and `!=`).
    Object(&'a Json),
}

impl<'a> Val<'a> {
    pub(crate) fn from_field(v: FieldValue<'a>) -> Val<'a> {
        match v {
            FieldValue::Missing => Val::Null,
            FieldValue::Str(s) => Val::Str(Cow::Borrowed(s)),
            FieldValue::Int(i) => Val::Int(i),
            FieldValue::Float(f) => Val::Float(f),
            FieldValue::Bool(b) => Val::Bool(b),
            FieldValue::Fingerprints(l) => Val::Fps(l),
            FieldValue::Json(Json::Array(a)) => Val::Array(a),
            FieldValue::Json(o) => Val::Object(o),
        }
    }

    fn from_json(v: &'a Json) -> Val<'a> {
        Val::from_field(FieldValue::from_json(v))
    }

    /// A borrowed copy of the value: strings are not copied.
    #[inline]
    pub fn view(&self) -> Val<'_> {
        match self {
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Int(i) => Val::Int(*i),
            Val::Float(f) => Val::Float(*f),
            Val::Fps(l) => Val::Fps(l),
            Val::Array(a) => Val::Array(a),
            Val::Object(o) => Val::Object(o),
        }
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Calls `f` on each element of a list, or on the value itself; returns whether any
    /// call was true, else null if any was null, else false.
    fn any(&self, f: &mut dyn FnMut(&Val<'_>) -> Option<bool>) -> Option<bool> {
        let mut saw_null = false;
        let mut one = |v: &Val<'_>| match f(v) {
            Some(true) => Some(true),
            Some(false) => None,
            None => {
                saw_null = true;
                None
            }
        };
        let hit = match self {
            Val::Fps(l) => l.iter().any(|fp| {
                let hex = cordon_ingest::fingerprint::hex16(*fp);
                let s = std::str::from_utf8(&hex).unwrap_or_default();
                one(&Val::Str(Cow::Borrowed(s))).is_some()
            }),
            Val::Array(a) => a.iter().any(|j| one(&Val::from_json(j)).is_some()),
            v => one(v).is_some(),
        };
        if hit {
            Some(true)
        } else if saw_null {
            None
        } else {
            Some(false)
        }
    }

    /// Renders the value as EQL's `string()` does.
    pub fn to_text(&self) -> Option<Cow<'a, str>> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Val::Int(i) => Some(Cow::Owned(i.to_string())),
            Val::Float(f) => Some(Cow::Owned(f.to_string())),
            Val::Str(s) => Some(s.clone()),
            Val::Fps(l) => Some(Cow::Owned(format!(
                "[{}]",
                l.iter()
                    .map(|f| format!("{f:016x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Val::Array(a) => Some(Cow::Owned(Json::Array(a.to_vec()).to_string())),
            Val::Object(o) => Some(Cow::Owned(o.to_string())),
        }
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (integer division when both sides are integers)
    Div,
    /// `%`
    Mod,
}

/// A compiled pattern of `:`, `like` or `regex`.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// A wildcard pattern.
    Wild(Wildcard),
    /// An anchored regular expression, with the literal every match starts with (checked
    /// first: most values are rejected without running the automaton).
    Regex(Regex, Option<Box<str>>),
}

impl Matcher {
    /// Whether `s` matches any of `matchers`.
    fn any(matchers: &[Matcher], s: &str) -> bool {
        fn wild(m: &Matcher) -> Option<&Wildcard> {
            match m {
                Matcher::Wild(w) if w.insensitive() => Some(w),
                _ => None,
            }
        }
        if matchers.len() > 1 && matchers.iter().all(|m| wild(m).is_some()) {
            return Wildcard::matches_any_insensitive(matchers.iter().filter_map(wild), s);
        }
        matchers.iter().any(|m| m.matches(s))
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Wild(w) => w.matches(s),
            Matcher::Regex(r, prefix) => {
                prefix.as_deref().is_none_or(|p| s.starts_with(p)) && r.is_match(s)
            }
        }
    }
}

/// The literal that every whole-string match of a case-sensitive `pattern` starts with.
pub fn regex_literal_prefix(pattern: &str) -> Option<Box<str>> {
    if pattern.contains('|') {
        return None;
    }
    let meta = |c: char| "\\.+*?()|[]{}^$".contains(c);
    let mut prefix: String = pattern.chars().take_while(|c| !meta(*c)).collect();
    if matches!(
        pattern[prefix.len()..].chars().next(),
        Some('?' | '*' | '{')
    ) {
        prefix.pop();
    }
    (!prefix.is_empty()).then(|| prefix.into_boxed_str())
}

/// The candidates of `in`: strings (lowercased for `in~`), numbers, and whether `null` is
/// among them. Up to [`SMALL_SET`] strings are scanned linearly — faster than hashing for the
/// short lists rules usually hold — and larger lists use a hash set.
#[derive(Clone, Debug, Default)]
pub struct ValueSet {
    /// Strings (lowercased when case-insensitive).
    pub strs: FxHashSet<Box<str>>,
    /// The same strings, when there are few of them.
    pub small: Option<Box<[Box<str>]>>,
    /// Numbers.
    pub nums: Vec<f64>,
    /// Booleans.
    pub bools: Vec<bool>,
    /// `null` is a candidate.
    pub null: bool,
    /// Compare strings case-insensitively.
    pub insensitive: bool,
}

/// Largest string list scanned linearly by `in`.
pub const SMALL_SET: usize = 8;

impl ValueSet {
    /// Call once the strings are in: picks the linear form for small sets.
    pub fn seal(&mut self) {
        self.small = (self.strs.len() <= SMALL_SET).then(|| {
            let mut v: Vec<Box<str>> = self.strs.iter().cloned().collect();
            v.sort();
            v.into_boxed_slice()
        });
    }

    #[inline]
    fn has(&self, s: &str) -> bool {
        match &self.small {
            Some(list) => list.iter().any(|x| **x == *s),
            None => self.strs.contains(s),
        }
    }

    fn contains(&self, v: &Val<'_>) -> Option<bool> {
        match v {
            Val::Null => {
                if self.null {
                    Some(true)
                } else {
                    None
                }
            }
            Val::Str(s) => Some(if self.insensitive {
                if s.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
                    self.has(&s.to_lowercase())
                } else {
                    self.has(s)
                }
            } else {
                self.has(s)
            }),
            Val::Int(_) | Val::Float(_) => {
                let f = v.as_f64().unwrap_or(f64::NAN);
                Some(self.nums.contains(&f))
            }
            Val::Bool(b) => Some(self.bools.contains(b)),
            list => list.any(&mut |e| self.contains(e)),
        }
    }
}

/// A compiled boolean condition.
#[derive(Clone, Debug)]
pub enum Pred {
    /// A constant (`None` = null).
    Const(Option<bool>),
    /// All must hold.
    And(Box<[Pred]>),
    /// Any must hold.
    Or(Box<[Pred]>),
    /// Negation.
    Not(Box<Pred>),
    /// A comparison.
    Cmp {
        /// Operator.
        op: CmpOp,
        /// Left.
        lhs: CExpr,
        /// Right.
        rhs: CExpr,
    },
    /// `field == "literal"` / `field != "literal"` on a string core field: the commonest
    /// condition of all, evaluated without building values.
    StrEq {
        /// The field (a string-typed core field).
        field: cordon_ingest::CoreField,
        /// The literal.
        value: Box<str>,
        /// `!=`.
        negate: bool,
    },
    /// `x == null` / `x != null`.
    IsNull {
        /// The tested value.
        expr: CExpr,
        /// `!= null`.
        negate: bool,
    },
    /// `:`, `like`, `regex` with any of several patterns.
    Match {
        /// The tested value.
        lhs: CExpr,
        /// The patterns.
        matchers: Box<[Matcher]>,
    },
    /// `in` / `in~` / `not in`.
    In {
        /// The tested value.
        lhs: CExpr,
        /// The candidates.
        set: Box<ValueSet>,
        /// `not in`.
        negated: bool,
    },
    /// A boolean-valued expression (function call, boolean field).
    Truthy(CExpr),
}

/// A compiled value expression.
#[derive(Clone, Debug)]
pub enum CExpr {
    /// A constant.
    Const(Val<'static>),
    /// A field.
    Field(FieldRef),
    /// Unary minus.
    Neg(Box<CExpr>),
    /// Arithmetic.
    Arith(ArithOp, Box<CExpr>, Box<CExpr>),
    /// A function call.
    Call(Func, Box<[CExpr]>),
    /// A field of an earlier sequence step's event (`$1.audit.target`; index 0 is `$1`).
    StepField(usize, FieldRef),
    /// How many of this event's argument fingerprints an earlier step's result carried
    /// (`lineage($1)`).
    Lineage(usize),
    /// A condition used as a value.
    Pred(Box<Pred>),
}

/// Size of the intersection of two sorted, deduplicated lists.
pub fn sorted_overlap(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

impl CExpr {
    /// Evaluates the expression against an event.
    pub fn eval<'a>(&'a self, ev: &'a Event) -> Val<'a> {
        self.eval_in(ev, &[])
    }

    /// Evaluates the expression against an event, with the events of earlier sequence steps
    /// (`$1` is `ctx[0]`).
    pub fn eval_in<'a>(&'a self, ev: &'a Event, ctx: &[&'a Event]) -> Val<'a> {
        match self {
            CExpr::Const(v) => v.view(),
            CExpr::Field(f) => Val::from_field(ev.field(f)),
            CExpr::Neg(e) => match e.eval_in(ev, ctx) {
                Val::Int(i) => i.checked_neg().map(Val::Int).unwrap_or(Val::Null),
                Val::Float(f) => Val::Float(-f),
                _ => Val::Null,
            },
            CExpr::Arith(op, a, b) => arith(*op, &a.eval_in(ev, ctx), &b.eval_in(ev, ctx)),
            CExpr::Call(f, args) => {
                let vals: SmallVec<[Val<'a>; 4]> =
                    args.iter().map(|a| a.eval_in(ev, ctx)).collect();
                f.call(&vals)
            }
            CExpr::StepField(k, f) => match ctx.get(*k) {
                Some(step) => Val::from_field(step.field(f)),
                None => Val::Null,
            },
            CExpr::Lineage(k) => match (ev.args_fp(), ctx.get(*k).and_then(|s| s.result_fp())) {
                (Some(args), Some(result)) => Val::Int(sorted_overlap(args, result) as i64),
                _ => Val::Int(0),
            },
            CExpr::Pred(p) => match p.eval_in(ev, ctx) {
                Some(b) => Val::Bool(b),
                None => Val::Null,
            },
        }
    }
}

pub(crate) fn arith<'a>(op: ArithOp, a: &Val<'_>, b: &Val<'_>) -> Val<'a> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => {
            let r = match op {
                ArithOp::Add => x.checked_add(*y),
                ArithOp::Sub => x.checked_sub(*y),
                ArithOp::Mul => x.checked_mul(*y),
                ArithOp::Div => x.checked_div(*y),
                ArithOp::Mod => x.checked_rem(*y),
            };
            r.map(Val::Int).unwrap_or(Val::Null)
        }
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                let r = match op {
                    ArithOp::Add => x + y,
                    ArithOp::Sub => x - y,
                    ArithOp::Mul => x * y,
                    ArithOp::Div if y == 0.0 => return Val::Null,
                    ArithOp::Div => x / y,
                    ArithOp::Mod if y == 0.0 => return Val::Null,
                    ArithOp::Mod => x % y,
                };
                Val::Float(r)
            }
            _ => Val::Null,
        },
    }
}

fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    if matches!(a, Val::Fps(_) | Val::Array(_)) {
        return a.any(&mut |x| compare(op, x, b));
    }
    if matches!(b, Val::Fps(_) | Val::Array(_)) {
        return b.any(&mut |y| compare(op, a, y));
    }
    let ord = match (a, b) {
        (Val::Null, _) | (_, Val::Null) => return None,
        // One shared copy (the decoder shares recurring values) is equal without a walk.
        (Val::Object(x), Val::Object(y)) if op == CmpOp::Eq => {
            return Some(std::ptr::eq(*x, *y) || x == y)
        }
        (Val::Object(x), Val::Object(y)) if op == CmpOp::Ne => {
            return Some(!std::ptr::eq(*x, *y) && x != y)
        }
        (Val::Object(_), _) | (_, Val::Object(_)) => return None,
        // Equality needs no ordering: slices of different lengths differ without a memcmp.
        (Val::Str(x), Val::Str(y)) if op == CmpOp::Eq => return Some(x == y),
        (Val::Str(x), Val::Str(y)) if op == CmpOp::Ne => return Some(x != y),
        (Val::Str(x), Val::Str(y)) => x.as_ref().cmp(y.as_ref()),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y)?,
            // A string compared with a number (only possible through untyped fields) is null.
            _ => return None,
        },
    };
    Some(match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    })
}

/// A necessary condition of a predicate: it can only hold when one of the guards
/// [`Pred::guards`] returned holds. Engines index rules by their guards so that an event is
/// tested only against rules it could match.
#[derive(Clone, Debug, PartialEq)]
pub enum Guard {
    /// The string core field has one of the values.
    Value(ValueGuard),
    /// The field has a value (it is neither absent nor JSON `null`). Every comparison, pattern,
    /// `in` without `null` among its candidates, `!= null` and function call on a null value
    /// is null, which does not match: `baseline.rate > 0.99`, `?x.url : "*"` or
    /// `stringContains(?gen_ai.tool.description, "…")` can only hold for an event that has
    /// the field, and most events do not.
    Present(FieldRef),
}

/// A [`Guard`] on a string core field's value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueGuard {
    /// The field.
    pub field: cordon_ingest::CoreField,
    /// The values it must take.
    pub values: Vec<Box<str>>,
    /// Compare lowercased.
    pub insensitive: bool,
}

impl Guard {
    /// How selective the guard usually is (lower is better). Having an optional field (a
    /// baseline feature, a response, an argument, an extra field) ranks below any core
    /// field's value but above the decision, which nearly every event has and nearly always
    /// `allow`; having a core field ranks last, as most events have each of them.
    fn rank(&self) -> u8 {
        use cordon_ingest::CoreField as F;
        match self {
            Guard::Value(g) => match g.field {
                F::ToolName => 0,
                F::Target | F::ServerAddress => 1,
                F::Method => 2,
                F::DataClass => 3,
                F::ErrorType => 4,
                F::Decision => 7,
                _ => 5,
            },
            Guard::Present(FieldRef::Core(_) | FieldRef::Category) => 8,
            Guard::Present(_) => 6,
        }
    }

    /// How many values an event is looked up against (for ranking equal guards).
    fn width(&self) -> usize {
        match self {
            Guard::Value(g) => g.values.len(),
            Guard::Present(_) => 1,
        }
    }
}

/// Whether `ev` has a value at `f`, as a [`Guard::Present`] asks: the predicates it guards
/// see a missing field and a JSON `null` alike, as null.
#[inline]
pub fn has_value(ev: &Event, f: &FieldRef) -> bool {
    !matches!(ev.field(f), FieldValue::Missing)
}

impl CExpr {
    /// A field of this event whose absence makes the expression null: the field itself, and
    /// through negation, arithmetic and function calls (every function returns null for a
    /// null argument).
    fn strict_field(&self) -> Option<&FieldRef> {
        match self {
            CExpr::Field(f) => Some(f),
            CExpr::Neg(e) => e.strict_field(),
            CExpr::Arith(_, a, b) => a.strict_field().or_else(|| b.strict_field()),
            CExpr::Call(_, args) => args.iter().find_map(CExpr::strict_field),
            CExpr::Const(_) | CExpr::StepField(..) | CExpr::Lineage(_) | CExpr::Pred(_) => None,
        }
    }

    /// Whether any field the expression reads satisfies `f`.
    pub fn reads_field(&self, f: &dyn Fn(&FieldRef) -> bool) -> bool {
        match self {
            CExpr::Field(r) | CExpr::StepField(_, r) => f(r),
            CExpr::Const(_) | CExpr::Lineage(_) => false,
            CExpr::Neg(e) => e.reads_field(f),
            CExpr::Arith(_, a, b) => a.reads_field(f) || b.reads_field(f),
            CExpr::Call(_, args) => args.iter().any(|a| a.reads_field(f)),
            CExpr::Pred(p) => p.reads_field(f),
        }
    }

    /// Whether the expression references earlier sequence steps.
    pub fn refers_to_steps(&self) -> bool {
        match self {
            CExpr::StepField(..) | CExpr::Lineage(_) => true,
            CExpr::Const(_) | CExpr::Field(_) => false,
            CExpr::Neg(e) => e.refers_to_steps(),
            CExpr::Arith(_, a, b) => a.refers_to_steps() || b.refers_to_steps(),
            CExpr::Call(_, args) => args.iter().any(CExpr::refers_to_steps),
            CExpr::Pred(p) => p.refers_to_steps(),
        }
    }

    /// A rough static cost of evaluating the expression (for ordering conjuncts).
    pub fn cost(&self) -> u32 {
        match self {
            CExpr::Const(_) => 0,
            CExpr::Field(FieldRef::Core(_)) | CExpr::Field(FieldRef::Category) => 1,
            CExpr::Field(_) => 4,
            CExpr::Neg(e) => 1 + e.cost(),
            CExpr::Arith(_, a, b) => 1 + a.cost() + b.cost(),
            CExpr::Call(_, args) => 6 + args.iter().map(CExpr::cost).sum::<u32>(),
            CExpr::StepField(..) => 2,
            CExpr::Lineage(_) => 6,
            CExpr::Pred(p) => p.cost(),
        }
    }
}

impl Pred {
    /// A rough static cost of evaluating the predicate (for ordering conjuncts).
    pub fn cost(&self) -> u32 {
        match self {
            Pred::Const(_) => 0,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().map(Pred::cost).sum(),
            Pred::Not(p) => p.cost(),
            Pred::Cmp { lhs, rhs, .. } => 1 + lhs.cost() + rhs.cost(),
            Pred::StrEq { .. } => 1,
            Pred::IsNull { expr, .. } => expr.cost(),
            Pred::Match { lhs, matchers } => {
                lhs.cost()
                    + matchers
                        .iter()
                        .map(|m| match m {
                            Matcher::Wild(_) => 2,
                            Matcher::Regex(_, Some(_)) => 4,
                            Matcher::Regex(_, None) => 12,
                        })
                        .sum::<u32>()
            }
            Pred::In { lhs, set, .. } => lhs.cost() + if set.small.is_some() { 2 } else { 3 },
            Pred::Truthy(e) => e.cost(),
        }
    }

    /// The most selective necessary condition of this predicate, if it has one: guards (see
    /// [`Guard`]), at least one of which holds whenever the predicate does. Alternatives come
    /// from `or` across fields: `is_egress` (a capability or a tool name) guards a step as
    /// well as one field would, where a single-field guard would fall back to
    /// `audit.decision`, which nearly every event satisfies. A condition with no guard on a
    /// field's value may still need the field to have a value ([`Guard::Present`]).
    pub fn guards(&self) -> Option<Vec<Guard>> {
        use cordon_ingest::FieldKind;
        let core_str = |e: &CExpr| match e {
            CExpr::Field(FieldRef::Core(f)) if f.kind() == FieldKind::Str => Some(*f),
            _ => None,
        };
        let value = |field, values, insensitive| {
            Some(vec![Guard::Value(ValueGuard {
                field,
                values,
                insensitive,
            })])
        };
        let present = |e: &CExpr| e.strict_field().map(|f| vec![Guard::Present(f.clone())]);
        match self {
            // The conjunct whose least selective alternative is the most selective.
            Pred::And(ps) => ps.iter().filter_map(Pred::guards).min_by_key(|gs| {
                let worst = gs.iter().map(Guard::rank).max().unwrap_or(u8::MAX);
                (worst, gs.iter().map(Guard::width).sum::<usize>())
            }),
            Pred::Or(ps) => {
                let mut acc: Vec<Guard> = Vec::new();
                for p in ps.iter() {
                    for g in p.guards()? {
                        let same = acc.iter_mut().find(|a| match (&**a, &g) {
                            (Guard::Value(a), Guard::Value(g)) => {
                                a.field == g.field && a.insensitive == g.insensitive
                            }
                            (Guard::Present(a), Guard::Present(g)) => a == g,
                            _ => false,
                        });
                        match (same, g) {
                            (Some(Guard::Value(a)), Guard::Value(g)) => a.values.extend(g.values),
                            (Some(_), _) => {}
                            (None, g) => acc.push(g),
                        }
                    }
                }
                for a in &mut acc {
                    if let Guard::Value(a) = a {
                        a.values.sort();
                        a.values.dedup();
                    }
                }
                (!acc.is_empty()).then_some(acc)
            }
            Pred::Cmp { op, lhs, rhs } => {
                if *op == CmpOp::Eq {
                    let found = match (core_str(lhs), core_str(rhs)) {
                        (Some(f), None) => Some((f, rhs)),
                        (None, Some(f)) => Some((f, lhs)),
                        _ => None,
                    };
                    if let Some((f, CExpr::Const(Val::Str(s)))) = found {
                        return value(f, vec![s.as_ref().into()], false);
                    }
                }
                present(lhs).or_else(|| present(rhs))
            }
            Pred::StrEq {
                field,
                value: v,
                negate,
            } => {
                if *negate {
                    Some(vec![Guard::Present(FieldRef::Core(*field))])
                } else {
                    value(*field, vec![v.clone()], false)
                }
            }
            Pred::In { lhs, set, negated } => {
                if set.null {
                    return None;
                }
                match core_str(lhs) {
                    Some(f) if !negated && set.nums.is_empty() && set.bools.is_empty() => {
                        let mut values: Vec<Box<str>> = set.strs.iter().cloned().collect();
                        values.sort();
                        value(f, values, set.insensitive)
                    }
                    _ => present(lhs),
                }
            }
            Pred::Match { lhs, matchers } => {
                let exact = || {
                    let f = core_str(lhs)?;
                    let mut values = Vec::new();
                    let mut ci = None;
                    for m in matchers.iter() {
                        let Matcher::Wild(w) = m else { return None };
                        let (lit, insensitive) = w.exact()?;
                        if *ci.get_or_insert(insensitive) != insensitive {
                            return None;
                        }
                        values.push(lit.into());
                    }
                    value(f, values, ci?)
                };
                exact().or_else(|| present(lhs))
            }
            Pred::IsNull { expr, negate: true } | Pred::Truthy(expr) => present(expr),
            Pred::Const(_) | Pred::Not(_) | Pred::IsNull { negate: false, .. } => None,
        }
    }

    /// Evaluates the condition: `Some(true)` matches, `Some(false)` does not, `None` is null
    /// (which does not match either).
    pub fn eval(&self, ev: &Event) -> Option<bool> {
        self.eval_in(ev, &[])
    }

    /// Evaluates the condition with the events of earlier sequence steps (`$1` is `ctx[0]`).
    pub fn eval_in(&self, ev: &Event, ctx: &[&Event]) -> Option<bool> {
        match self {
            Pred::Const(c) => *c,
            Pred::And(ps) => {
                let mut null = false;
                for p in ps.iter() {
                    match p.eval_in(ev, ctx) {
                        Some(false) => return Some(false),
                        None => null = true,
                        Some(true) => {}
                    }
                }
                if null {
                    None
                } else {
                    Some(true)
                }
            }
            Pred::Or(ps) => {
                let mut null = false;
                for p in ps.iter() {
                    match p.eval_in(ev, ctx) {
                        Some(true) => return Some(true),
                        None => null = true,
                        Some(false) => {}
                    }
                }
                if null {
                    None
                } else {
                    Some(false)
                }
            }
            Pred::Not(p) => p.eval_in(ev, ctx).map(|b| !b),
            Pred::Cmp { op, lhs, rhs } => {
                compare(*op, &lhs.eval_in(ev, ctx), &rhs.eval_in(ev, ctx))
            }
            Pred::StrEq {
                field,
                value,
                negate,
            } => ev.str(*field).map(|v| (v == &**value) != *negate),
            Pred::IsNull { expr, negate } => {
                let v = expr.eval_in(ev, ctx);
                let null = match &v {
                    Val::Null => true,
                    Val::Fps(l) => l.is_empty(),
                    _ => false,
                };
                Some(null != *negate)
            }
            Pred::Match { lhs, matchers } => lhs.eval_in(ev, ctx).any(&mut |v| match v {
                Val::Str(s) => Some(Matcher::any(matchers, s)),
                Val::Null => None,
                // Patterns apply to strings; numbers are matched on their text.
                other => other.to_text().map(|s| Matcher::any(matchers, &s)),
            }),
            Pred::In { lhs, set, negated } => {
                let v = lhs.eval_in(ev, ctx);
                set.contains(&v).map(|b| b != *negated)
            }
            Pred::Truthy(e) => match e.eval_in(ev, ctx) {
                Val::Bool(b) => Some(b),
                Val::Null => None,
                _ => None,
            },
        }
    }

    /// Whether the condition matches the event (null does not match).
    #[inline]
    pub fn matches(&self, ev: &Event) -> bool {
        self.eval(ev) == Some(true)
    }

    /// Whether any field the condition reads satisfies `f`.
    pub fn reads_field(&self, f: &dyn Fn(&FieldRef) -> bool) -> bool {
        match self {
            Pred::Const(_) => false,
            Pred::StrEq { field, .. } => f(&FieldRef::Core(*field)),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(|p| p.reads_field(f)),
            Pred::Not(p) => p.reads_field(f),
            Pred::Cmp { lhs, rhs, .. } => lhs.reads_field(f) || rhs.reads_field(f),
            Pred::IsNull { expr: e, .. }
            | Pred::Match { lhs: e, .. }
            | Pred::In { lhs: e, .. }
            | Pred::Truthy(e) => e.reads_field(f),
        }
    }

    /// Whether the condition references earlier sequence steps (`$N`, `lineage`).
    pub fn refers_to_steps(&self) -> bool {
        match self {
            Pred::Const(_) | Pred::StrEq { .. } => false,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(Pred::refers_to_steps),
            Pred::Not(p) => p.refers_to_steps(),
            Pred::Cmp { lhs, rhs, .. } => lhs.refers_to_steps() || rhs.refers_to_steps(),
            Pred::IsNull { expr: e, .. }
            | Pred::Match { lhs: e, .. }
            | Pred::In { lhs: e, .. }
            | Pred::Truthy(e) => e.refers_to_steps(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_expr, Compiler, Library};
    use cordon_ingest::CoreField;

    fn guards(src: &str) -> Option<Vec<Guard>> {
        let e = parse_expr(src).unwrap();
        Compiler::new(&Library::default(), true)
            .condition(&e)
            .unwrap()
            .guards()
    }

    /// The guard of a condition with a single guard on a field's value.
    fn guard(src: &str) -> Option<ValueGuard> {
        match guards(src).filter(|g| g.len() == 1)?.pop()? {
            Guard::Value(g) => Some(g),
            Guard::Present(_) => None,
        }
    }

    /// The guards of a condition, each as a field's value or presence, sorted.
    fn described(src: &str) -> Vec<String> {
        let mut d: Vec<String> = guards(src)
            .unwrap_or_default()
            .iter()
            .map(|g| match g {
                Guard::Value(g) => format!("{:?}={}", g.field, g.values.join("|")),
                Guard::Present(f) => format!("has {f:?}"),
            })
            .collect();
        d.sort();
        d
    }

    #[test]
    fn regex_prefixes() {
        assert_eq!(
            regex_literal_prefix("agent-x4-[0-9]+").as_deref(),
            Some("agent-x4-")
        );
        assert_eq!(regex_literal_prefix("abc?d").as_deref(), Some("ab"));
        assert_eq!(regex_literal_prefix("a|b"), None);
        assert_eq!(regex_literal_prefix(".*x"), None);
        assert_eq!(regex_literal_prefix("x\\d"), Some("x".into()));
    }

    /// An `or` across fields guards by each field; an `and` prefers it to a guard on the
    /// unselective decision field, and merges values per field.
    #[test]
    fn guards_with_alternatives() {
        let gs = guards(
            r#"(audit.tool.capability == "egress" or gen_ai.tool.name in ("b", "a") or gen_ai.tool.name == "c") and audit.decision == "allow""#,
        )
        .unwrap();
        assert_eq!(gs.len(), 2);
        let [Guard::Value(g0), Guard::Value(g1)] = &gs[..] else {
            panic!("{gs:?}")
        };
        assert_eq!(g0.field, CoreField::Capability);
        assert_eq!(g1.field, CoreField::ToolName);
        assert_eq!(
            g1.values,
            vec!["a".into(), "b".into(), "c".into()] as Vec<Box<str>>
        );
        // A single selective field beats alternatives that include a weaker one.
        let gs = guards(
            r#"(audit.tool.capability == "egress" or gen_ai.tool.name == "a") and audit.data_class == "secret""#,
        )
        .unwrap();
        assert!(matches!(&gs[..], [Guard::Value(g)] if g.field == CoreField::DataClass));
    }

    #[test]
    fn guards_pick_the_most_selective_field() {
        let g = guard(r#"audit.decision == "allow" and gen_ai.tool.name in ("b", "a")"#).unwrap();
        assert_eq!(g.field, CoreField::ToolName);
        assert_eq!(g.values, vec!["a".into(), "b".into()] as Vec<Box<str>>);
        let g = guard(r#"gen_ai.tool.name : "Send_Email" or gen_ai.tool.name : "x""#).unwrap();
        assert!(g.insensitive);
        assert_eq!(g.values.len(), 2);
        assert_eq!(&*g.values[0], "send_email");
        assert!(guard(r#"gen_ai.tool.name : "send_*""#).is_none());
        assert!(guard(r#"gen_ai.tool.name == "a" or audit.decision == "deny""#).is_none());
        // `!=` needs the decision to have a value, and nothing more.
        assert_eq!(
            described(r#"gen_ai.tool.name == "a" or audit.decision != "deny""#),
            ["ToolName=a", "has Core(Decision)"]
        );
        assert!(guards(r#"not gen_ai.tool.name == "a""#).is_none());
        assert_eq!(
            described(r#"gen_ai.tool.name not in ("a")"#),
            ["has Core(ToolName)"]
        );
        assert_eq!(
            guard(r#""x" == audit.target"#).unwrap().field,
            CoreField::Target
        );
    }

    /// Conditions that hold only when a field has a value are guarded by its presence; a
    /// value guard on a core field is preferred to it, and it to the decision.
    #[test]
    fn guards_by_presence() {
        for (src, want) in [
            ("baseline.rate > 0.99", vec!["has Baseline(Rate)"]),
            ("-baseline.rate < 0", vec!["has Baseline(Rate)"]),
            ("baseline.rate * 2 > 1", vec!["has Baseline(Rate)"]),
            (
                "baseline.first_server == true",
                vec!["has Baseline(FirstServer)"],
            ),
            ("baseline.first_server", vec!["has Baseline(FirstServer)"]),
            ("?x.url : \"https://*\"", vec!["has Extra(\"x.url\")"]),
            (
                "?gen_ai.tool.call.arguments.url regex \"h.*\"",
                vec!["has CorePath(Arguments, [\"url\"])"],
            ),
            ("?x.y != null", vec!["has Extra(\"x.y\")"]),
            ("?x.y not in (1, 2)", vec!["has Extra(\"x.y\")"]),
            (
                "stringContains~(?x.d, \"<important>\") or ?x.m != null",
                vec!["has Extra(\"x.d\")", "has Extra(\"x.m\")"],
            ),
            (
                "audit.decision == \"allow\" and (baseline.rate > 1 or baseline.volume > 1)",
                vec!["has Baseline(Rate)", "has Baseline(Volume)"],
            ),
            (
                "audit.tool.capability == \"egress\" and baseline.rate > 1",
                vec!["Capability=egress"],
            ),
            (
                "audit.decision == \"allow\" and audit.result_bytes > 5",
                vec!["Decision=allow"],
            ),
            ("audit.result_bytes > 5", vec!["has Core(ResultBytes)"]),
        ] {
            assert_eq!(described(src), want, "{src}");
        }
        for src in [
            "?x.y == null",
            "not ?x.y : \"a*\"",
            "?x.y in (\"a\", null)",
            "baseline.rate > 1 or true",
            "baseline.rate > 1 or not ?x.y : \"a\"",
        ] {
            assert!(guards(src).is_none(), "{src}: {:?}", guards(src));
        }
    }

    /// A presence guard never hides a match: whenever one of these conditions holds on an
    /// event, one of its guards holds too, over events with each field absent, null, or set
    /// to values of every type.
    #[test]
    fn presence_guards_hold_whenever_the_condition_does() {
        let conditions = [
            "?x.a > 1",
            "?x.a != null",
            "?x.a : \"v*\" or ?x.b == 2",
            "?x.a not in (\"v\")",
            "stringContains(?x.a, \"v\") or ?x.b < 0",
            "?x.a + ?x.b == 3",
            "baseline.rate > 0.5",
            "?x.a",
        ];
        let values = [
            "",
            r#","x.a":null"#,
            r#","x.a":"v""#,
            r#","x.a":1"#,
            r#","x.a":true"#,
            r#","x.a":["v",2]"#,
            r#","x.a":{"k":1}"#,
        ];
        let bvalues = [
            "",
            r#","x.b":null"#,
            r#","x.b":2"#,
            r#","x.b":-1"#,
            r#","x.b":"s""#,
        ];
        let mut holds = 0;
        for src in conditions {
            let e = parse_expr(src).unwrap();
            let p = Compiler::new(&Library::default(), true)
                .condition(&e)
                .unwrap();
            let gs = p.guards().unwrap_or_else(|| panic!("{src} has no guard"));
            for a in values {
                for b in bvalues {
                    let ev = cordon_ingest::decode_native(
                        format!(r#"{{"@timestamp":"2026-11-20T10:00:00Z"{a}{b}}}"#).as_bytes(),
                    )
                    .unwrap();
                    if p.matches(&ev) {
                        holds += 1;
                        assert!(
                            gs.iter().any(|g| match g {
                                Guard::Present(f) => has_value(&ev, f),
                                Guard::Value(_) => unreachable!(),
                            }),
                            "{src} holds on {ev} but no guard does"
                        );
                    }
                }
            }
        }
        assert!(holds > 20, "{holds}");
    }
}
