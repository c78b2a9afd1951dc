//! Errors of the ingest crate. Every decoding error says where (column, field) and what was
//! expected, because it ends up in a dead-letter record that a person reads.

use std::path::PathBuf;

/// Why one record could not be turned into an event.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Not valid JSON (truncated, trailing garbage, invalid UTF-8…).
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Valid JSON, but a field has the wrong type or value.
    #[error("{0}")]
    Data(String),
    /// A required field is absent.
    #[error("missing required field `{field}`")]
    Missing {
        /// The field's dotted name.
        field: &'static str,
    },
    /// The record exceeds the configured maximum size.
    #[error("record is {len} bytes, over the limit of {max} bytes")]
    TooLong {
        /// Size of the record.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    pub(crate) fn from_json(e: serde_json::Error) -> DecodeError {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => DecodeError::Data(e.to_string()),
            Category::Io | Category::Syntax | Category::Eof => DecodeError::Syntax(e.to_string()),
        }
    }
}

/// Errors of sources and sinks.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input could not be opened or read.
    #[error("{path}: {error}")]
    Io {
        /// The input.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The dead-letter file could not be written.
    #[error("dead-letter file {path}: {error}")]
    DeadLetter {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}
