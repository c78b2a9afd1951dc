//! Errors of the ingest crate. Every decoding error says where (column, field) and what was
//! expected, because it ends up in a dead-letter record that a person reads.
//!
//! A message quotes the offending value, and a value can be as long as the record: a
//! megabyte timestamp made a megabyte reason, in every log line and dead-letter header that
//! carries it (a Kafka dead letter's headers then passed the producer's record limit). So
//! the text shown keeps its start and its end (where the position is) and says how much
//! was left out.

use std::path::PathBuf;

/// Why one record could not be turned into an event.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Not valid JSON (truncated, trailing garbage, invalid UTF-8…).
    #[error("invalid JSON: {}", bounded(.0))]
    Syntax(String),
    /// Valid JSON, but a field has the wrong type or value.
    #[error("{}", bounded(.0))]
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

/// Longest message shown whole.
const SHOWN: usize = 400;

/// `text`, or its first 240 and last 100 bytes (at character boundaries) with how many bytes
/// between them were left out, when it is longer than [`SHOWN`].
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= SHOWN {
        return text.into();
    }
    let mut head = 240;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - 100;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}… [{} bytes left out] …{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
    .into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_keeps_its_ends() {
        let value = "é".repeat(300_000);
        let e = DecodeError::Data(format!(
            "field `@timestamp`: expected an RFC 3339 timestamp, found {value:?} at column 7"
        ));
        let shown = e.to_string();
        assert!(shown.len() < 500, "{}", shown.len());
        assert!(shown.starts_with("field `@timestamp`: expected an RFC 3339 timestamp, found \"éé"));
        assert!(shown.ends_with("éé\" at column 7"), "{shown}");
        assert!(shown.contains("bytes left out"));
        let short = DecodeError::Syntax("EOF while parsing at line 1 column 3".into());
        assert_eq!(
            short.to_string(),
            "invalid JSON: EOF while parsing at line 1 column 3"
        );
    }
}
