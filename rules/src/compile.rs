//! Type-checking and compilation of parsed queries into the predicate form of [`crate::eval`].
//!
//! Checking and compiling are one pass: each node is typed as it is compiled, so an error can
//! point at the operator or literal that caused it. The checks are the ones a rule author needs
//! before a rule silently never fires: an unknown core field (with the closest real name), a
//! typo in a macro name, a string compared with a number, an unknown function or a wrong number
//! of arguments, an invalid regular expression, a pattern operator applied to a number.

use std::collections::HashMap;

use cordon_ingest::{Category, CoreField, FieldKind, FieldRef};
use regex::RegexBuilder;

use crate::ast::*;
use crate::error::QueryError;
use crate::eval::{regex_literal_prefix, ArithOp, CExpr, CmpOp, Matcher, Pred, Val, ValueSet};
use crate::functions::{Func, Ty, NAMES};
use crate::wildcard::Wildcard;

/// A reusable condition (Falco's macros), e.g. `is_secret_read`.
#[derive(Clone, Debug)]
pub struct MacroDef {
    /// The parsed body.
    pub expr: Expr,
}

/// Named lists and macros shared by every rule of a rule set.
#[derive(Clone, Debug, Default)]
pub struct Library {
    /// Macros by name.
    pub macros: HashMap<String, MacroDef>,
    /// Named lists by name (e.g. `egress_allowed_domains`).
    pub lists: HashMap<String, Vec<Literal>>,
}

/// A compiled event query: a category and a condition.
#[derive(Clone, Debug)]
pub struct EventMatcher {
    /// The category the event must have; `None` for `any`.
    pub category: Option<Category>,
    /// The condition.
    pub pred: Pred,
}

impl EventMatcher {
    /// Whether the event matches.
    #[inline]
    pub fn matches(&self, ev: &cordon_ingest::Event) -> bool {
        if let Some(c) = &self.category {
            if ev.category() != c {
                return false;
            }
        }
        self.pred.matches(ev)
    }
}

/// A compiled query.
#[derive(Clone, Debug)]
pub enum CompiledQuery {
    /// A single-event query.
    Event(EventMatcher),
    /// An ordered chain.
    Sequence(crate::stateful::SequenceSpec),
    /// An unordered set (optionally within a span).
    Sample(crate::stateful::SampleSpec),
    /// A count per key in a sliding window.
    Threshold(crate::stateful::ThresholdSpec),
}

/// A compiled query and its pipes.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The query.
    pub query: CompiledQuery,
    /// Pipes (`head`, `tail`).
    pub pipes: Vec<Pipe>,
}

/// Compiles queries against a library, with or without the event schema.
pub struct Compiler<'l> {
    lib: &'l Library,
    pub(crate) schema: bool,
    expanding: Vec<String>,
    /// Inside step N (0-based) of a sequence: `$1`…`$N` may be referenced.
    pub(crate) step: Option<usize>,
}

