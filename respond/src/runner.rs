//! The responder: turns alerts into planned actions in the outbox, and a worker that delivers
//! them — signed, with retries (exponential backoff with jitter, `Retry-After` honoured), a
//! token-bucket rate limit and a circuit breaker per target — and feeds what succeeded back
//! to the engine (the closed loop).
//!
//! Planning is synchronous and durable before it returns: the alert's actions are in the
//! outbox before the caller moves on (so a source may commit its offset). Delivery runs on
//! tokio and resumes whatever is pending when it starts, after a crash included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cordon_detect::{Alert, Enforcement};
use rand::Rng;
use tokio::sync::{mpsc, Notify};

use crate::actions::{self, Context};
use crate::config::Target;
use crate::outbox::{now_ms, ActionRecord, Attempt, Outbox, OutboxError, State};
use crate::playbook::{self, ActionKind, Playbooks};

/// Counters of the responder, for `--stats` and `/metrics`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResponseStats {
    /// Actions planned (new in the outbox).
    pub planned: u64,
    /// Actions already planned when an alert came again (a replay): not added twice.
    pub replanned: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Attempts that will be retried.
    pub retried: u64,
    /// Actions that succeeded.
    pub succeeded: u64,
    /// Actions that failed for good.
    pub failed: u64,
    /// Actions recorded without being sent (dry run).
    pub dry_run: u64,
    /// Deliveries put off because the target's circuit was open.
    pub deferred_by_breaker: u64,
    /// Deliveries put off by the target's rate limit.
    pub deferred_by_rate_limit: u64,
    /// Approval gates that expired.
    pub expired: u64,
    /// Alert-to-action latency of succeeded actions (ms): median.
    pub latency_p50_ms: u64,
    /// Alert-to-action latency of succeeded actions (ms): 99th percentile.
    pub latency_p99_ms: u64,
}

/// A per-target circuit breaker and token bucket.
#[derive(Debug)]
struct Gate {
    failures: u32,
    open_until: Option<Instant>,
    tokens: f64,
    refilled: Instant,
}

/// The responder.
pub struct Responder {
    outbox: Arc<Outbox>,
    playbooks: Playbooks,
    targets: HashMap<String, Target>,
    gates: Mutex<HashMap<String, Gate>>,
    client: reqwest::Client,
    dry_run: bool,
    ctx: Context,
    wake: Notify,
    enforce: Option<mpsc::UnboundedSender<Enforcement>>,
    results: Option<mpsc::UnboundedSender<serde_json::Value>>,
    stats: Mutex<ResponseStats>,
    latencies: Mutex<Vec<u64>>,
    action_log: Option<Mutex<std::fs::File>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("outbox", &self.outbox)
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// What a delivery attempt came to.
enum Outcome {
    Done(Option<u16>),
    Retry {
        status: Option<u16>,
        after: Option<Duration>,
        error: String,
    },
    Fail {
        status: Option<u16>,
        error: String,
    },
}

pub use crate::outbox::action_id;

/// `Retry-After`: seconds, or an HTTP date.
pub(crate) fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let t = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = t.as_millisecond() - now_ms();
    Some(Duration::from_millis(d.max(0) as u64))
}

