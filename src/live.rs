//! The API's view of a running `cordon run`: the engine shared with the pipeline thread
//! (locked one record at a time there, briefly here), so the API can read an agent's profile,
//! list the rules in force and hot-reload them between two records; and the metrics page.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cordon_query::api::Live;
use cordon_query::metrics::Exposition;
use serde_json::{json, Value};

use cordon_detect::engines::{Engines, Inner, Progress};

/// An agent's profile as JSON (`cordon baseline show --json` and `GET /api/v1/agents/{id}`).
pub fn profile_json(agent: &str, p: &cordon_detect::profile::Profile) -> Value {
    let warm = p.events >= cordon_detect::profile::NOVELTY_WARMUP || p.peer.is_some();
    json!({
        "agent": agent,
        "events": p.events,
        "peer": p.peer.as_deref(),
        "last_seen": jiff::Timestamp::from_nanosecond(i128::from(p.last_seen()))
            .ok()
            .map(|t| t.to_string()),
        "calls_per_minute": p.rate.rate(),
        "calls_per_minute_by_hour_utc": p.rate.hour_of_day(),
        "minutes_learnt": p.rate.buckets(),
        "typical_result_bytes": p.volume.typical(),
        "result_sizes_learnt": p.volume.count(),
        "typical_argument_bytes": p.args_volume.typical(),
        "deny_ratio": p.deny.ratio(),
        "error_ratio": p.errors.ratio(),
        "typical_session_calls": p.session_calls.typical(),
        "typical_session_servers": p.session_breadth.typical(),
        "sessions_learnt": p.session_calls.count(),
        "distinct_tools": p.tools.len(),
        "distinct_servers": p.servers.len(),
        "distinct_methods": p.methods.len(),
        "distinct_recipients": p.recipients.len(),
        "novelty_reported": warm,
        "memory_bytes": p.memory_bytes(),
    })
}

/// A rule as JSON, with its counters.
pub fn rule_json(r: &cordon_rules::Rule, s: &cordon_detect::engine::RuleStats) -> Value {
    json!({
        "id": r.id,
        "version": r.version,
        "title": r.title,
        "description": r.description,
        "severity": r.severity.name(),
        "tags": r.tags,
        "playbook": r.playbook,
        "query": r.query_text,
        "matched": s.matched,
        "alerts": s.alerts,
        "suppressed": s.suppressed,
    })
}

/// The running engine behind the API.
pub struct EngineLive {
    /// The engines the pipeline runs.
    pub engines: Arc<Engines>,
    /// Rule files to reload from (empty: the built-in pack).
    pub rule_paths: Vec<PathBuf>,
    /// Whether the input is ready (Kafka: every assigned partition's state restored).
    pub ready: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
}

impl EngineLive {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.engines.lock()
    }
}

impl Live for EngineLive {
    fn agent(&self, id: &str) -> Option<Value> {
        let e = self.engines.view();
        e.profile(id).map(|p| profile_json(id, &p))
    }

    fn rules(&self) -> Vec<Value> {
        let e = self.engines.view();
        e.rules()
            .iter()
            .zip(&e.rule_stats())
            .map(|(r, s)| rule_json(r, s))
            .collect()
    }

    fn ready(&self) -> Result<(), String> {
        self.ready.as_ref().map_or(Ok(()), |f| f())
    }

    fn reload(&self) -> Result<Value, String> {
        // Load and check outside the lock: the pipeline keeps running meanwhile.
        let set = crate::commands::load_rules(&self.rule_paths).map_err(|f| f.message)?;
        let failing: Vec<String> = set
            .rules
            .iter()
            .flat_map(|r| {
                cordon_detect::engine::run_rule_tests(r)
                    .into_iter()
                    .map(move |m| format!("{}: {m}", r.id))
            })
            .collect();
        if !failing.is_empty() {
            return Err(format!(
                "{} failing rule test{}:\n{}",
                failing.len(),
                if failing.len() == 1 { "" } else { "s" },
                failing.join("\n")
            ));
        }
        let report = self.lock().replace_rules(&set);
        tracing::info!(
            kept = report.kept.len(),
            added = report.added.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            "rules reloaded"
        );
        Ok(json!(report))
    }
}

/// Everything `/metrics` reads.
pub struct MetricsSources {
    /// Pipeline counters.
    pub progress: Arc<Progress>,
    /// The engines.
    pub engines: Arc<Engines>,
    /// Kafka input counters.
    pub kafka: Option<Arc<cordon_kafka::KafkaStats>>,
    /// The store's counters.
    pub store: Option<cordon_query::store::StatsHandle>,
    /// The responder.
    pub responder: Option<Arc<cordon_respond::Responder>>,
    /// The SIEM sink's counters.
    pub siem: Option<Arc<cordon_respond::siem::SiemStats>>,
}