impl<'l> Compiler<'l> {
    /// A compiler. With `schema` true, field names are checked against Cordon's event schema;
    /// with false (ad-hoc hunts over arbitrary JSON) any name is a field.
    pub fn new(lib: &'l Library, schema: bool) -> Compiler<'l> {
        Compiler {
            lib,
            schema,
            expanding: Vec::new(),
            step: None,
        }
    }

    /// Compiles a whole query.
    pub fn query(&mut self, q: &Query) -> Result<Compiled, QueryError> {
        let query = match &q.body {
            QueryBody::Event(e) => CompiledQuery::Event(self.event_query(e)?),
            QueryBody::Sequence(s) => CompiledQuery::Sequence(self.sequence(s)?),
            QueryBody::Sample(s) => CompiledQuery::Sample(self.sample(s)?),
            QueryBody::Threshold(t) => CompiledQuery::Threshold(self.threshold(t)?),
        };
        Ok(Compiled {
            query,
            pipes: q.pipes.clone(),
        })
    }

    /// Compiles `CATEGORY where CONDITION`.
    pub fn event_query(&mut self, q: &EventQuery) -> Result<EventMatcher, QueryError> {
        let category = match &q.category {
            None => None,
            Some(c) if self.schema => {
                if !Category::BUILTIN.contains(&c.as_str()) {
                    let mut e = QueryError::new(
                        q.category_span,
                        format!(
                            "unknown event category `{c}`: expected one of any, {}",
                            Category::BUILTIN.join(", ")
                        ),
                    );
                    if let Some(s) = closest(c, Category::BUILTIN.iter().copied()) {
                        e = e.with_help(format!("did you mean `{s}`?"));
                    }
                    return Err(e);
                }
                Some(match c.as_str() {
                    "tool" => Category::Tool,
                    "resource" => Category::Resource,
                    "prompt" => Category::Prompt,
                    "list" => Category::List,
                    "session" => Category::Session,
                    _ => Category::Other,
                })
            }
            Some(c) => Some(Category::Custom(c.as_str().into())),
        };
        let pred = self.condition(&q.condition)?;
        Ok(EventMatcher { category, pred })
    }

    /// Compiles a condition (a macro body, an exception, a `where` clause).
    pub fn condition(&mut self, e: &Expr) -> Result<Pred, QueryError> {
        self.pred(e)
    }

    /// Resolves and type-checks a field name (suppression keys, join keys).
    pub fn field_ref(&mut self, name: &str, span: Span) -> Result<FieldRef, QueryError> {
        let optional = name.starts_with('?');
        let name = name.trim_start_matches('?');
        match self.field(name, optional, false, span)? {
            FieldOrMacro::Field(CExpr::Field(r), _) => Ok(r),
            _ => Err(QueryError::new(
                span,
                format!("`{name}` is a macro, not a field"),
            )),
        }
    }

    fn pred(&mut self, e: &Expr) -> Result<Pred, QueryError> {
        match e {
            Expr::Lit(Literal::Bool(b), _) => Ok(Pred::Const(Some(*b))),
            Expr::Lit(Literal::Null, _) => Ok(Pred::Const(None)),
            Expr::Lit(l, span) => Err(QueryError::new(
                *span,
                format!("expected a condition, found {}", describe_lit(l)),
            )),
            Expr::Field {
                name,
                optional,
                quoted,
                span,
            } => match self.field(name, *optional, *quoted, *span)? {
                FieldOrMacro::Macro(p) => Ok(p),
                FieldOrMacro::Field(c, ty) => {
                    if ty.fits(Ty::Bool) {
                        Ok(Pred::Truthy(c))
                    } else {
                        Err(QueryError::new(
                            *span,
                            format!("`{name}` is a {}, not a condition", ty.name()),
                        )
                        .with_help(format!(
                            "compare it, e.g. `{name} == …` or `{name} != null`"
                        )))
                    }
                }
            },
            Expr::StepField { span, .. } | Expr::StepRef { span, .. } => Err(QueryError::new(
                *span,
                "a step reference is a value, not a condition: compare it, e.g. `$1.audit.target != audit.target`",
            )),
            Expr::Unary {
                not: true, expr, ..
            } => Ok(Pred::Not(Box::new(self.pred(expr)?))),
            Expr::Unary {
                not: false, span, ..
            } => Err(QueryError::new(
                *span,
                "expected a condition, found a negative number",
            )),
            Expr::Binary {
                op: op @ (BinOp::And | BinOp::Or),
                lhs,
                rhs,
                ..
            } => {
                let mut parts = Vec::new();
                for side in [lhs, rhs] {
                    match (self.pred(side)?, op) {
                        (Pred::And(ps), BinOp::And) | (Pred::Or(ps), BinOp::Or) => {
                            parts.extend(ps.into_vec())
                        }
                        (p, _) => parts.push(p),
                    }
                }
                // Three-valued `and`/`or` are commutative: evaluate the cheapest parts first so
                // that short-circuiting skips the expensive ones (regexes, paths, functions).
                parts.sort_by_key(Pred::cost);
                Ok(if *op == BinOp::And {
                    Pred::And(parts.into())
                } else {
                    Pred::Or(parts.into())
                })
            }
            Expr::Binary { op, lhs, rhs, span } => {
                let cmp = match op {
                    BinOp::Eq => CmpOp::Eq,
                    BinOp::Ne => CmpOp::Ne,
                    BinOp::Lt => CmpOp::Lt,
                    BinOp::Le => CmpOp::Le,
                    BinOp::Gt => CmpOp::Gt,
                    BinOp::Ge => CmpOp::Ge,
                    _ => {
                        return Err(QueryError::new(
                            *span,
                            format!(
                                "expected a condition, found an arithmetic `{}`",
                                op.symbol()
                            ),
                        ))
                    }
                };
                self.comparison(cmp, lhs, rhs, *span)
            }
            Expr::Match {
                op,
                insensitive,
                lhs,
                patterns,
                span,
            } => {
                let (lhs_c, ty) = self.value(lhs)?;
                if !ty.fits(Ty::Str) {
                    return Err(QueryError::new(
                        *span,
                        format!(
                            "`{}` applies to strings, but {} is a {}",
                            match_symbol(*op, *insensitive),
                            describe(lhs),
                            ty.name()
                        ),
                    ));
                }
                let mut matchers = Vec::new();
                for lit in self.literal_list(patterns)? {
                    let (pat, span) = match lit {
                        (Literal::Str(s), span) => (s, span),
                        (other, span) => {
                            return Err(QueryError::new(
                                span,
                                format!(
                                    "`{}` needs string patterns, found {}",
                                    match_symbol(*op, *insensitive),
                                    describe_lit(&other)
                                ),
                            ))
                        }
                    };
                    matchers.push(match op {
                        MatchOp::Colon | MatchOp::Like => {
                            Matcher::Wild(Wildcard::new(&pat, *insensitive))
                        }
                        MatchOp::Regex => Matcher::Regex(
                            RegexBuilder::new(&anchored_regex(&pat))
                                .case_insensitive(*insensitive)
                                .dot_matches_new_line(true)
                                .size_limit(1 << 20)
                                .build()
                                .map_err(|e| {
                                    QueryError::new(
                                        span,
                                        format!("invalid regular expression: {e}"),
                                    )
                                })?,
                            if *insensitive {
                                None
                            } else {
                                regex_literal_prefix(&pat)
                            },
                        ),
                    });
                }
                Ok(Pred::Match {
                    lhs: lhs_c,
                    matchers: matchers.into(),
                })
            }
            Expr::In {
                lhs,
                list,
                insensitive,
                negated,
                ..
            } => {
                let (lhs_c, ty) = self.value(lhs)?;
                let mut set = ValueSet {
                    insensitive: *insensitive,
                    ..ValueSet::default()
                };
                for (lit, lspan) in self.literal_list(list)? {
                    let lty = lit_ty(&lit);
                    if !lty.fits(ty) && !ty.fits(lty) {
                        return Err(QueryError::new(
                            lspan,
                            format!(
                                "cannot look for {} in {}, which is a {}",
                                describe_lit(&lit),
                                describe(lhs),
                                ty.name()
                            ),
                        ));
                    }
                    match lit {
                        Literal::Null => set.null = true,
                        Literal::Bool(b) => set.bools.push(b),
                        Literal::Int(i) => set.nums.push(i as f64),
                        Literal::Float(f) => set.nums.push(f),
                        Literal::Str(s) => {
                            let s = if *insensitive { s.to_lowercase() } else { s };
                            set.strs.insert(s.into());
                        }
                    }
                }
                set.seal();
                Ok(Pred::In {
                    lhs: lhs_c,
                    set: Box::new(set),
                    negated: *negated,
                })
            }
            Expr::Call { name, span, .. } => {
                let (c, ty) = self.value(e)?;
                if ty.fits(Ty::Bool) {
                    Ok(Pred::Truthy(c))
                } else {
                    Err(QueryError::new(
                        *span,
                        format!("`{name}` returns a {}, not a condition", ty.name()),
                    ))
                }
            }
        }
    }

    fn comparison(
        &mut self,
        op: CmpOp,
        lhs: &Expr,
        rhs: &Expr,
        span: Span,
    ) -> Result<Pred, QueryError> {
        let is_null = |e: &Expr| matches!(e, Expr::Lit(Literal::Null, _));
        if is_null(lhs) || is_null(rhs) {
            let other = if is_null(lhs) { rhs } else { lhs };
            return match op {
                CmpOp::Eq | CmpOp::Ne => Ok(Pred::IsNull {
                    expr: self.value(other)?.0,
                    negate: op == CmpOp::Ne,
                }),
                _ => Err(QueryError::new(
                    span,
                    "only `==` and `!=` can compare with null",
                )),
            };
        }
        let (l, lt) = self.value(lhs)?;
        let (r, rt) = self.value(rhs)?;
        let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        if !(lt.fits(rt) || rt.fits(lt)) {
            return Err(QueryError::new(
                span,
                format!(
                    "cannot compare {} ({}) with {} ({})",
                    describe(lhs),
                    lt.name(),
                    describe(rhs),
                    rt.name()
                ),
            ));
        }
        if ordering && (lt == Ty::Bool || rt == Ty::Bool) {
            return Err(QueryError::new(span, "booleans cannot be ordered"));
        }
        // The commonest condition, `field == "literal"`, gets a node of its own.
        if let (CmpOp::Eq | CmpOp::Ne, CExpr::Field(FieldRef::Core(f)), CExpr::Const(Val::Str(s)))
        | (CmpOp::Eq | CmpOp::Ne, CExpr::Const(Val::Str(s)), CExpr::Field(FieldRef::Core(f))) =
            (op, &l, &r)
        {
            if f.kind() == FieldKind::Str {
                return Ok(Pred::StrEq {
                    field: *f,
                    value: s.as_ref().into(),
                    negate: op == CmpOp::Ne,
                });
            }
        }
        Ok(Pred::Cmp { op, lhs: l, rhs: r })
    }

    fn value(&mut self, e: &Expr) -> Result<(CExpr, Ty), QueryError> {
        match e {
            Expr::Lit(l, _) => Ok((CExpr::Const(lit_val(l)), lit_ty(l))),
            Expr::Field {
                name,
                optional,
                quoted,
                span,
            } => match self.field(name, *optional, *quoted, *span)? {
                FieldOrMacro::Macro(p) => Ok((CExpr::Pred(Box::new(p)), Ty::Bool)),
                FieldOrMacro::Field(c, t) => Ok((c, t)),
            },
            Expr::Unary {
                not: false,
                expr,
                span,
            } => {
                let (c, t) = self.value(expr)?;
                if !t.fits(Ty::Num) {
                    return Err(QueryError::new(
                        *span,
                        format!("cannot negate {}, which is a {}", describe(expr), t.name()),
                    ));
                }
                Ok((CExpr::Neg(Box::new(c)), Ty::Num))
            }
            Expr::Binary {
                op: op @ (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod),
                lhs,
                rhs,
                span,
            } => {
                let (l, lt) = self.value(lhs)?;
                let (r, rt) = self.value(rhs)?;
                for (side, t) in [(lhs, lt), (rhs, rt)] {
                    if !t.fits(Ty::Num) {
                        return Err(QueryError::new(
                            *span,
                            format!(
                                "`{}` needs numbers, but {} is a {}",
                                op.symbol(),
                                describe(side),
                                t.name()
                            ),
                        ));
                    }
                }
                let aop = match op {
                    BinOp::Add => ArithOp::Add,
                    BinOp::Sub => ArithOp::Sub,
                    BinOp::Mul => ArithOp::Mul,
                    BinOp::Div => ArithOp::Div,
                    _ => ArithOp::Mod,
                };
                Ok((CExpr::Arith(aop, Box::new(l), Box::new(r)), Ty::Num))
            }
            Expr::StepField { step, name, span } => {
                let k = self.step_index(*step, *span)?;
                let (c, ty) = match self.field(name, false, false, *span)? {
                    FieldOrMacro::Field(CExpr::Field(r), ty) => (r, ty),
                    _ => {
                        return Err(QueryError::new(
                            *span,
                            format!("`${step}.{name}`: `{name}` is a macro, not a field"),
                        ))
                    }
                };
                Ok((CExpr::StepField(k, c), ty))
            }
            Expr::StepRef { step, span } => Err(QueryError::new(
                *span,
                format!(
                    "`${step}` alone is not a value: write `${step}.FIELD`, or `lineage(${step})`"
                ),
            )),
            Expr::Call {
                name, args, span, ..
            } if name == "lineage" => match args.as_slice() {
                [Expr::StepRef { step, span }] => {
                    Ok((CExpr::Lineage(self.step_index(*step, *span)?), Ty::Num))
                }
                _ => Err(QueryError::new(
                    *span,
                    "`lineage` takes one earlier step, as in `lineage($1) > 0`",
                )),
            },
            Expr::Call {
                name,
                insensitive,
                args,
                span,
            } => {
                let func = Func::lookup(name, *insensitive).map_err(|msg| {
                    let e = QueryError::new(*span, msg);
                    match closest(name, NAMES.iter().copied()) {
                        Some(s) if s != name => e.with_help(format!("did you mean `{s}`?")),
                        _ => e,
                    }
                })?;
                let sig = func.signature();
                let max = if sig.rest.is_some() {
                    usize::MAX
                } else {
                    sig.params.len()
                };
                if args.len() < sig.required || args.len() > max {
                    let expected = if sig.rest.is_some() {
                        format!("at least {}", sig.required)
                    } else if sig.required == sig.params.len() {
                        format!("{}", sig.required)
                    } else {
                        format!("{} to {}", sig.required, sig.params.len())
                    };
                    return Err(QueryError::new(
                        *span,
                        format!(
                            "`{name}` takes {expected} argument{}, found {}",
                            if expected == "1" { "" } else { "s" },
                            args.len()
                        ),
                    ));
                }
                let mut compiled = Vec::with_capacity(args.len());
                for (i, a) in args.iter().enumerate() {
                    let want = sig.params.get(i).copied().or(sig.rest).unwrap_or(Ty::Any);
                    let (c, t) = self.value(a)?;
                    if !t.fits(want) {
                        return Err(QueryError::new(
                            a.span(),
                            format!(
                                "argument {} of `{name}` must be a {}, found {} ({})",
                                i + 1,
                                want.name(),
                                describe(a),
                                t.name()
                            ),
                        ));
                    }
                    compiled.push(c);
                }
                Ok((CExpr::Call(func, compiled.into()), sig.ret))
            }
            other => Ok((CExpr::Pred(Box::new(self.pred(other)?)), Ty::Bool)),
        }
    }

    fn field(
        &mut self,
        name: &str,
        optional: bool,
        quoted: bool,
        span: Span,
    ) -> Result<FieldOrMacro, QueryError> {
        if !optional && !quoted {
            if let Some(m) = self.lib.macros.get(name) {
                if self.expanding.iter().any(|n| n == name) {
                    return Err(QueryError::new(
                        span,
                        format!(
                            "macro `{name}` refers to itself ({} → {name})",
                            self.expanding.join(" → ")
                        ),
                    ));
                }
                self.expanding.push(name.to_owned());
                let body = m.expr.clone();
                let r = self.pred(&body);
                self.expanding.pop();
                return r.map(FieldOrMacro::Macro).map_err(|e| {
                    QueryError::new(span, format!("in macro `{name}`: {}", e.message))
                });
            }
            if self.lib.lists.contains_key(name) {
                return Err(QueryError::new(
                    span,
                    format!("`{name}` is a named list: use it after `in`, `:`, `like` or `regex`"),
                ));
            }
        }
        if !self.schema {
            return Ok(FieldOrMacro::Field(
                CExpr::Field(FieldRef::Extra(name.into())),
                Ty::Any,
            ));
        }
        if name == "event.category" {
            return Ok(FieldOrMacro::Field(
                CExpr::Field(FieldRef::Category),
                Ty::Str,
            ));
        }
        let r = FieldRef::resolve(name, true);
        let ty = match &r {
            FieldRef::Core(f) => match f.kind() {
                FieldKind::Str | FieldKind::Timestamp => Ty::Str,
                FieldKind::Int | FieldKind::Float => Ty::Num,
                FieldKind::Fingerprints => Ty::StrList,
                FieldKind::Json => Ty::Any,
            },
            FieldRef::CorePath(..) | FieldRef::Category => Ty::Any,
            FieldRef::Baseline(b) => {
                if b.is_score() {
                    Ty::Num
                } else {
                    Ty::Bool
                }
            }
            FieldRef::Extra(_) => {
                if !optional {
                    self.check_unknown(name, quoted, span)?;
                }
                Ty::Any
            }
        };
        Ok(FieldOrMacro::Field(CExpr::Field(r), ty))
    }

    fn check_unknown(&self, name: &str, quoted: bool, span: Span) -> Result<(), QueryError> {
        let in_namespace = CoreField::NAMESPACES.iter().any(|ns| name.starts_with(ns));
        if in_namespace {
            let mut e = QueryError::new(span, format!("unknown field `{name}`"));
            let known = CoreField::ALL
                .iter()
                .map(|f| f.name())
                .chain(cordon_ingest::BaselineField::ALL.iter().map(|(n, _)| *n));
            match closest(name, known) {
                Some(s) => {
                    e = e.with_help(format!(
                        "did you mean `{s}`? Write `?{name}` for a field outside the schema"
                    ))
                }
                None => e = e.with_help(format!("write `?{name}` for a field outside the schema")),
            }
            return Err(e);
        }
        if !name.contains('.') && !quoted && !name.starts_with('@') {
            let mut e = QueryError::new(span, format!("unknown field or macro `{name}`"));
            let candidates = self
                .lib
                .macros
                .keys()
                .map(String::as_str)
                .chain(CoreField::ALL.iter().map(|f| f.name()));
            e = match closest(name, candidates) {
                Some(s) => e.with_help(format!("did you mean `{s}`?")),
                None => e.with_help(format!("write `?{name}` for a field outside the schema")),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Literals of a list, with named lists expanded.
    fn literal_list(&self, items: &[Expr]) -> Result<Vec<(Literal, Span)>, QueryError> {
        let mut out = Vec::new();
        for item in items {
            match item {
                Expr::Lit(l, s) => out.push((l.clone(), *s)),
                Expr::Field {
                    name,
                    optional: false,
                    quoted: false,
                    span,
                } if self.lib.lists.contains_key(name) => {
                    out.extend(self.lib.lists[name].iter().map(|l| (l.clone(), *span)));
                }
                Expr::Field {
                    name,
                    optional: false,
                    quoted: false,
                    span,
                } if !name.contains('.') => {
                    let mut e = QueryError::new(
                        *span,
                        format!("unknown named list `{name}`: lists hold literals or named lists"),
                    );
                    if let Some(s) = closest(name, self.lib.lists.keys().map(String::as_str)) {
                        e = e.with_help(format!("did you mean `{s}`?"));
                    }
                    return Err(e);
                }
                other => {
                    return Err(QueryError::new(
                        other.span(),
                        format!(
                            "expected a literal or a named list here, found {}",
                            describe(other)
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }
}

enum FieldOrMacro {
    Field(CExpr, Ty),
    Macro(Pred),
}

fn match_symbol(op: MatchOp, insensitive: bool) -> &'static str {
    match (op, insensitive) {
        (MatchOp::Colon, _) => ":",
        (MatchOp::Like, false) => "like",
        (MatchOp::Like, true) => "like~",
        (MatchOp::Regex, false) => "regex",
        (MatchOp::Regex, true) => "regex~",
    }
}

fn lit_val(l: &Literal) -> Val<'static> {
    match l {
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Int(i) => Val::Int(*i),
        Literal::Float(f) => Val::Float(*f),
        Literal::Str(s) => Val::Str(s.clone().into()),
    }
}

fn lit_ty(l: &Literal) -> Ty {
    match l {
        Literal::Null => Ty::Null,
        Literal::Bool(_) => Ty::Bool,
        Literal::Int(_) | Literal::Float(_) => Ty::Num,
        Literal::Str(_) => Ty::Str,
    }
}

fn describe_lit(l: &Literal) -> String {
    match l {
        Literal::Null => "null".into(),
        Literal::Bool(b) => format!("the boolean {b}"),
        Literal::Int(i) => format!("the number {i}"),
        Literal::Float(f) => format!("the number {f}"),
        Literal::Str(s) => format!("the string {s:?}"),
    }
}

fn describe(e: &Expr) -> String {
    match e {
        Expr::Lit(l, _) => describe_lit(l),
        Expr::Field { name, .. } => format!("`{name}`"),
        Expr::Call { name, .. } => format!("`{name}(…)`"),
        Expr::StepField { step, name, .. } => format!("`${step}.{name}`"),
        _ => "the expression".into(),
    }
}

/// EQL regexes match the whole value. `^(?:P)$` says so; but the frequent `.*X.*` is a
/// substring search, which the regex engine runs far faster unanchored (with a literal
/// prefilter), so it is compiled as `X` without anchors. `.` matches newlines, as in EQL.
pub(crate) fn anchored_regex(pattern: &str) -> String {
    if let Some(inner) = pattern
        .strip_prefix(".*")
        .and_then(|p| p.strip_suffix(".*"))
    {
        let escaped_tail = inner.ends_with('\\') && !inner.ends_with("\\\\");
        if !inner.is_empty() && !inner.contains('|') && !escaped_tail {
            return format!("(?:{inner})");
        }
    }
    format!("^(?:{pattern})$")
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 5) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