impl Responder {
    /// A responder over an outbox, with playbooks and resolved targets. Every target a
    /// playbook names must be configured.
    pub fn new(
        outbox: Outbox,
        playbooks: Playbooks,
        targets: Vec<Target>,
        dry_run: bool,
        console_url: Option<String>,
    ) -> Result<Responder, String> {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        playbooks.check_targets(&names).map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Responder {
            outbox: Arc::new(outbox),
            playbooks,
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
            gates: Mutex::new(HashMap::new()),
            client,
            dry_run,
            ctx: Context { console_url },
            wake: Notify::new(),
            enforce: None,
            results: None,
            stats: Mutex::new(ResponseStats::default()),
            latencies: Mutex::new(Vec::new()),
            action_log: None,
        })
    }

    /// Appends every attempt and outcome to `path` as JSON lines (`cordon.action.attempt`).
    pub fn with_action_log(mut self, path: &std::path::Path) -> Result<Responder, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("action log {}: {e}", path.display()))?;
        self.action_log = Some(Mutex::new(f));
        Ok(self)
    }

    fn log_attempt(&self, r: &ActionRecord, a: &Attempt) {
        if self.action_log.is_none() && self.results.is_none() {
            return;
        }
        let r = r.redacted();
        let line = serde_json::json!({
            "type": "cordon.action.attempt",
            "time": jiff::Timestamp::from_millisecond(a.at_ms).ok().map(|t| t.to_string()),
            "action": {
                "id": r.id, "alert_id": r.alert_id, "rule_id": r.rule_id, "playbook": r.playbook,
                "step": r.step, "action": r.action, "target": r.target, "params": r.params,
                "state": r.state, "attempts": r.attempts, "last_error": r.last_error,
            },
            "attempt": a,
        });
        if let Some(tx) = &self.results {
            let _ = tx.send(line.clone());
        }
        let Some(log) = &self.action_log else { return };
        if let Ok(mut f) = log.lock() {
            use std::io::Write as _;
            if writeln!(f, "{line}").is_err() {
                tracing::warn!("could not append to the action log");
            }
        }
    }

    /// Sends every attempt and its outcome (as the action log writes it, tokens redacted) to
    /// `tx`: the Kafka input publishes them to its `actions_topic`.
    pub fn with_results(mut self, tx: mpsc::UnboundedSender<serde_json::Value>) -> Responder {
        self.results = Some(tx);
        self
    }

    /// Sends what succeeded to `tx` (the engine's closed loop).
    pub fn with_enforcement(mut self, tx: mpsc::UnboundedSender<Enforcement>) -> Responder {
        self.enforce = Some(tx);
        self
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The outbox, shared (the API decides approvals on the same one: redb has one writer
    /// per file).
    pub fn outbox_arc(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// The counters.
    pub fn stats(&self) -> ResponseStats {
        let mut s = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(l) = self.latencies.lock() {
            let mut v = l.clone();
            v.sort_unstable();
            let q = |p: f64| {
                v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                    .copied()
                    .unwrap_or(0)
            };
            s.latency_p50_ms = q(0.5);
            s.latency_p99_ms = q(0.99);
        }
        s
    }

    fn count(&self, f: impl FnOnce(&mut ResponseStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Plans the actions of every playbook the alert triggers and writes them to the outbox
    /// (durable when this returns). A step whose template names a field the alert lacks is
    /// recorded as failed with the reason. Returns the number of new actions.
    pub fn submit(&self, alert: &Alert) -> Result<usize, OutboxError> {
        let now = now_ms();
        let mut records = Vec::new();
        for p in self.playbooks.for_alert(alert) {
            for (i, s) in p.steps.iter().enumerate() {
                let mut params = std::collections::BTreeMap::new();
                let mut error = None;
                for (k, t) in &s.params {
                    match playbook::render(t, alert) {
                        Ok(v) => {
                            params.insert(k.clone(), v);
                        }
                        // Optional context (a principal, a reason) may be absent.
                        Err(_) if matches!(k.as_str(), "principal" | "subject" | "reason") => {}
                        Err(e) => error = Some(format!("parameter {k}: {e}")),
                    }
                }
                let first = i == 0;
                let state = match (&error, first, s.action) {
                    (Some(_), true, _) => State::Failed,
                    (_, true, ActionKind::RequireApproval) => State::AwaitingApproval,
                    (_, true, _) => State::Pending,
                    _ => State::Blocked,
                };
                let expires_ms = (first && s.action == ActionKind::RequireApproval).then(|| {
                    now + s
                        .params
                        .get("expires")
                        .and_then(|e| humantime::parse_duration(e).ok())
                        .map_or(3_600_000, |d| d.as_millis() as i64)
                });
                records.push(ActionRecord {
                    id: action_id(&alert.id, &p.id, i),
                    alert_id: alert.id.clone(),
                    rule_id: alert.rule_id.clone(),
                    playbook: p.id.clone(),
                    step: i as u32,
                    action: s.action,
                    target: s.target.clone(),
                    params,
                    continue_on_error: s.continue_on_error,
                    state,
                    attempts: 0,
                    next_attempt_ms: now,
                    created_ms: now,
                    updated_ms: now,
                    trigger_ms: alert.last_seen_ms,
                    expires_ms,
                    last_error: error,
                    decided_by: None,
                    reason: None,
                });
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        let added = self.outbox.plan(&records)?;
        // A first step that failed at planning moves the playbook on (or cancels it).
        for r in records
            .iter()
            .filter(|r| r.step == 0 && r.state == State::Failed)
        {
            if added > 0 {
                self.outbox.update(r, None)?;
            }
        }
        self.count(|s| {
            s.planned += added as u64;
            s.replanned += (records.len() - added) as u64;
        });
        self.wake.notify_one();
        Ok(added)
    }

    /// Wakes the worker (after an approval, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether a target's gate lets a request through now; if not, when to try.
    fn admit(&self, t: &Target) -> Result<(), (Duration, bool)> {
        let Ok(mut gates) = self.gates.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let g = gates.entry(t.name.clone()).or_insert(Gate {
            failures: 0,
            open_until: None,
            tokens: t.rate_per_s.max(1.0),
            refilled: now,
        });
        if let Some(until) = g.open_until {
            if now < until {
                return Err((until - now, true));
            }
        }
        let burst = t.rate_per_s.max(1.0);
        g.tokens =
            (g.tokens + now.duration_since(g.refilled).as_secs_f64() * t.rate_per_s).min(burst);
        g.refilled = now;
        if g.tokens < 1.0 {
            return Err((
                Duration::from_secs_f64((1.0 - g.tokens) / t.rate_per_s),
                false,
            ));
        }
        g.tokens -= 1.0;
        Ok(())
    }

    fn record_result(&self, t: &Target, ok: bool) {
        if let Ok(mut gates) = self.gates.lock() {
            if let Some(g) = gates.get_mut(&t.name) {
                if ok {
                    g.failures = 0;
                    g.open_until = None;
                } else {
                    g.failures += 1;
                    if g.failures >= t.breaker_failures {
                        g.open_until = Some(Instant::now() + t.breaker_cooldown);
                    }
                }
            }
        }
    }

    async fn send(&self, r: &ActionRecord, t: &Target) -> Outcome {
        let out = match actions::request(r, t, &self.ctx) {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Fail {
                    status: None,
                    error: e,
                }
            }
        };
        let ts = now_ms() / 1000;
        let mut req = self
            .client
            .post(t.url.clone())
            .timeout(t.timeout)
            .header("content-type", out.content_type)
            .header("webhook-id", &r.id)
            .header("webhook-timestamp", ts.to_string())
            .header("idempotency-key", &r.id);
        if let Some(secret) = &t.secret {
            req = req.header("webhook-signature", secret.sign(&r.id, ts, &out.body));
        }
        if let Some((id, secret)) = &out.basic_auth {
            // RFC 6749 §2.3.1: form-urlencode the id and secret before Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        match req.body(out.body).send().await {
            Err(e) => Outcome::Retry {
                status: None,
                after: None,
                // Without the URL's query or any header: no secret in the message.
                error: if e.is_timeout() {
                    format!("timed out after {:?}", t.timeout)
                } else if e.is_connect() {
                    "could not connect".to_owned()
                } else {
                    "request failed".to_owned()
                },
            },
            Ok(resp) => {
                let status = resp.status();
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after);
                let code = Some(status.as_u16());
                if status.is_success() {
                    Outcome::Done(code)
                } else if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
                    Outcome::Retry {
                        status: code,
                        after,
                        error: format!("HTTP {status}"),
                    }
                } else {
                    Outcome::Fail {
                        status: code,
                        error: format!("HTTP {status}"),
                    }
                }
            }
        }
    }

    /// Delivers one due action; returns when it may be tried again if it was put off.
    async fn deliver(&self, mut r: ActionRecord) -> Result<(), OutboxError> {
        let Some(t) = r.target.as_ref().and_then(|n| self.targets.get(n)) else {
            r.state = State::Failed;
            r.last_error = Some(format!("target {:?} is not configured", r.target));
            r.updated_ms = now_ms();
            self.count(|s| s.failed += 1);
            return self.outbox.update(&r, None);
        };
        if self.dry_run {
            r.state = State::DryRun;
            r.updated_ms = now_ms();
            let a = Attempt {
                action_id: r.id.clone(),
                n: r.attempts + 1,
                at_ms: r.updated_ms,
                status: None,
                outcome: format!("dry run: would POST to {} ({})", t.name, t.url),
                latency_ms: 0,
            };
            self.count(|s| s.dry_run += 1);
            self.log_attempt(&r, &a);
            return self.outbox.update(&r, Some(&a));
        }
        if let Err((wait, breaker)) = self.admit(t) {
            r.next_attempt_ms = now_ms() + wait.as_millis() as i64 + 1;
            self.count(|s| {
                if breaker {
                    s.deferred_by_breaker += 1;
                } else {
                    s.deferred_by_rate_limit += 1;
                }
            });
            return self.outbox.update(&r, None);
        }
        let started = Instant::now();
        let outcome = self.send(&r, t).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        r.attempts += 1;
        let now = now_ms();
        r.updated_ms = now;
        self.count(|s| s.attempts += 1);
        let (status, text) = match outcome {
            Outcome::Done(status) => {
                self.record_result(t, true);
                r.state = State::Succeeded;
                r.last_error = None;
                self.count(|s| s.succeeded += 1);
                if let Ok(mut l) = self.latencies.lock() {
                    if l.len() < 100_000 {
                        l.push((now - r.created_ms).max(0) as u64);
                    }
                }
                (status, "succeeded".to_owned())
            }
            Outcome::Retry {
                status,
                after,
                error,
            } if r.attempts < t.max_attempts => {
                self.record_result(t, false);
                // Exponential backoff, capped at a minute, with jitter in its upper half;
                // a Retry-After from the target wins (up to an hour).
                let base = t.backoff.as_millis() as u64;
                let exp = base
                    .saturating_mul(1u64 << (r.attempts - 1).min(16))
                    .min(60_000);
                let jittered = exp / 2 + rand::thread_rng().gen_range(0..=exp / 2);
                let wait = after.map_or(jittered, |a| (a.as_millis() as u64).min(3_600_000));
                r.next_attempt_ms = now + wait as i64;
                r.last_error = Some(error.clone());
                self.count(|s| s.retried += 1);
                (status, format!("{error}; retry in {wait} ms"))
            }
            Outcome::Retry { status, error, .. } | Outcome::Fail { status, error } => {
                self.record_result(t, false);
                r.state = State::Failed;
                r.last_error = Some(format!("{error} (attempt {})", r.attempts));
                self.count(|s| s.failed += 1);
                (status, format!("failed: {error}"))
            }
        };
        let a = Attempt {
            action_id: r.id.clone(),
            n: r.attempts,
            at_ms: now,
            status,
            outcome: text,
            latency_ms,
        };
        tracing::info!(action = %r.id, kind = r.action.name(), target = %t.name, outcome = %a.outcome, "action attempt");
        self.outbox.update(&r, Some(&a))?;
        self.log_attempt(&r, &a);
        if r.state == State::Succeeded {
            if let (Some(tx), Some(e)) = (&self.enforce, actions::enforcement(&r)) {
                let _ = tx.send(e);
            }
        }
        Ok(())
    }

    /// One pass: expires gates, delivers every due action. Returns the time until the next
    /// pending action is due, if any is pending.
    pub async fn step(&self) -> Result<Option<Duration>, OutboxError> {
        let expired = self.outbox.expire(now_ms())?;
        self.count(|s| s.expired += expired as u64);
        let now = now_ms();
        let mut next: Option<i64> = None;
        let mut due = Vec::new();
        for r in self.outbox.open_actions()? {
            if r.state != State::Pending {
                continue;
            }
            if r.next_attempt_ms <= now {
                due.push(r);
            } else {
                next = Some(next.map_or(r.next_attempt_ms, |n| n.min(r.next_attempt_ms)));
            }
        }
        let delivered = !due.is_empty();
        for r in due {
            self.deliver(r).await?;
        }
        if delivered {
            // What was delivered may have unblocked the next steps.
            return Ok(Some(Duration::ZERO));
        }
        Ok(next.map(|n| Duration::from_millis((n - now).max(0) as u64)))
    }

    /// Runs until `stop` is notified: delivers, sleeps until the next action is due or new
    /// work arrives.
    pub async fn run(self: Arc<Self>, stop: Arc<Notify>) {
        loop {
            let wait = match self.step().await {
                Ok(Some(d)) => d,
                Ok(None) => Duration::from_secs(1),
                Err(e) => {
                    tracing::error!(error = %e, "outbox");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = stop.notified() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Delivers until nothing is pending (what remains waits for an analyst or has failed),
    /// or `timeout` passes. Returns whether everything settled.
    pub async fn drain(&self, timeout: Duration) -> Result<bool, OutboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.step().await? {
                None => return Ok(true),
                Some(d) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(false);
                    }
                    tokio::time::sleep(d.min(deadline - now)).await;
                }
            }
        }
    }
}
