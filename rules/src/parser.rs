//! Lexer and recursive-descent parser for the EQL-compatible query language.
//!
//! Hand-written rather than generated: error messages are the user interface of a rule
//! language, and a hand-written parser can say "expected `where` after the category `tool`" at
//! the exact column instead of listing grammar symbols. Precedence, lowest first: `or`, `and`,
//! `not`, comparisons and pattern operators, `+ -`, `* / %`, unary `-`.

use std::time::Duration;

use crate::ast::*;
use crate::error::QueryError;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String, bool),
    Step(usize, Option<String>),
    Quoted(String),
    Str(String),
    Int(i64),
    Float(f64),
    Unit(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Pipe,
    Colon,
    Question,
    Bang,
    Eq,
    EqEq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s, t) => format!("`{s}{}`", if *t { "~" } else { "" }),
            Tok::Quoted(s) => format!("`{s}`"),
            Tok::Step(n, Some(f)) => format!("`${n}.{f}`"),
            Tok::Step(n, None) => format!("`${n}`"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Int(i) => format!("the number {i}"),
            Tok::Float(f) => format!("the number {f}"),
            Tok::Unit(u) => format!("`{u}`"),
            Tok::Eof => "the end of the query".into(),
            other => format!("`{}`", other.symbol()),
        }
    }
    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::Colon => ":",
            Tok::Question => "?",
            Tok::Bang => "!",
            Tok::Eq => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            _ => "?",
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
    col: u32,
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '@'
}
fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '.'
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }
    fn peek2(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
        it.next();
        it.next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn here(&self) -> Span {
        Span {
            start: self.pos,
            end: self.pos,
            line: self.line,
            col: self.col,
        }
    }
    fn err(&self, span: Span, msg: impl Into<String>) -> QueryError {
        QueryError::new(span, msg)
    }

    fn tokens(mut self) -> Result<Vec<(Tok, Span)>, QueryError> {
        let mut out = Vec::new();
        loop {
            // Whitespace and comments (`//` to end of line, `/* … */`).
            loop {
                match self.peek() {
                    Some(c) if c.is_whitespace() => {
                        self.bump();
                    }
                    Some('/') if self.peek2() == Some('/') => {
                        while !matches!(self.peek(), None | Some('\n')) {
                            self.bump();
                        }
                    }
                    Some('/') if self.peek2() == Some('*') => {
                        let start = self.here();
                        self.bump();
                        self.bump();
                        loop {
                            match self.bump() {
                                None => return Err(self.err(start, "unterminated comment `/*`")),
                                Some('*') if self.peek() == Some('/') => {
                                    self.bump();
                                    break;
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => break,
                }
            }
            let start = self.here();
            let Some(c) = self.peek() else {
                out.push((Tok::Eof, start));
                return Ok(out);
            };
            let tok = match c {
                '"' => self.string(start)?,
                '\'' => {
                    return Err(self.err(
                        start,
                        "single-quoted strings are not EQL: use double quotes (\"…\")",
                    ))
                }
                '`' => {
                    self.bump();
                    let mut s = String::new();
                    loop {
                        match self.bump() {
                            None | Some('\n') => {
                                return Err(
                                    self.err(start, "unterminated backtick-quoted field name")
                                )
                            }
                            Some('`') if self.peek() == Some('`') => {
                                self.bump();
                                s.push('`');
                            }
                            Some('`') => break,
                            Some(c) => s.push(c),
                        }
                    }
                    if s.is_empty() {
                        return Err(self.err(start, "empty backtick-quoted field name"));
                    }
                    Tok::Quoted(s)
                }
                '$' => {
                    self.bump();
                    let d0 = self.pos;
                    while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                        self.bump();
                    }
                    let n: usize = self.src[d0..self.pos].parse().map_err(|_| {
                        self.err(
                            start,
                            "expected a step number after `$`, as in `$1.audit.target`",
                        )
                    })?;
                    if n == 0 {
                        return Err(self.err(start, "steps are numbered from `$1`"));
                    }
                    if self.peek() == Some('.') {
                        self.bump();
                        let f0 = self.pos;
                        while matches!(self.peek(), Some(c) if ident_char(c)) {
                            self.bump();
                        }
                        let name = self.src[f0..self.pos].to_owned();
                        if name.is_empty() || name.ends_with('.') {
                            return Err(
                                self.err(start, format!("expected a field name after `${n}.`"))
                            );
                        }
                        Tok::Step(n, Some(name))
                    } else {
                        Tok::Step(n, None)
                    }
                }
                c if c.is_ascii_digit() => self.number(start)?,
                c if ident_start(c) => {
                    let s0 = self.pos;
                    while matches!(self.peek(), Some(c) if ident_char(c)) {
                        self.bump();
                    }
                    let name = self.src[s0..self.pos].to_owned();
                    if name.ends_with('.') || name.contains("..") {
                        return Err(self.err(start, format!("malformed field name `{name}`")));
                    }
                    let tilde = self.peek() == Some('~');
                    if tilde {
                        self.bump();
                    }
                    Tok::Ident(name, tilde)
                }
                _ => {
                    self.bump();
                    let two = |l: &mut Self, next: char, yes: Tok, no: Tok| {
                        if l.peek() == Some(next) {
                            l.bump();
                            yes
                        } else {
                            no
                        }
                    };
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        ',' => Tok::Comma,
                        '|' => Tok::Pipe,
                        ':' => Tok::Colon,
                        '?' => Tok::Question,
                        '+' => Tok::Plus,
                        '-' => Tok::Minus,
                        '*' => Tok::Star,
                        '/' => Tok::Slash,
                        '%' => Tok::Percent,
                        '=' => two(&mut self, '=', Tok::EqEq, Tok::Eq),
                        '!' => two(&mut self, '=', Tok::Ne, Tok::Bang),
                        '<' => two(&mut self, '=', Tok::Le, Tok::Lt),
                        '>' => two(&mut self, '=', Tok::Ge, Tok::Gt),
                        other => {
                            return Err(self.err(start, format!("unexpected character {other:?}")))
                        }
                    }
                }
            };
            let mut span = start;
            span.end = self.pos;
            out.push((tok, span));
        }
    }

    fn string(&mut self, start: Span) -> Result<Tok, QueryError> {
        if self.src[self.pos..].starts_with("\"\"\"") {
            for _ in 0..3 {
                self.bump();
            }
            let body_start = self.pos;
            loop {
                if self.src[self.pos..].starts_with("\"\"\"") {
                    let s = self.src[body_start..self.pos].to_owned();
                    for _ in 0..3 {
                        self.bump();
                    }
                    return Ok(Tok::Str(s));
                }
                if self.bump().is_none() {
                    return Err(self.err(start, "unterminated raw string `\"\"\"`"));
                }
            }
        }
        self.bump();
        let mut s = String::new();
        loop {
            let at = self.here();
            match self.bump() {
                None | Some('\n') => {
                    return Err(self.err(start, "unterminated string: missing closing `\"`"))
                }
                Some('"') => return Ok(Tok::Str(s)),
                Some('\\') => match self.bump() {
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('\'') => s.push('\''),
                    Some('n') => s.push('\n'),
                    Some('r') => s.push('\r'),
                    Some('t') => s.push('\t'),
                    Some('u') if self.peek() == Some('{') => {
                        self.bump();
                        let h0 = self.pos;
                        while matches!(self.peek(), Some(c) if c.is_ascii_hexdigit()) {
                            self.bump();
                        }
                        let hex = &self.src[h0..self.pos];
                        let ch = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                        match (ch, self.bump()) {
                            (Some(ch), Some('}')) if (2..=8).contains(&hex.len()) => s.push(ch),
                            _ => {
                                return Err(
                                    self.err(at, "invalid unicode escape: expected \\u{XXXX}")
                                )
                            }
                        }
                    }
                    Some(other) => {
                        return Err(self.err(at, format!("unknown escape sequence `\\{other}`")))
                    }
                    None => return Err(self.err(start, "unterminated string")),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self, start: Span) -> Result<Tok, QueryError> {
        let s0 = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.bump();
        }
        let mut float = false;
        if self.peek() == Some('.') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
            float = true;
            self.bump();
            while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                self.bump();
            }
        }
        if matches!(self.peek(), Some('e' | 'E'))
            && matches!(self.peek2(), Some(c) if c.is_ascii_digit() || c == '-' || c == '+')
        {
            float = true;
            self.bump();
            if matches!(self.peek(), Some('-' | '+')) {
                self.bump();
            }
            while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                self.bump();
            }
        }
        if matches!(self.peek(), Some(c) if c.is_ascii_alphabetic()) {
            while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric()) {
                self.bump();
            }
            return Ok(Tok::Unit(self.src[s0..self.pos].to_owned()));
        }
        let text = &self.src[s0..self.pos];
        if float {
            text.parse()
                .map(Tok::Float)
                .map_err(|_| self.err(start, format!("invalid number `{text}`")))
        } else {
            text.parse()
                .map(Tok::Int)
                .map_err(|_| self.err(start, format!("integer `{text}` is out of range")))
        }
    }
}

