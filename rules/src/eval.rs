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

/// A necessary condition of a predicate: it can only hold when the string core field
/// `field` has one of `values` (lowercased when `insensitive`), or one of the other guards
/// [`Pred::guards`] returned with it holds. Engines index rules by their guards so that an
/// event is tested only against rules it could match.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// The field.
    pub field: cordon_ingest::CoreField,
    /// The values it must take.
    pub values: Vec<Box<str>>,
    /// Compare lowercased.
    pub insensitive: bool,
}

impl Guard {
    /// How selective the guard's field usually is (lower is better).
    fn rank(&self) -> u8 {
        use cordon_ingest::CoreField as F;
        match self.field {
            F::ToolName => 0,
            F::Target | F::ServerAddress => 1,
            F::Method => 2,
            F::DataClass => 3,
            F::ErrorType => 4,
            F::Decision => 6,
            _ => 5,
        }
    }
}

impl CExpr {
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

    /// The most selective necessary condition of this predicate, if it has one: guards on
    /// string core fields (see [`Guard`]), at least one of which holds whenever the predicate
    /// does. Alternatives come from `or` across fields: `is_egress` (a capability or a tool
    /// name) guards a step as well as one field would, where a single-field guard would fall
    /// back to `audit.decision`, which nearly every event satisfies.
    pub fn guards(&self) -> Option<Vec<Guard>> {
        use cordon_ingest::FieldKind;
        let core_str = |e: &CExpr| match e {
            CExpr::Field(FieldRef::Core(f)) if f.kind() == FieldKind::Str => Some(*f),
            _ => None,
        };
        match self {
            // The conjunct whose least selective alternative is the most selective.
            Pred::And(ps) => ps.iter().filter_map(Pred::guards).min_by_key(|gs| {
                let worst = gs.iter().map(Guard::rank).max().unwrap_or(u8::MAX);
                (worst, gs.iter().map(|g| g.values.len()).sum::<usize>())
            }),
            Pred::Or(ps) => {
                let mut acc: Vec<Guard> = Vec::new();
                for p in ps.iter() {
                    for g in p.guards()? {
                        match acc
                            .iter_mut()
                            .find(|a| a.field == g.field && a.insensitive == g.insensitive)
                        {
                            Some(a) => a.values.extend(g.values),
                            None => acc.push(g),
                        }
                    }
                }
                for a in &mut acc {
                    a.values.sort();
                    a.values.dedup();
                }
                (!acc.is_empty()).then_some(acc)
            }
            Pred::Cmp {
                op: CmpOp::Eq,
                lhs,
                rhs,
            } => {
                let (f, c) = match (core_str(lhs), core_str(rhs)) {
                    (Some(f), None) => (f, rhs),
                    (None, Some(f)) => (f, lhs),
                    _ => return None,
                };
                match c {
                    CExpr::Const(Val::Str(s)) => Some(vec![Guard {
                        field: f,
                        values: vec![s.as_ref().into()],
                        insensitive: false,
                    }]),
                    _ => None,
                }
            }
            Pred::StrEq {
                field,
                value,
                negate: false,
            } => Some(vec![Guard {
                field: *field,
                values: vec![value.clone()],
                insensitive: false,
            }]),
            Pred::In {
                lhs,
                set,
                negated: false,
            } => {
                let f = core_str(lhs)?;
                if set.null || !set.nums.is_empty() || !set.bools.is_empty() {
                    return None;
                }
                let mut values: Vec<Box<str>> = set.strs.iter().cloned().collect();
                values.sort();
                Some(vec![Guard {
                    field: f,
                    values,
                    insensitive: set.insensitive,
                }])
            }
            Pred::Match { lhs, matchers } => {
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
                Some(vec![Guard {
                    field: f,
                    values,
                    insensitive: ci?,
                }])
            }
            _ => None,
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
                Val::Str(s) => Some(matchers.iter().any(|m| m.matches(s))),
                Val::Null => None,
                // Patterns apply to strings; numbers are matched on their text.
                other => other
                    .to_text()
                    .map(|s| matchers.iter().any(|m| m.matches(&s))),
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

    /// The guard of a condition with a single-field guard.
    fn guard(src: &str) -> Option<Guard> {
        guards(src)
            .filter(|g| g.len() == 1)
            .and_then(|mut g| g.pop())
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
        assert_eq!(gs[0].field, CoreField::Capability);
        assert_eq!(gs[1].field, CoreField::ToolName);
        assert_eq!(
            gs[1].values,
            vec!["a".into(), "b".into(), "c".into()] as Vec<Box<str>>
        );
        // A single selective field beats alternatives that include a weaker one.
        let gs = guards(
            r#"(audit.tool.capability == "egress" or gen_ai.tool.name == "a") and audit.data_class == "secret""#,
        )
        .unwrap();
        assert_eq!(gs.len(), 1);
        assert_eq!(gs[0].field, CoreField::DataClass);
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
        assert!(guards(r#"gen_ai.tool.name == "a" or audit.decision != "deny""#).is_none());
        assert!(guard(r#"not gen_ai.tool.name == "a""#).is_none());
        assert!(guard(r#"gen_ai.tool.name not in ("a")"#).is_none());
        assert_eq!(
            guard(r#""x" == audit.target"#).unwrap().field,
            CoreField::Target
        );
    }
}
