//! # cordon-rules
//!
//! Rules are what a SOC team writes and reviews, so they are plain YAML files with a query in a
//! language analysts already know: EQL (Elasticsearch dialect). This crate owns the files
//! ([`file`]), the language — [`parser`] to an [`ast`], [`compile`] (type-checking against the
//! event schema) to the predicate form of [`eval`] — and the built-in MCP rule pack.
//!
//! The pipeline is: text → tokens → syntax tree → checked, compiled predicate. Everything that
//! can be decided once (field slots, macros, named lists, wildcard shapes, regexes, hash sets)
//! is decided at compile time, so evaluating a rule against an event is a walk over a small
//! tree of typed nodes.
//!
//! ```
//! use cordon_rules::{parse_query, Compiler, Library, CompiledQuery};
//! let q = parse_query(r#"tool where gen_ai.tool.name : "send_*" and audit.decision == "allow""#).unwrap();
//! let compiled = Compiler::new(&Library::default(), true).query(&q).unwrap();
//! let CompiledQuery::Event(m) = compiled.query else { unreachable!() };
//! let ev = cordon_ingest::decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","gen_ai.tool.name":"send_email","audit.decision":"allow"}"#).unwrap();
//! assert!(m.matches(&ev));
//! ```

#![deny(missing_docs)]

pub mod ast;
pub mod compile;
pub mod error;
pub mod eval;
pub mod file;
pub mod functions;
pub mod parser;
pub mod stateful;
pub mod wildcard;

pub use compile::{Compiled, CompiledQuery, Compiler, EventMatcher, Library};
pub use error::{QueryError, RuleError, RuleErrors};
pub use eval::Pred;
pub use file::{Rule, RuleSet, Severity, Suppress, Verdict};
pub use parser::{parse_duration, parse_expr, parse_query};
