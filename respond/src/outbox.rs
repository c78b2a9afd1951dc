//! The durable outbox: every action a playbook plans is written here (redb: an embedded,
//! crash-safe, pure-Rust store whose commits are durable when they return) before anything is
//! sent, and every attempt and outcome is appended to the action log beside it.
//!
//! Why this gives "never lost, never repeated": an action's id is its idempotency key, derived
//! from the alert id, the playbook and the step, so planning the same alert twice (a replay
//! after a crash) finds the actions already there and adds nothing. An action stays `pending`
//! until a response confirms it; a crash between the write and the delivery, or during the
//! delivery, leaves it pending, and the next start sends it again with the same
//! `webhook-id` — which receivers dedupe on, and which RFC 7009 revocation makes harmless
//! anyway — so the effect happens once.
//!
//! States: `blocked` (waiting for the previous step), `pending` (to send, at `next_attempt_ms`),
//! `awaiting_approval` (a gate, until `expires_ms`), then `succeeded`, `failed`, `approved`,
//! `denied`, `expired`, `cancelled` (a step after a failure, denial or expiry) or `dry_run`.

// redb's error type is large; it only travels on the cold failure path of a transaction.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::playbook::ActionKind;

const ACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("actions");
const ATTEMPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attempts");
/// The ids of actions not yet final: what the worker scans, so that its cost follows the
/// open work and not the history.
const OPEN: TableDefinition<&str, u8> = TableDefinition::new("open");

/// The idempotency key (and action id) of a step of a playbook for an alert.
pub fn action_id(alert_id: &str, playbook: &str, step: usize) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{alert_id}\x1f{playbook}\x1f{step}").as_bytes());
    let hex: String = h.iter().take(13).map(|b| format!("{b:02x}")).collect();
    format!("act_{hex}")
}

/// Where an action is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waits for the previous step.
    Blocked,
    /// To send.
    Pending,
    /// Waits for an analyst.
    AwaitingApproval,
    /// Done: the target confirmed it.
    Succeeded,
    /// Given up (a permanent error, or out of attempts).
    Failed,
    /// An approval gate an analyst approved.
    Approved,
    /// An approval gate an analyst denied.
    Denied,
    /// An approval gate nobody decided in time.
    Expired,
    /// Not run: an earlier step failed, was denied or expired.
    Cancelled,
    /// Recorded, not sent (`dry_run`).
    DryRun,
}

impl State {
    /// Whether the action is over.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            State::Blocked | State::Pending | State::AwaitingApproval
        )
    }

    /// Whether the playbook may go on after this step.
    fn lets_next_run(self, continue_on_error: bool) -> bool {
        match self {
            State::Succeeded | State::Approved | State::DryRun => true,
            State::Failed => continue_on_error,
            _ => false,
        }
    }

    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            State::Blocked => "blocked",
            State::Pending => "pending",
            State::AwaitingApproval => "awaiting_approval",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::DryRun => "dry_run",
        }
    }
}

/// One planned action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Its id, which is also its idempotency key (`webhook-id`).
    pub id: String,
    /// The alert that caused it.
    pub alert_id: String,
    /// The alert's rule.
    pub rule_id: String,
    /// The playbook.
    pub playbook: String,
    /// The step's position in the playbook.
    pub step: u32,
    /// What it does.
    pub action: ActionKind,
    /// The configured target it calls.
    pub target: Option<String>,
    /// Its parameters, rendered from the alert.
    pub params: BTreeMap<String, String>,
    /// Whether the playbook goes on when it fails.
    pub continue_on_error: bool,
    /// Where it is.
    pub state: State,
    /// Attempts made.
    pub attempts: u32,
    /// When to try next (wall clock, ms).
    pub next_attempt_ms: i64,
    /// Planned at (wall clock, ms).
    pub created_ms: i64,
    /// Last change (wall clock, ms).
    pub updated_ms: i64,
    /// Event time (ms) of the alert's last event: when an enforcement takes effect.
    pub trigger_ms: i64,
    /// Approval deadline (wall clock, ms), for gates.
    pub expires_ms: Option<i64>,
    /// The last error (never holding a secret).
    pub last_error: Option<String>,
    /// Who approved or denied a gate.
    pub decided_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