impl MetricsSources {
    /// Appends every metric.
    pub fn render(&self, out: &mut Exposition) {
        let p = &self.progress;
        let c = |out: &mut Exposition, name: &str, help: &str, v: u64| {
            out.counter(name, help, &[], v as f64)
        };
        c(
            out,
            "cordon_records_total",
            "Records read",
            p.records.load(Ordering::Relaxed),
        );
        c(
            out,
            "cordon_events_total",
            "Records decoded into events",
            p.events.load(Ordering::Relaxed),
        );
        c(
            out,
            "cordon_dead_letters_total",
            "Records dead-lettered (undecodable, too long or late)",
            p.dead_lettered.load(Ordering::Relaxed),
        );
        c(
            out,
            "cordon_decode_full_total",
            "Native records the decoder's fast path left to the full decoder (escapes, unusual shapes, errors)",
            cordon_ingest::full_decodes(),
        );
        c(
            out,
            "cordon_late_events_total",
            "Events behind the watermark",
            p.late.load(Ordering::Relaxed),
        );
        c(
            out,
            "cordon_alerts_total",
            "Alerts raised",
            p.alerts.load(Ordering::Relaxed),
        );
        let (copies, copy_secs) = cordon_detect::copies_on_write();
        c(
            out,
            "cordon_engine_copies_on_write_total",
            "Windows and partial matches an engine copied before changing them, because a checkpoint being written still shared them",
            copies,
        );
        out.counter(
            "cordon_engine_copy_on_write_seconds_total",
            "Time the engines spent on those copies",
            &[],
            copy_secs,
        );
        {
            let e = self.engines.view();
            let s = e.stats();
            c(
                out,
                "cordon_events_reordered_total",
                "Events put back in time order",
                s.reordered,
            );
            c(
                out,
                "cordon_events_duplicate_total",
                "Events dropped as copies of one already read (same event.id and time)",
                s.duplicates,
            );
            c(
                out,
                "cordon_suppression_keys_evicted_total",
                "Suppression keys evicted because the table was full",
                e.suppression_evictions(),
            );
            for (r, st) in e.rules().iter().zip(&e.rule_stats()) {
                let l = [("rule", r.id.as_str())];
                out.counter(
                    "cordon_rule_matches_total",
                    "Events a rule's query matched",
                    &l,
                    st.matched as f64,
                );
                out.counter(
                    "cordon_rule_alerts_total",
                    "Alerts a rule raised",
                    &l,
                    st.alerts as f64,
                );
                out.counter(
                    "cordon_rule_suppressed_total",
                    "Alerts a rule's suppression held back",
                    &l,
                    st.suppressed as f64,
                );
            }
            for (id, st) in e.state_stats(false) {
                let l = [("rule", id.as_str())];
                out.gauge(
                    "cordon_partial_matches",
                    "Open partial matches of a multi-event rule",
                    &l,
                    st.open as f64,
                );
                out.counter(
                    "cordon_partial_matches_evicted_total",
                    "Partial matches evicted by the state cap",
                    &l,
                    st.evicted as f64,
                );
            }
            let pr = e.profile_stats();
            out.gauge(
                "cordon_profiles",
                "Agent profiles held",
                &[("tier", "hot")],
                pr.hot as f64,
            );
            out.gauge(
                "cordon_profiles",
                "Agent profiles held",
                &[("tier", "cold")],
                pr.cold as f64,
            );
            c(
                out,
                "cordon_profiles_dropped_total",
                "Cold profiles dropped by the cold-tier cap",
                pr.dropped,
            );
        }
        if let Some(k) = &self.kafka {
            k.render(out);
        }
        if let Some(s) = &self.store {
            let s = s.stats();
            c(
                out,
                "cordon_store_alerts_written_total",
                "Alerts written to the store",
                s.alerts_written,
            );
            c(
                out,
                "cordon_store_files_written_total",
                "Parquet files written",
                s.files_written,
            );
            c(
                out,
                "cordon_store_compactions_total",
                "Partitions compacted by the flusher",
                s.compactions,
            );
            c(
                out,
                "cordon_store_flush_errors_total",
                "Store flushes that failed (retried)",
                s.flush_errors,
            );
            c(
                out,
                "cordon_store_duplicates_total",
                "Alerts not stored again because the store had their id (replays)",
                s.duplicates,
            );
            out.gauge(
                "cordon_store_buffered_alerts",
                "Alerts waiting to be written",
                &[],
                s.buffered as f64,
            );
        }
        if let Some(r) = &self.responder {
            let s = r.stats();
            c(
                out,
                "cordon_actions_planned_total",
                "Response actions planned",
                s.planned,
            );
            c(
                out,
                "cordon_action_attempts_total",
                "Response delivery attempts",
                s.attempts,
            );
            c(
                out,
                "cordon_action_retries_total",
                "Response attempts retried",
                s.retried,
            );
            c(
                out,
                "cordon_actions_succeeded_total",
                "Response actions that succeeded",
                s.succeeded,
            );
            c(
                out,
                "cordon_actions_failed_total",
                "Response actions that failed for good",
                s.failed,
            );
            c(
                out,
                "cordon_actions_expired_total",
                "Approval gates that expired",
                s.expired,
            );
            out.gauge(
                "cordon_action_latency_p99_seconds",
                "Alert-to-action latency, 99th percentile",
                &[],
                s.latency_p99_ms as f64 / 1000.0,
            );
        }
        if let Some(s) = &self.siem {
            c(
                out,
                "cordon_siem_alerts_sent_total",
                "Alerts delivered to the SIEM",
                s.sent.load(Ordering::Relaxed),
            );
            c(
                out,
                "cordon_siem_retries_total",
                "SIEM requests retried",
                s.retried.load(Ordering::Relaxed),
            );
            c(
                out,
                "cordon_siem_alerts_failed_total",
                "Alerts the SIEM did not accept after every attempt",
                s.failed.load(Ordering::Relaxed),
            );
            c(
                out,
                "cordon_siem_alerts_dropped_total",
                "Alerts not queued for the SIEM (queue full)",
                s.dropped.load(Ordering::Relaxed),
            );
        }
    }
}
