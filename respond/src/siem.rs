//! Alert delivery to a SIEM: OCSF findings posted in batches to an HTTP collector — Splunk's
//! HTTP Event Collector (`splunk_hec`: events concatenated, `Authorization: Splunk <token>`)
//! or any endpoint that takes a JSON array (`json`, `Authorization: Bearer <token>`).
//!
//! Delivery runs on its own task so that a slow or absent SIEM never slows detection: alerts
//! queue (bounded); a batch goes when it is full or its first alert has waited the flush
//! interval; a failed batch is retried with exponential backoff and jitter (`Retry-After`
//! honoured) up to `max_attempts`. What cannot be delivered — queue full, attempts exhausted —
//! is counted, logged, and (when `dead_letter` is set) written there as JSON lines; every
//! alert is in the alert store regardless, which stays the record.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;
use serde_json::Value;
use tokio::sync::mpsc;

/// The collector's dialect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiemFormat {
    /// Splunk HEC: `{"time", "sourcetype", "source", "event"}` objects back to back.
    #[default]
    SplunkHec,
    /// A JSON array of OCSF findings.
    Json,
}

/// `[siem]` of `cordon.toml`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemConfig {
    /// The collector URL (http or https).
    pub url: String,
    /// Its dialect.
    #[serde(default)]
    pub format: SiemFormat,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Alerts per request (default 500).
    pub batch: Option<usize>,
    /// Longest an alert waits for its batch (default 2s).
    pub flush_interval: Option<String>,
    /// Attempts per batch before it is given up (default 8).
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled per retry up to a minute (default 500ms).
    pub backoff: Option<String>,
    /// Request timeout (default 10s).
    pub timeout: Option<String>,
    /// Alerts queued at most while the SIEM is slow (default 10 000).
    pub queue: Option<usize>,
    /// HEC `sourcetype` (default `ocsf:detection_finding`).
    pub sourcetype: Option<String>,
    /// HEC `index`, if the collector's default is not wanted.
    pub index: Option<String>,
    /// Undeliverable alerts are appended here (JSON lines with the reason).
    pub dead_letter: Option<PathBuf>,
}

/// Counters of the sink.
#[derive(Debug, Default, serde::Serialize)]
pub struct SiemStats {
    /// Alerts delivered.
    pub sent: AtomicU64,
    /// Requests that succeeded.
    pub batches: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Alerts given up after `max_attempts`.
    pub failed: AtomicU64,
    /// Alerts not queued because the queue was full.
    pub dropped: AtomicU64,
}

struct Settings {
    url: url::Url,
    format: SiemFormat,
    token: Option<String>,
    batch: usize,
    flush: Duration,
    max_attempts: u32,
    backoff: Duration,
    timeout: Duration,
    sourcetype: String,
    index: Option<String>,
    dead_letter: Option<Mutex<std::fs::File>>,
}

/// A running SIEM sink.
pub struct SiemSink {
    tx: Option<mpsc::Sender<Value>>,
    stats: Arc<SiemStats>,
    worker: Option<tokio::task::JoinHandle<()>>,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for SiemSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiemSink")
            .field("url", &self.settings.url.as_str())
            .finish()
    }
}

fn dur(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| format!("[siem]: {field} {s:?} is not a duration like 2s ({e})")),
    }
}

