//! The syntax tree of a query, as written (before macros, lists and the schema are applied).
//!
//! The tree covers the whole EQL shape — event queries, `sequence`, `sample` and pipes — so
//! that the sequence, threshold and baseline engines plug into it without another parser.

use std::time::Duration;

/// A position in the query text: byte offsets and the 1-based line and column of the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset after the last character.
    pub end: usize,
    /// 1-based line of `start`.
    pub line: u32,
    /// 1-based column (in characters) of `start`.
    pub col: u32,
}

impl Span {
    /// A span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            end: other.end.max(self.end),
            ..self
        }
    }
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
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
    /// `and`
    And,
    /// `or`
    Or,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

/// The pattern operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    /// `:` — case-insensitive equality with `*`/`?` wildcards.
    Colon,
    /// `like` / `like~` — wildcards, case-sensitive unless `~`.
    Like,
    /// `regex` / `regex~` — a whole-string regular expression.
    Regex,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Literal, Span),
    /// A field (or a macro, resolved later): `a.b`, `` `a b` ``, `?a.b`.
    Field {
        /// Dotted name.
        name: String,
        /// Written with `?`: may be absent from the schema.
        optional: bool,
        /// Written with backticks.
        quoted: bool,
        /// Where.
        span: Span,
    },
    /// `-x` or `not x`.
    Unary {
        /// `true` for `not`, `false` for `-`.
        not: bool,
        /// The operand.
        expr: Box<Expr>,
        /// Where.
        span: Span,
    },
    /// `a op b`.
    Binary {
        /// The operator.
        op: BinOp,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
        /// Where the operator is.
        span: Span,
    },
    /// `a : "p"`, `a like~ ("p", "q")`, `a regex "r"`.
    Match {
        /// The operator.
        op: MatchOp,
        /// Written with `~` (always true for `:`).
        insensitive: bool,
        /// The value tested.
        lhs: Box<Expr>,
        /// The patterns (any may match).
        patterns: Vec<Expr>,
        /// Where the operator is.
        span: Span,
    },
    /// `a in (…)`, `a in~ (…)`, `a not in (…)`.
    In {
        /// The value tested.
        lhs: Box<Expr>,
        /// The candidates.
        list: Vec<Expr>,
        /// `in~`.
        insensitive: bool,
        /// `not in`.
        negated: bool,
        /// Where the operator is.
        span: Span,
    },
    /// A field of an earlier sequence step's event: `$1.audit.target`.
    StepField {
        /// The step, 1-based as written.
        step: usize,
        /// Dotted field name.
        name: String,
        /// Where.
        span: Span,
    },
    /// An earlier step itself, as `lineage($1)` takes it.
    StepRef {
        /// The step, 1-based as written.
        step: usize,
        /// Where.
        span: Span,
    },
    /// `f(a, b)` or `f~(a, b)`.
    Call {
        /// Function name.
        name: String,
        /// Written with `~`.
        insensitive: bool,
        /// Arguments.
        args: Vec<Expr>,
        /// Where the name is.
        span: Span,
    },
}

impl Expr {
    /// Where the expression is (its operator, for operations).
    pub fn span(&self) -> Span {
        match self {
            Expr::Lit(_, s) => *s,
            Expr::StepField { span, .. } | Expr::StepRef { span, .. } => *span,
            Expr::Field { span, .. }
            | Expr::Unary { span, .. }
            | Expr::Binary { span, .. }
            | Expr::Match { span, .. }
            | Expr::In { span, .. }
            | Expr::Call { span, .. } => *span,
        }
    }
}

/// `CATEGORY where CONDITION`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventQuery {
    /// The category; `None` for `any`.
    pub category: Option<String>,
    /// Where the category is.
    pub category_span: Span,
    /// The condition.
    pub condition: Expr,
}

/// One bracketed step of a sequence or sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The step's event query.
    pub query: EventQuery,
    /// Its join keys (`[…] by a, b`).
    pub by: Vec<Expr>,
    /// `![…]`: a missing-event step.
    pub missing: bool,
    /// `with runs=N`.
    pub runs: Option<u32>,
    /// Where the step starts.
    pub span: Span,
}

/// `sequence [by …] [with maxspan=T] [q]… [until [q]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    /// Join keys shared by every step.
    pub by: Vec<Expr>,
    /// Maximum time between the first and the last step.
    pub maxspan: Option<Duration>,
    /// The steps.
    pub steps: Vec<Step>,
    /// An event that ends open partial matches.
    pub until: Option<Step>,
}

/// `sample by … [with maxspan=T] [q] [q]…` (unordered; with `maxspan`, all within that
/// time — Sigma's temporal correlation).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Join keys shared by every step.
    pub by: Vec<Expr>,
    /// Maximum time between the first and the last event.
    pub maxspan: Option<Duration>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// What a threshold counts.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    /// Matching events.
    Count,
    /// Distinct values of a field among matching events.
    Distinct(Expr),
}

/// `threshold [by k…] with window=T, count > N [q]` or `…, distinct(field) >= N [q]`:
/// per key, in a sliding window of event time.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// Keys.
    pub by: Vec<Expr>,
    /// Window length.
    pub window: Duration,
    /// What is counted.
    pub measure: Measure,
    /// Comparison (`>`, `>=`, `==`).
    pub op: BinOp,
    /// The bound.
    pub value: u64,
    /// The events counted.
    pub step: Step,
}

/// A query's body.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryBody {
    /// One event at a time.
    Event(EventQuery),
    /// An ordered chain.
    Sequence(Sequence),
    /// An unordered set.
    Sample(Sample),
    /// A count per key in a sliding window.
    Threshold(Threshold),
}

/// A pipe after the query.
#[derive(Clone, Debug, PartialEq)]
pub enum Pipe {
    /// `| head N`: the first N results.
    Head(u64),
    /// `| tail N`: the last N results.
    Tail(u64),
}

/// A whole query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The body.
    pub body: QueryBody,
    /// Its pipes, in order.
    pub pipes: Vec<Pipe>,
}
