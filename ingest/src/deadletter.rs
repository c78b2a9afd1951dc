//! The dead-letter sink: records that could not be decoded are written, with where they came
//! from and why, as JSON lines — never dropped in silence.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::IngestError;

/// Bytes of an oversized record kept in its dead-letter entry.
pub const MAX_RAW_KEPT: usize = 64 * 1024;

/// One dead-letter entry.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// The input the record came from.
    pub source: &'a str,
    /// Its 1-based line number.
    pub line: u64,
    /// Why it was rejected.
    pub reason: &'a str,
    /// The record's text (invalid UTF-8 replaced by U+FFFD; cut if oversized).
    pub raw: &'a str,
    /// Whether `raw` is not byte-exact (invalid UTF-8 or cut).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw_lossy: bool,
}

/// Writes dead-letter entries to a file, or only counts them when there is none.
pub struct DeadLetterSink {
    out: Option<(PathBuf, BufWriter<File>)>,
    count: u64,
}

impl DeadLetterSink {
    /// A sink writing to `path` (created or truncated), or counting only.
    pub fn new(path: Option<&Path>) -> Result<DeadLetterSink, IngestError> {
        let out = match path {
            Some(p) => {
                let f = File::create(p).map_err(|error| IngestError::DeadLetter {
                    path: p.to_owned(),
                    error,
                })?;
                Some((p.to_owned(), BufWriter::new(f)))
            }
            None => None,
        };
        Ok(DeadLetterSink { out, count: 0 })
    }

    /// Records one rejected record.
    pub fn record(
        &mut self,
        source: &str,
        line: u64,
        reason: &str,
        raw: &[u8],
    ) -> Result<(), IngestError> {
        self.count += 1;
        let Some((path, w)) = self.out.as_mut() else {
            return Ok(());
        };
        let kept = &raw[..raw.len().min(MAX_RAW_KEPT)];
        let text = String::from_utf8_lossy(kept);
        let entry = DeadLetter {
            source,
            line,
            reason,
            raw: &text,
            raw_lossy: kept.len() < raw.len() || matches!(text, std::borrow::Cow::Owned(_)),
        };
        let io = |error| IngestError::DeadLetter {
            path: path.clone(),
            error,
        };
        serde_json::to_writer(&mut *w, &entry).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)
    }

    /// How many records were dead-lettered.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Flushes the file.
    pub fn flush(&mut self) -> Result<(), IngestError> {
        if let Some((path, w)) = self.out.as_mut() {
            w.flush().map_err(|error| IngestError::DeadLetter {
                path: path.clone(),
                error,
            })?;
        }
        Ok(())
    }
}