impl ActionRecord {
    /// The record as shown to people and written to logs: token values replaced by a hash
    /// prefix, since a token is a credential.
    pub fn redacted(&self) -> ActionRecord {
        let mut r = self.clone();
        if let Some(t) = r.params.get_mut("token") {
            *t = redact(t);
        }
        r
    }
}

/// A credential shown by a short hash of it.
pub fn redact(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(secret.as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}…")
}

/// One attempt of an action, in the action log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The action.
    pub action_id: String,
    /// Its number (1-based).
    pub n: u32,
    /// When (wall clock, ms).
    pub at_ms: i64,
    /// The HTTP status, if a response came.
    pub status: Option<u16>,
    /// What happened.
    pub outcome: String,
    /// How long it took (ms).
    pub latency_ms: u64,
}

/// An outbox error.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {message}")]
pub struct OutboxError {
    path: String,
    message: String,
}

/// The outbox.
pub struct Outbox {
    db: Database,
    path: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.path)
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`.
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        let p = path.display().to_string();
        let db = Database::create(path).map_err(|e| OutboxError {
            path: p.clone(),
            message: match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "in use by another process (a running `cordon run`?); the outbox has one writer"
                        .to_owned()
                }
                e => e.to_string(),
            },
        })?;
        let out = Outbox { db, path: p };
        out.write(|tx| {
            tx.open_table(ACTIONS)?;
            tx.open_table(ATTEMPTS)?;
            tx.open_table(OPEN)?;
            Ok(())
        })?;
        Ok(out)
    }

    fn err(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Adds actions that are not there yet (by id), in one durable commit. Returns how many
    /// were new.
    pub fn plan(&self, records: &[ActionRecord]) -> Result<usize, OutboxError> {
        let mut added = 0;
        self.write(|tx| {
            let mut t = tx.open_table(ACTIONS)?;
            let mut open = tx.open_table(OPEN)?;
            for r in records {
                if t.get(r.id.as_str())?.is_some() {
                    continue;
                }
                let bytes =
                    serde_json::to_vec(r).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                t.insert(r.id.as_str(), bytes.as_slice())?;
                if !r.state.is_final() {
                    open.insert(r.id.as_str(), 0)?;
                }
                added += 1;
            }
            Ok(())
        })?;
        Ok(added)
    }

    /// One action.
    pub fn get(&self, id: &str) -> Result<Option<ActionRecord>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ACTIONS).map_err(|e| self.err(e))?;
        let Some(v) = t.get(id).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.err(format!("action {id}: {e}")))
    }

    /// Every action, by id.
    pub fn all(&self) -> Result<Vec<ActionRecord>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ACTIONS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| self.err(format!("action {}: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// The actions not yet final (blocked, pending, awaiting approval).
    pub fn open_actions(&self) -> Result<Vec<ActionRecord>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let open = tx.open_table(OPEN).map_err(|e| self.err(e))?;
        let t = tx.open_table(ACTIONS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in open.iter().map_err(|e| self.err(e))? {
            let (k, _) = row.map_err(|e| self.err(e))?;
            if let Some(v) = t.get(k.value()).map_err(|e| self.err(e))? {
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|e| self.err(format!("action {}: {e}", k.value())))?,
                );
            }
        }
        Ok(out)
    }

    /// The attempts of an action, in order.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ATTEMPTS).map_err(|e| self.err(e))?;
        let lo = format!("{id}/");
        let hi = format!("{id}0");
        let mut out = Vec::new();
        for row in t.range(lo.as_str()..hi.as_str()).map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Saves an action's new state, with its attempt if one was made, then moves the
    /// playbook on: the next step becomes pending (or awaiting approval) when this one lets
    /// it, and every later step is cancelled when it does not. One durable commit.
    pub fn update(&self, r: &ActionRecord, attempt: Option<&Attempt>) -> Result<(), OutboxError> {
        self.write(|tx| {
            let mut t = tx.open_table(ACTIONS)?;
            let mut open = tx.open_table(OPEN)?;
            let corrupt = |e: serde_json::Error| redb::Error::Corrupted(e.to_string());
            t.insert(
                r.id.as_str(),
                serde_json::to_vec(r).map_err(corrupt)?.as_slice(),
            )?;
            if r.state.is_final() {
                open.remove(r.id.as_str())?;
            } else {
                open.insert(r.id.as_str(), 0)?;
            }
            if let Some(a) = attempt {
                let mut log = tx.open_table(ATTEMPTS)?;
                let key = format!("{}/{:06}", a.action_id, a.n);
                log.insert(
                    key.as_str(),
                    serde_json::to_vec(a).map_err(corrupt)?.as_slice(),
                )?;
            }
            if !r.state.is_final() {
                return Ok(());
            }
            // The later steps of the same playbook for the same alert, by their ids.
            let go_on = r.state.lets_next_run(r.continue_on_error);
            let now = now_ms();
            let mut step = r.step as usize + 1;
            loop {
                let id = action_id(&r.alert_id, &r.playbook, step);
                let Some(v) = t.get(id.as_str())?.map(|v| v.value().to_vec()) else {
                    break;
                };
                let mut o: ActionRecord = serde_json::from_slice(&v).map_err(corrupt)?;
                step += 1;
                if o.state != State::Blocked {
                    continue;
                }
                let first = o.step == r.step + 1;
                if go_on && first {
                    o.state = if o.action == ActionKind::RequireApproval {
                        State::AwaitingApproval
                    } else {
                        State::Pending
                    };
                    if o.action == ActionKind::RequireApproval {
                        let ttl = o
                            .params
                            .get("expires")
                            .and_then(|e| humantime::parse_duration(e).ok())
                            .map_or(3_600_000, |d| d.as_millis() as i64);
                        o.expires_ms = Some(now + ttl);
                    }
                    o.next_attempt_ms = now;
                } else if !go_on {
                    o.state = State::Cancelled;
                    o.last_error = Some(format!(
                        "step {} of the playbook ended {}",
                        r.step + 1,
                        r.state.name()
                    ));
                    open.remove(o.id.as_str())?;
                } else {
                    break;
                }
                o.updated_ms = now;
                t.insert(
                    o.id.as_str(),
                    serde_json::to_vec(&o).map_err(corrupt)?.as_slice(),
                )?;
                if go_on {
                    break;
                }
            }
            Ok(())
        })
    }

    /// An analyst's decision on an approval gate. Only a gate awaiting approval can be
    /// decided; the reason and who decided are kept.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<ActionRecord, String> {
        let Some(mut r) = self.get(id).map_err(|e| e.to_string())? else {
            return Err(format!("no action {id}"));
        };
        if r.state != State::AwaitingApproval {
            return Err(format!(
                "action {id} is {}, not awaiting approval",
                r.state.name()
            ));
        }
        let now = now_ms();
        if r.expires_ms.is_some_and(|e| now >= e) {
            r.state = State::Expired;
            r.updated_ms = now;
            self.update(&r, None).map_err(|e| e.to_string())?;
            return Err(format!("action {id} expired before the decision"));
        }
        r.state = if approve {
            State::Approved
        } else {
            State::Denied
        };
        r.decided_by = Some(by.to_owned());
        r.reason = Some(reason.to_owned());
        r.updated_ms = now;
        self.update(&r, None).map_err(|e| e.to_string())?;
        Ok(r)
    }

    /// Expires the gates whose deadline passed. Returns how many.
    pub fn expire(&self, now: i64) -> Result<usize, OutboxError> {
        let mut n = 0;
        for mut r in self.open_actions()? {
            if r.state == State::AwaitingApproval && r.expires_ms.is_some_and(|e| now >= e) {
                r.state = State::Expired;
                r.updated_ms = now;
                self.update(&r, None)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