impl SiemSink {
    /// Checks the configuration, reads the token and starts the delivery task on `rt`.
    pub fn start(cfg: &SiemConfig, rt: &tokio::runtime::Handle) -> Result<SiemSink, String> {
        let url =
            url::Url::parse(&cfg.url).map_err(|e| format!("[siem]: url {:?}: {e}", cfg.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "[siem]: url must be http or https, not {}",
                url.scheme()
            ));
        }
        let token =
            match (&cfg.token_env, &cfg.token_file) {
                (Some(_), Some(_)) => {
                    return Err("[siem]: give token_env or token_file, not both".into())
                }
                (Some(v), None) => Some(std::env::var(v).map_err(|_| {
                    format!("[siem]: environment variable {v} (token_env) is not set")
                })?),
                (None, Some(p)) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| format!("[siem]: token_file {}: {e}", p.display()))?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            };
        let dead_letter = cfg
            .dead_letter
            .as_ref()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(Mutex::new)
                    .map_err(|e| format!("[siem]: dead_letter {}: {e}", p.display()))
            })
            .transpose()?;
        let batch = cfg.batch.unwrap_or(500);
        if batch == 0 {
            return Err("[siem]: batch must be at least 1".into());
        }
        let settings = Arc::new(Settings {
            url,
            format: cfg.format,
            token,
            batch,
            flush: dur(
                "flush_interval",
                &cfg.flush_interval,
                Duration::from_secs(2),
            )?,
            max_attempts: cfg.max_attempts.unwrap_or(8).max(1),
            backoff: dur("backoff", &cfg.backoff, Duration::from_millis(500))?,
            timeout: dur("timeout", &cfg.timeout, Duration::from_secs(10))?,
            sourcetype: cfg
                .sourcetype
                .clone()
                .unwrap_or_else(|| "ocsf:detection_finding".into()),
            index: cfg.index.clone(),
            dead_letter,
        });
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("[siem]: {e}"))?;
        let (tx, rx) = mpsc::channel(cfg.queue.unwrap_or(10_000).max(1));
        let stats = Arc::new(SiemStats::default());
        let worker = rt.spawn(deliver(rx, client, settings.clone(), stats.clone()));
        Ok(SiemSink {
            tx: Some(tx),
            stats,
            worker: Some(worker),
            settings,
        })
    }

    /// Queues an alert (its OCSF form); never blocks. A full queue counts and dead-letters it.
    pub fn send(&self, finding: Value) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(finding) {
            let finding = match e {
                mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v,
            };
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            dead_letter(&self.settings, &[finding], "the SIEM queue was full");
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SiemStats> {
        self.stats.clone()
    }

    /// Stops taking alerts and waits (at most `timeout`) for the queue to be delivered.
    pub async fn close(mut self, timeout: Duration) -> bool {
        self.tx = None;
        match self.worker.take() {
            Some(w) => tokio::time::timeout(timeout, w).await.is_ok(),
            None => true,
        }
    }
}

fn dead_letter(s: &Settings, findings: &[Value], reason: &str) {
    tracing::warn!(alerts = findings.len(), %reason, "alerts not delivered to the SIEM");
    let Some(f) = &s.dead_letter else { return };
    if let Ok(mut f) = f.lock() {
        for v in findings {
            let _ = writeln!(f, "{}", serde_json::json!({"reason": reason, "finding": v}));
        }
    }
}

fn body(s: &Settings, batch: &[Value]) -> Vec<u8> {
    match s.format {
        SiemFormat::Json => serde_json::to_vec(batch).unwrap_or_default(),
        SiemFormat::SplunkHec => {
            let mut out = Vec::new();
            for v in batch {
                let mut e = serde_json::json!({
                    "time": v["time"].as_i64().map(|ms| ms as f64 / 1000.0),
                    "sourcetype": s.sourcetype,
                    "source": "cordon",
                    "event": v,
                });
                if let Some(i) = &s.index {
                    e["index"] = Value::String(i.clone());
                }
                let _ = serde_json::to_writer(&mut out, &e);
                out.push(b'\n');
            }
            out
        }
    }
}

async fn post(client: &reqwest::Client, s: &Settings, batch: &[Value], stats: &SiemStats) -> bool {
    let payload = body(s, batch);
    for attempt in 1..=s.max_attempts {
        let mut req = client
            .post(s.url.clone())
            .header("content-type", "application/json")
            .body(payload.clone());
        if let Some(t) = &s.token {
            req = req.header(
                "authorization",
                match s.format {
                    SiemFormat::SplunkHec => format!("Splunk {t}"),
                    SiemFormat::Json => format!("Bearer {t}"),
                },
            );
        }
        let (retry, after) = match req.send().await {
            Ok(r) if r.status().is_success() => {
                stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok(r) => {
                let code = r.status().as_u16();
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::runner::retry_after);
                tracing::warn!(status = code, attempt, "SIEM refused a batch");
                (matches!(code, 408 | 425 | 429) || code >= 500, after)
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "SIEM unreachable");
                (true, None)
            }
        };
        if !retry {
            break;
        }
        if attempt < s.max_attempts {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            let exp = (s.backoff.as_millis() as u64)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(60_000);
            let jittered = exp / 2 + rand::thread_rng().gen_range(0..=exp / 2);
            let wait = after.map_or(jittered, |a| (a.as_millis() as u64).min(300_000));
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    stats
        .failed
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    dead_letter(s, batch, "the SIEM did not accept the batch");
    false
}

async fn deliver(
    mut rx: mpsc::Receiver<Value>,
    client: reqwest::Client,
    s: Arc<Settings>,
    stats: Arc<SiemStats>,
) {
    let mut batch = Vec::with_capacity(s.batch);
    loop {
        // Wait for the first alert of a batch, then at most the flush interval for the rest.
        match rx.recv().await {
            Some(v) => batch.push(v),
            None => break,
        }
        let deadline = tokio::time::Instant::now() + s.flush;
        while batch.len() < s.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(v)) => batch.push(v),
                Ok(None) | Err(_) => break,
            }
        }
        post(&client, &s, &batch, &stats).await;
        batch.clear();
    }
}
