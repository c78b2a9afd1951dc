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
use std::collections::HashSet;

use cordon_ingest::{Event, FieldRef, FieldValue};
use regex::Regex;
use serde_json::Value as Json;

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
    /// A multi-valued field: list of strings.
    Strs(&'a [Box<str>]),
    /// A multi-valued field: JSON array.
    Array(&'a [Json]),
}

impl<'a> Val<'a> {
    pub(crate) fn from_field(v: FieldValue<'a>) -> Val<'a> {
        match v {
            FieldValue::Missing => Val::Null,
            FieldValue::Str(s) => Val::Str(Cow::Borrowed(s)),
            FieldValue::Int(i) => Val::Int(i),
            FieldValue::Float(f) => Val::Float(f),
            FieldValue::Bool(b) => Val::Bool(b),
            FieldValue::StrList(l) => Val::Strs(l),
            FieldValue::Json(Json::Array(a)) => Val::Array(a),
            FieldValue::Json(_) => Val::Null,
        }
    }

    fn from_json(v: &'a Json) -> Val<'a> {
        Val::from_field(FieldValue::from_json(v))
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
            Val::Strs(l) => l
                .iter()
                .any(|s| one(&Val::Str(Cow::Borrowed(&**s))).is_some()),
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
            Val::Strs(l) => Some(Cow::Owned(format!("{l:?}"))),
            Val::Array(a) => Some(Cow::Owned(Json::Array(a.to_vec()).to_string())),
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
    /// An anchored regular expression.
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Wild(w) => w.matches(s),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

/// The candidates of `in`: strings in a hash set (lowercased for `in~`), numbers, and
/// whether `null` is among them.
#[derive(Clone, Debug, Default)]
pub struct ValueSet {
    /// Strings (lowercased when case-insensitive).
    pub strs: HashSet<Box<str>>,
    /// Numbers.
    pub nums: Vec<f64>,
    /// Booleans.
    pub bools: Vec<bool>,
    /// `null` is a candidate.
    pub null: bool,
    /// Compare strings case-insensitively.
    pub insensitive: bool,
}

impl ValueSet {
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
                    self.strs.contains(s.to_lowercase().as_str())
                } else {
                    self.strs.contains(&**s)
                }
            } else {
                self.strs.contains(&**s)
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
    /// A condition used as a value.
    Pred(Box<Pred>),
}

impl CExpr {
    /// Evaluates the expression against an event.
    pub fn eval<'a>(&'a self, ev: &'a Event) -> Val<'a> {
        match self {
            CExpr::Const(v) => v.clone(),
            CExpr::Field(f) => Val::from_field(ev.field(f)),
            CExpr::Neg(e) => match e.eval(ev) {
                Val::Int(i) => i.checked_neg().map(Val::Int).unwrap_or(Val::Null),
                Val::Float(f) => Val::Float(-f),
                _ => Val::Null,
            },
            CExpr::Arith(op, a, b) => arith(*op, &a.eval(ev), &b.eval(ev)),
            CExpr::Call(f, args) => {
                let vals: Vec<Val<'a>> = args.iter().map(|a| a.eval(ev)).collect();
                f.call(&vals)
            }
            CExpr::Pred(p) => match p.eval(ev) {
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
    if matches!(a, Val::Strs(_) | Val::Array(_)) {
        return a.any(&mut |x| compare(op, x, b));
    }
    if matches!(b, Val::Strs(_) | Val::Array(_)) {
        return b.any(&mut |y| compare(op, a, y));
    }
    let ord = match (a, b) {
        (Val::Null, _) | (_, Val::Null) => return None,
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

impl Pred {
    /// Evaluates the condition: `Some(true)` matches, `Some(false)` does not, `None` is null
    /// (which does not match either).
    pub fn eval(&self, ev: &Event) -> Option<bool> {
        match self {
            Pred::Const(c) => *c,
            Pred::And(ps) => {
                let mut null = false;
                for p in ps.iter() {
                    match p.eval(ev) {
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
                    match p.eval(ev) {
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
            Pred::Not(p) => p.eval(ev).map(|b| !b),
            Pred::Cmp { op, lhs, rhs } => compare(*op, &lhs.eval(ev), &rhs.eval(ev)),
            Pred::IsNull { expr, negate } => {
                let v = expr.eval(ev);
                let null = match &v {
                    Val::Null => true,
                    Val::Strs(l) => l.is_empty(),
                    _ => false,
                };
                Some(null != *negate)
            }
            Pred::Match { lhs, matchers } => lhs.eval(ev).any(&mut |v| match v {
                Val::Str(s) => Some(matchers.iter().any(|m| m.matches(s))),
                Val::Null => None,
                // Patterns apply to strings; numbers are matched on their text.
                other => other
                    .to_text()
                    .map(|s| matchers.iter().any(|m| m.matches(&s))),
            }),
            Pred::In { lhs, set, negated } => {
                let v = lhs.eval(ev);
                set.contains(&v).map(|b| b != *negated)
            }
            Pred::Truthy(e) => match e.eval(ev) {
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
}