/// Parses a whole query (event query, sequence or sample, with pipes).
pub fn parse_query(src: &str) -> Result<Query, QueryError> {
    let mut p = Parser::new(src)?;
    let q = p.query()?;
    p.expect_eof()?;
    Ok(q)
}

/// Parses a bare condition (a macro body or an exception).
pub fn parse_expr(src: &str) -> Result<Expr, QueryError> {
    let mut p = Parser::new(src)?;
    let e = p.expr()?;
    p.expect_eof()?;
    Ok(e)
}

/// Maximum nesting depth of parentheses and operators, so that hostile input cannot overflow
/// the stack.
const MAX_DEPTH: usize = 200;

struct Parser {
    toks: Vec<(Tok, Span)>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn new(src: &str) -> Result<Parser, QueryError> {
        let toks = Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
        }
        .tokens()?;
        Ok(Parser {
            toks,
            i: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn span(&self) -> Span {
        self.toks[self.i].1
    }
    fn next(&mut self) -> (Tok, Span) {
        let t = self.toks[self.i].clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s, false) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.next();
            true
        } else {
            false
        }
    }
    fn unexpected(&self, expected: &str) -> QueryError {
        QueryError::new(
            self.span(),
            format!("expected {expected}, found {}", self.peek().describe()),
        )
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<Span, QueryError> {
        if *self.peek() == t {
            Ok(self.next().1)
        } else {
            Err(self.unexpected(what))
        }
    }
    fn expect_eof(&mut self) -> Result<(), QueryError> {
        match self.peek() {
            Tok::Eof => Ok(()),
            Tok::RParen => Err(QueryError::new(
                self.span(),
                "unbalanced parentheses: this `)` has no matching `(`",
            )),
            _ => Err(self.unexpected("an operator or the end of the query")),
        }
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::new(self.span(), "query is nested too deeply"));
        }
        Ok(())
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        let body = if self.eat_kw("sequence") {
            QueryBody::Sequence(self.sequence()?)
        } else if self.eat_kw("sample") {
            QueryBody::Sample(self.sample()?)
        } else if self.eat_kw("threshold") {
            QueryBody::Threshold(self.threshold()?)
        } else {
            QueryBody::Event(self.event_query()?)
        };
        let mut pipes = Vec::new();
        while *self.peek() == Tok::Pipe {
            self.next();
            let (tok, span) = self.next();
            let name = match tok {
                Tok::Ident(n, false) => n,
                other => {
                    return Err(QueryError::new(
                        span,
                        format!(
                            "expected a pipe (`head` or `tail`), found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            let n = match self.next() {
                (Tok::Int(n), _) if n >= 0 => n as u64,
                (other, s) => {
                    return Err(QueryError::new(
                        s,
                        format!(
                            "expected a count after `{name}`, found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            pipes.push(match name.as_str() {
                "head" => Pipe::Head(n),
                "tail" => Pipe::Tail(n),
                _ => {
                    return Err(QueryError::new(
                        span,
                        format!("unknown pipe `{name}`: expected `head` or `tail`"),
                    ))
                }
            });
        }
        Ok(Query { body, pipes })
    }

    fn event_query(&mut self) -> Result<EventQuery, QueryError> {
        let (tok, span) = self.next();
        let category = match tok {
            Tok::Ident(c, false) if c == "any" => None,
            Tok::Ident(c, false) => Some(c),
            Tok::Str(c) => Some(c),
            Tok::Quoted(c) => Some(c),
            other => {
                return Err(QueryError::new(
                    span,
                    format!(
                        "expected an event category (`tool`, `resource`, `any`, …), found {}",
                        other.describe()
                    ),
                ))
            }
        };
        if !self.eat_kw("where") {
            return Err(self.unexpected(&format!(
                "`where` after the category `{}`",
                category.as_deref().unwrap_or("any")
            )));
        }
        let condition = self.expr()?;
        Ok(EventQuery {
            category,
            category_span: span,
            condition,
        })
    }

    fn by_list(&mut self) -> Result<Vec<Expr>, QueryError> {
        let mut keys = vec![self.additive()?];
        while *self.peek() == Tok::Comma {
            self.next();
            keys.push(self.additive()?);
        }
        Ok(keys)
    }

    fn with_params(&mut self) -> Result<(Option<Duration>, Option<u32>), QueryError> {
        let (mut maxspan, mut runs) = (None, None);
        loop {
            let (tok, span) = self.next();
            match tok {
                Tok::Ident(k, false) if k == "maxspan" => {
                    self.expect(Tok::Eq, "`=` after `maxspan`")?;
                    maxspan = Some(self.duration()?);
                }
                Tok::Ident(k, false) if k == "runs" => {
                    self.expect(Tok::Eq, "`=` after `runs`")?;
                    match self.next() {
                        (Tok::Int(n), _) if (1..=100).contains(&n) => runs = Some(n as u32),
                        (_, s) => {
                            return Err(QueryError::new(s, "expected a run count from 1 to 100"))
                        }
                    }
                }
                other => {
                    return Err(QueryError::new(
                        span,
                        format!("expected `maxspan` or `runs`, found {}", other.describe()),
                    ))
                }
            }
            if *self.peek() != Tok::Comma {
                return Ok((maxspan, runs));
            }
            self.next();
        }
    }

    fn duration(&mut self) -> Result<Duration, QueryError> {
        let (tok, span) = self.next();
        let text = match tok {
            Tok::Unit(u) => u,
            Tok::Int(n) => format!("{n}s"),
            other => {
                return Err(QueryError::new(
                    span,
                    format!("expected a duration like `5m`, found {}", other.describe()),
                ))
            }
        };
        parse_duration(&text).ok_or_else(|| {
            QueryError::new(
                span,
                format!("invalid duration `{text}`: use a number and ms, s, m, h or d"),
            )
        })
    }

    fn step(&mut self) -> Result<Step, QueryError> {
        let start = self.span();
        let missing = if *self.peek() == Tok::Bang {
            self.next();
            true
        } else {
            false
        };
        self.expect(Tok::LBracket, "`[` to start a step")?;
        let query = self.event_query()?;
        self.expect(Tok::RBracket, "`]` to close the step")?;
        let mut by = Vec::new();
        let mut runs = None;
        loop {
            if self.eat_kw("by") {
                by = self.by_list()?;
            } else if self.is_kw("with") {
                self.next();
                let (maxspan, r) = self.with_params()?;
                if maxspan.is_some() {
                    return Err(QueryError::new(
                        start,
                        "`maxspan` belongs to the sequence, not to a step",
                    ));
                }
                runs = r;
            } else {
                break;
            }
        }
        Ok(Step {
            query,
            by,
            missing,
            runs,
            span: start,
        })
    }

    fn sequence(&mut self) -> Result<Sequence, QueryError> {
        let mut by = Vec::new();
        let mut maxspan = None;
        loop {
            if self.eat_kw("by") {
                by = self.by_list()?;
            } else if self.eat_kw("with") {
                let (m, runs) = self.with_params()?;
                if runs.is_some() {
                    return Err(QueryError::new(
                        self.span(),
                        "`runs` belongs to a step: `[…] with runs=N`",
                    ));
                }
                maxspan = m;
            } else {
                break;
            }
        }
        let mut steps = Vec::new();
        while matches!(self.peek(), Tok::LBracket | Tok::Bang) {
            steps.push(self.step()?);
        }
        if steps.len() < 2 {
            return Err(self.unexpected("at least two `[…]` steps in the sequence"));
        }
        let until = if self.eat_kw("until") {
            Some(self.step()?)
        } else {
            None
        };
        Ok(Sequence {
            by,
            maxspan,
            steps,
            until,
        })
    }

    fn threshold(&mut self) -> Result<Threshold, QueryError> {
        let by = if self.eat_kw("by") {
            self.by_list()?
        } else {
            Vec::new()
        };
        if !self.eat_kw("with") {
            return Err(self.unexpected("`with window=…, count > N` after `threshold`"));
        }
        let (mut window, mut measure) = (None, None);
        loop {
            let (tok, span) = self.next();
            match tok {
                Tok::Ident(k, false) if k == "window" => {
                    self.expect(Tok::Eq, "`=` after `window`")?;
                    window = Some(self.duration()?);
                }
                Tok::Ident(k, false) if k == "count" || k == "distinct" => {
                    let m = if k == "count" {
                        Measure::Count
                    } else {
                        self.expect(Tok::LParen, "`(` after `distinct`")?;
                        let f = self.additive()?;
                        self.expect(Tok::RParen, "`)` after the field")?;
                        Measure::Distinct(f)
                    };
                    let (op_tok, op_span) = self.next();
                    let op = match op_tok {
                        Tok::Gt => BinOp::Gt,
                        Tok::Ge => BinOp::Ge,
                        Tok::EqEq => BinOp::Eq,
                        other => {
                            return Err(QueryError::new(
                                op_span,
                                format!(
                                    "expected `>`, `>=` or `==` after `{k}`, found {}",
                                    other.describe()
                                ),
                            ))
                        }
                    };
                    let n = match self.next() {
                        (Tok::Int(n), _) if n >= 1 => n as u64,
                        (other, s) => {
                            return Err(QueryError::new(
                                s,
                                format!("expected a positive count, found {}", other.describe()),
                            ))
                        }
                    };
                    measure = Some((m, op, n));
                }
                other => {
                    return Err(QueryError::new(
                        span,
                        format!(
                            "expected `window=…`, `count > N` or `distinct(field) > N`, found {}",
                            other.describe()
                        ),
                    ))
                }
            }
            if *self.peek() != Tok::Comma {
                break;
            }
            self.next();
        }
        let here = self.span();
        let window = window.ok_or_else(|| QueryError::new(here, "a threshold needs `window=…`"))?;
        let (measure, op, value) = measure.ok_or_else(|| {
            QueryError::new(
                here,
                "a threshold needs `count > N` or `distinct(field) > N`",
            )
        })?;
        let step = self.step()?;
        if step.missing {
            return Err(QueryError::new(
                step.span,
                "a threshold counts events: `![…]` makes no sense here",
            ));
        }
        Ok(Threshold {
            by,
            window,
            measure,
            op,
            value,
            step,
        })
    }

    fn sample(&mut self) -> Result<Sample, QueryError> {
        let by = if self.eat_kw("by") {
            self.by_list()?
        } else {
            Vec::new()
        };
        let mut maxspan = None;
        if self.eat_kw("with") {
            let (m, runs) = self.with_params()?;
            if runs.is_some() {
                return Err(QueryError::new(self.span(), "`runs` belongs to sequences"));
            }
            maxspan = m;
        }
        let mut steps = Vec::new();
        while *self.peek() == Tok::LBracket {
            steps.push(self.step()?);
        }
        if steps.len() < 2 {
            return Err(self.unexpected("at least two `[…]` steps in the sample"));
        }
        Ok(Sample { by, maxspan, steps })
    }

    /// `or` (lowest precedence).
    fn expr(&mut self) -> Result<Expr, QueryError> {
        self.enter()?;
        let mut lhs = self.and()?;
        while self.is_kw("or") {
            let span = self.next().1;
            let rhs = self.and()?;
            lhs = bin(BinOp::Or, lhs, rhs, span);
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut lhs = self.not()?;
        while self.is_kw("and") {
            let span = self.next().1;
            let rhs = self.not()?;
            lhs = bin(BinOp::And, lhs, rhs, span);
        }
        Ok(lhs)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.is_kw("not") {
            self.enter()?;
            let span = self.next().1;
            let expr = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Unary {
                not: true,
                expr: Box::new(expr),
                span,
            });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let lhs = self.additive()?;
        let span = self.span();
        let op = match self.peek() {
            Tok::EqEq => Some(BinOp::Eq),
            Tok::Ne => Some(BinOp::Ne),
            Tok::Lt => Some(BinOp::Lt),
            Tok::Le => Some(BinOp::Le),
            Tok::Gt => Some(BinOp::Gt),
            Tok::Ge => Some(BinOp::Ge),
            Tok::Eq => {
                return Err(QueryError::new(
                    span,
                    "`=` is not a comparison: use `==` (or `:` for case-insensitive)",
                ))
            }
            _ => None,
        };
        if let Some(op) = op {
            self.next();
            let rhs = self.additive()?;
            return Ok(bin(op, lhs, rhs, span));
        }
        if *self.peek() == Tok::Colon {
            self.next();
            let patterns = self.value_or_list()?;
            return Ok(Expr::Match {
                op: MatchOp::Colon,
                insensitive: true,
                lhs: Box::new(lhs),
                patterns,
                span,
            });
        }
        if let Tok::Ident(kw, tilde) = self.peek().clone() {
            let kwl = kw.to_ascii_lowercase();
            match kwl.as_str() {
                "like" | "regex" => {
                    self.next();
                    let patterns = self.value_or_list()?;
                    return Ok(Expr::Match {
                        op: if kwl == "like" {
                            MatchOp::Like
                        } else {
                            MatchOp::Regex
                        },
                        insensitive: tilde,
                        lhs: Box::new(lhs),
                        patterns,
                        span,
                    });
                }
                "in" => {
                    self.next();
                    let list = self.in_list()?;
                    return Ok(Expr::In {
                        lhs: Box::new(lhs),
                        list,
                        insensitive: tilde,
                        negated: false,
                        span,
                    });
                }
                "not" if !tilde => {
                    if matches!(&self.toks[(self.i + 1).min(self.toks.len() - 1)].0, Tok::Ident(k, _) if k.eq_ignore_ascii_case("in"))
                    {
                        self.next();
                        let insensitive = matches!(self.next().0, Tok::Ident(_, true));
                        let list = self.in_list()?;
                        return Ok(Expr::In {
                            lhs: Box::new(lhs),
                            list,
                            insensitive,
                            negated: true,
                            span,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(lhs)
    }

    /// `"x"` or `("x", "y")` after `:`, `like`, `regex`; a bare name may be a named list.
    fn value_or_list(&mut self) -> Result<Vec<Expr>, QueryError> {
        if *self.peek() == Tok::LParen {
            self.paren_list()
        } else {
            Ok(vec![self.additive()?])
        }
    }

    /// `(a, b, …)` after `in`; a bare name may be a named list.
    fn in_list(&mut self) -> Result<Vec<Expr>, QueryError> {
        if *self.peek() == Tok::LParen {
            self.paren_list()
        } else if matches!(self.peek(), Tok::Ident(..)) {
            Ok(vec![self.primary()?])
        } else {
            Err(self.unexpected("`(` and a list of values after `in`"))
        }
    }

    fn paren_list(&mut self) -> Result<Vec<Expr>, QueryError> {
        let open = self.expect(Tok::LParen, "`(`")?;
        let mut items = Vec::new();
        if *self.peek() == Tok::RParen {
            return Err(QueryError::new(
                open,
                "empty list: write at least one value",
            ));
        }
        loop {
            items.push(self.additive()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RParen => {
                    self.next();
                    return Ok(items);
                }
                Tok::Eof => {
                    return Err(QueryError::new(
                        open,
                        "unbalanced parentheses: this `(` is never closed",
                    ))
                }
                _ => return Err(self.unexpected("`,` or `)` in the list")),
            }
        }
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        let mut lhs = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            let span = self.next().1;
            let rhs = self.multiplicative()?;
            lhs = bin(op, lhs, rhs, span);
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Mod,
                _ => return Ok(lhs),
            };
            let span = self.next().1;
            let rhs = self.unary()?;
            lhs = bin(op, lhs, rhs, span);
        }
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if *self.peek() == Tok::Minus {
            self.enter()?;
            let span = self.next().1;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(match e {
                Expr::Lit(Literal::Int(i), s) => Expr::Lit(Literal::Int(-i), span.to(s)),
                Expr::Lit(Literal::Float(f), s) => Expr::Lit(Literal::Float(-f), span.to(s)),
                other => Expr::Unary {
                    not: false,
                    expr: Box::new(other),
                    span,
                },
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let (tok, span) = self.next();
        match tok {
            Tok::Str(s) => Ok(Expr::Lit(Literal::Str(s), span)),
            Tok::Int(i) => Ok(Expr::Lit(Literal::Int(i), span)),
            Tok::Float(f) => Ok(Expr::Lit(Literal::Float(f), span)),
            Tok::LParen => {
                self.enter()?;
                let e = self.expr()?;
                self.depth -= 1;
                match self.peek() {
                    Tok::RParen => {
                        self.next();
                        Ok(e)
                    }
                    Tok::Eof => Err(QueryError::new(
                        span,
                        "unbalanced parentheses: this `(` is never closed",
                    )),
                    _ => Err(self.unexpected("`)` or an operator")),
                }
            }
            Tok::Question => {
                let (tok, s2) = self.next();
                match tok {
                    Tok::Ident(name, false) => Ok(Expr::Field {
                        name,
                        optional: true,
                        quoted: false,
                        span: span.to(s2),
                    }),
                    Tok::Quoted(name) => Ok(Expr::Field {
                        name,
                        optional: true,
                        quoted: true,
                        span: span.to(s2),
                    }),
                    other => Err(QueryError::new(
                        s2,
                        format!(
                            "expected a field name after `?`, found {}",
                            other.describe()
                        ),
                    )),
                }
            }
            Tok::Quoted(name) => Ok(Expr::Field {
                name,
                optional: false,
                quoted: true,
                span,
            }),
            Tok::Step(step, Some(name)) => Ok(Expr::StepField { step, name, span }),
            Tok::Step(step, None) => Ok(Expr::StepRef { step, span }),
            Tok::Ident(name, tilde) => {
                if *self.peek() == Tok::LParen {
                    let args = if matches!(self.toks.get(self.i + 1), Some((Tok::RParen, _))) {
                        self.next();
                        self.next();
                        Vec::new()
                    } else {
                        self.paren_list()?
                    };
                    return Ok(Expr::Call {
                        name,
                        insensitive: tilde,
                        args,
                        span,
                    });
                }
                if tilde {
                    return Err(QueryError::new(
                        span,
                        format!("`{name}~` is not an operator or a function call"),
                    ));
                }
                match name.as_str() {
                    "true" => Ok(Expr::Lit(Literal::Bool(true), span)),
                    "false" => Ok(Expr::Lit(Literal::Bool(false), span)),
                    "null" => Ok(Expr::Lit(Literal::Null, span)),
                    kw @ ("and" | "or" | "where" | "in" | "like" | "regex") => {
                        Err(QueryError::new(
                            span,
                            format!("expected a value, found the keyword `{kw}`"),
                        ))
                    }
                    _ => Ok(Expr::Field {
                        name,
                        optional: false,
                        quoted: false,
                        span,
                    }),
                }
            }
            Tok::RParen => Err(QueryError::new(
                span,
                "unbalanced parentheses: this `)` has no matching `(`",
            )),
            other => Err(QueryError::new(
                span,
                format!(
                    "expected a value, field or function, found {}",
                    other.describe()
                ),
            )),
        }
    }
}

fn bin(op: BinOp, lhs: Expr, rhs: Expr, span: Span) -> Expr {
    Expr::Binary {
        op,
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
        span,
    }
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> QueryError {
        parse_query(src).unwrap_err()
    }

    #[test]
    fn precedence() {
        let q = parse_query("tool where a == 1 or b == 2 and not c == 3").unwrap();
        let QueryBody::Event(e) = q.body else {
            panic!()
        };
        let Expr::Binary {
            op: BinOp::Or, rhs, ..
        } = e.condition
        else {
            panic!("{:?}", e.condition)
        };
        assert!(matches!(*rhs, Expr::Binary { op: BinOp::And, .. }));
    }

    #[test]
    fn arithmetic_binds_tighter_than_comparison() {
        let e = parse_expr("a + 2 * 3 > 10").unwrap();
        let Expr::Binary {
            op: BinOp::Gt, lhs, ..
        } = e
        else {
            panic!()
        };
        let Expr::Binary {
            op: BinOp::Add,
            rhs,
            ..
        } = *lhs
        else {
            panic!()
        };
        assert!(matches!(*rhs, Expr::Binary { op: BinOp::Mul, .. }));
    }

    #[test]
    fn operators_and_forms() {
        for q in [
            r#"any where a : "x*""#,
            r#"any where a : ("x*", "y")"#,
            r#"any where a like~ ("x*", "y?")"#,
            r#"any where a regex~ "x.*""#,
            r#"any where a in ("x", 1, 2.5) and b in~ ("Y") and c not in ("z")"#,
            r#"any where ?maybe.field == null"#,
            r#"any where `odd field` != "v""#,
            r#"any where startsWith~(a, "x") and length(b) >= 3"#,
            r#"any where """raw \d""" == a"#,
            r#"tool where -a < -1.5e3 // comment"#,
            r#"tool where a == "\u{1F600}\n\t\"""#,
            r#"sequence by gen_ai.agent.id with maxspan=5m [tool where a] by x ![tool where b] [tool where c] with runs=2 until [session where d]"#,
            r#"sample by x [tool where a] [tool where b]"#,
            r#"any where true | head 5 | tail 2"#,
        ] {
            parse_query(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = err("tool where (a == 1");
        assert!(e.message.contains("never closed"), "{e}");
        assert_eq!(e.span.col, 12);
        let e = err("tool where a == 1)");
        assert!(e.message.contains("no matching `(`"), "{e}");
        assert_eq!(e.span.col, 18);
        let e = err("tool a == 1");
        assert!(e.message.contains("`where`"), "{e}");
        let e = err("tool where a = 1");
        assert!(e.message.contains("=="), "{e}");
        let e = err("tool where a == \"x");
        assert!(e.message.contains("unterminated"), "{e}");
        let e = err("tool where\n  a == 'x'");
        assert_eq!((e.span.line, e.span.col), (2, 8));
        let e = err("tool where a in ()");
        assert!(e.message.contains("empty list"), "{e}");
        let e = err("sequence [tool where a]");
        assert!(e.message.contains("two"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let q = format!("tool where {}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(err(&q).message.contains("nested too deeply"));
        let q = format!("tool where {}a", "not ".repeat(10_000));
        assert!(err(&q).message.contains("nested too deeply"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5x"), None);
    }
}
