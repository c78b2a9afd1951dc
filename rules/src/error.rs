//! Errors of rule files and queries. A query error knows its span in the query text; the rule
//! file loader turns it into a file, line and column so that an editor can jump to it.

use std::fmt;
use std::path::PathBuf;

use crate::ast::Span;

/// An error in a query, positioned in the query text.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryError {
    /// Where.
    pub span: Span,
    /// What is wrong, and what was expected.
    pub message: String,
    /// A suggestion (`did you mean …`).
    pub help: Option<String>,
}

impl QueryError {
    /// A new error.
    pub fn new(span: Span, message: impl Into<String>) -> QueryError {
        QueryError {
            span,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> QueryError {
        self.help = Some(help.into());
        self
    }

    /// Renders the error with the offending line of `src` and a caret under the column.
    pub fn render(&self, src: &str) -> String {
        let mut out = format!("{}:{}: {}", self.span.line, self.span.col, self.message);
        if let Some(line) = src.lines().nth(self.span.line.saturating_sub(1) as usize) {
            out.push_str(&format!(
                "\n  | {line}\n  | {}^",
                " ".repeat(self.span.col.saturating_sub(1) as usize)
            ));
        }
        if let Some(h) = &self.help {
            out.push_str(&format!("\n  = help: {h}"));
        }
        out
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.span.line, self.span.col, self.message)?;
        if let Some(h) = &self.help {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for QueryError {}

/// An error in a rule file, with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line in the file (0 when unknown).
    pub line: u32,
    /// 1-based column in the file (0 when unknown).
    pub col: u32,
    /// The rule, macro or list concerned, when known.
    pub item: Option<String>,
    /// What is wrong.
    pub message: String,
    /// A suggestion.
    pub help: Option<String>,
}

impl RuleError {
    /// An error about a whole file (it cannot be read, is not UTF-8, …).
    pub fn file_level(file: impl Into<PathBuf>, message: impl Into<String>) -> RuleError {
        RuleError {
            file: file.into(),
            line: 0,
            col: 0,
            item: None,
            message: message.into(),
            help: None,
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        write!(f, ": ")?;
        if let Some(item) = &self.item {
            write!(f, "{item}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}

/// Every error found while loading a rule set (all of them, not just the first).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
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

impl std::error::Error for RuleErrors {}
