//! OCSF alerts as JSON lines, to a file or stdout.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use cordon_detect::Alert;

use super::{AlertSink, SinkError};

/// Writes one OCSF Detection Finding per line.
pub struct JsonLinesSink {
    target: String,
    out: Box<dyn Write + Send>,
    file: Option<std::sync::Arc<File>>,
    written: u64,
}

/// Alerts handed to the operating system but not yet synced: [`Unsynced::sync`] makes them
/// durable. Lets a sink shared behind a lock be synced without holding the lock through the
/// disk's wait, so the thread emitting alerts does not stall on it.
pub struct Unsynced {
    target: String,
    file: std::sync::Arc<File>,
}

impl Unsynced {
    /// Makes the alerts written before [`JsonLinesSink::flush_unsynced`] durable.
    pub fn sync(self) -> Result<(), SinkError> {
        sync_data(&self.file).map_err(|source| SinkError::Io {
            target: self.target,
            source,
        })
    }
}

/// `sync_data`, except on character devices (`/dev/null`, a terminal), which cannot be
/// synced and need not be.
fn sync_data(f: &File) -> io::Result<()> {
    match f.sync_data() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

impl JsonLinesSink {
    /// Appends to a file (created if missing).
    pub fn file(path: &Path) -> Result<JsonLinesSink, SinkError> {
        let target = path.display().to_string();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Io {
                target: target.clone(),
                source,
            })?;
        let sync = f.try_clone().map_err(|source| SinkError::Io {
            target: target.clone(),
            source,
        })?;
        Ok(JsonLinesSink {
            target,
            out: Box::new(BufWriter::new(f)),
            file: Some(std::sync::Arc::new(sync)),
            written: 0,
        })
    }

    /// Writes to stdout.
    pub fn stdout() -> JsonLinesSink {
        JsonLinesSink {
            target: "stdout".into(),
            out: Box::new(BufWriter::new(io::stdout())),
            file: None,
            written: 0,
        }
    }

    /// Writes to any writer (tests, pipes).
    pub fn writer(name: &str, w: Box<dyn Write + Send>) -> JsonLinesSink {
        JsonLinesSink {
            target: name.into(),
            out: w,
            file: None,
            written: 0,
        }
    }

    /// Hands the buffered alerts to the operating system; the result, when the sink is a
    /// file, syncs them ([`Unsynced::sync`]).
    pub fn flush_unsynced(&mut self) -> Result<Option<Unsynced>, SinkError> {
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.file.as_ref().map(|f| Unsynced {
            target: self.target.clone(),
            file: f.clone(),
        }))
    }

    /// Alerts written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn io(&self, source: io::Error) -> SinkError {
        SinkError::Io {
            target: self.target.clone(),
            source,
        }
    }
}

impl AlertSink for JsonLinesSink {
    fn emit(&mut self, alert: &Alert) -> Result<(), SinkError> {
        let line = alert.render_ocsf().json;
        self.out
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))?;
        self.out.write_all(b"\n").map_err(|e| self.io(e))?;
        self.written += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        match self.flush_unsynced()? {
            Some(u) => u.sync(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cordon_detect::Engine;
    use cordon_rules::RuleSet;

    #[test]
    fn appends_ocsf_lines_to_a_file() {
        let set = RuleSet::builtin().unwrap();
        let ev = cordon_ingest::decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","gen_ai.tool.name":"grant_role","audit.decision":"deny","gen_ai.agent.id":"a"}"#).unwrap();
        let mut alerts = Vec::new();
        Engine::new(&set).observe(&ev, &mut alerts);
        assert_eq!(alerts.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("alerts.jsonl");
        for _ in 0..2 {
            let mut s = JsonLinesSink::file(&p).unwrap();
            s.emit(&alerts[0]).unwrap();
            s.flush().unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0]["finding_info"]["analytic"]["uid"],
            "cordon.mcp.privileged_tool_denied"
        );
    }
}
