//! `[kafka]` of `cordon.toml`: what the input reads and writes, how it commits, and the
//! librdkafka properties common to its consumer and producer (secrets resolved from the
//! environment or files, never written in the config).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cordon_ingest::Format;
use rdkafka::config::ClientConfig;

/// librdkafka's prefetch, and the records queued for the engine threads, by default.
pub(super) const PREFETCH: usize = 64 << 20;

/// `[kafka]` of `cordon.toml`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,…`.
    pub brokers: String,
    /// The consumer group.
    pub group_id: String,
    /// Topics of audit events.
    pub topics: Vec<String>,
    /// Their format (`native`, `agentgateway`, `docker`; default native).
    #[serde(default)]
    pub format: Option<String>,
    /// The format of particular topics, overriding `format` for them (`[kafka.formats]`,
    /// `"gateway-a" = "agentgateway"`): one group can read gateways of several kinds, each
    /// writing to its own topic.
    #[serde(default)]
    pub formats: BTreeMap<String, String>,
    /// Alerts (OCSF JSON, key = agent id) are produced here, delivery confirmed before commit.
    #[serde(default)]
    pub alerts_topic: Option<String>,
    /// Undecodable or late records go here with their origin and reason in headers.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Every response action attempt and its outcome (JSON, key = alert id, tokens
    /// redacted) goes here, when responses are configured.
    #[serde(default)]
    pub actions_topic: Option<String>,
    /// Where each partition's engine state is checkpointed: a directory or an object store
    /// URL. Without it, state is in memory only.
    #[serde(default)]
    pub state_store: Option<String>,
    /// Records per batch (default 10 000).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Threads that run the partitions' engines side by side (default: the machine's
    /// cores). Each partition runs on one thread at a time, so more than the partitions
    /// assigned gain nothing; `1` runs them all on the poll loop's thread.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Longest between two commits (and checkpoints); default 1s.
    #[serde(default)]
    pub commit_interval: Option<String>,
    /// Longest to wait for deliveries to the broker at a commit, and after SIGTERM for all
    /// the commits still to come together (default 30s).
    #[serde(default)]
    pub shutdown_timeout: Option<String>,
    /// Bytes librdkafka may prefetch (default 64 MiB), and bytes of records handed to the
    /// engine threads and not yet run, with the buffers kept for reuse (the same again): the
    /// memory bound when Cordon falls behind.
    #[serde(default)]
    pub prefetch_bytes: Option<usize>,
    /// How often librdkafka reports consumer lag (default 2s).
    #[serde(default)]
    pub stats_interval: Option<String>,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from `env:NAME` or `file:PATH`
    /// (e.g. `"sasl.password" = "env:KAFKA_PASSWORD"`), never written in the config itself.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// SASL/OAUTHBEARER with tokens from an OAuth 2.0 token endpoint (client credentials).
    #[serde(default)]
    pub oauthbearer: Option<crate::oauthbearer::OauthConfig>,
}

pub(super) fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    match v {
        Some(s) => humantime::parse_duration(s).with_context(|| {
            format!("[kafka]: {field}: {s:?} is not a duration (expected e.g. \"1s\", \"500ms\")")
        }),
        None => Ok(default),
    }
}

/// The format of each topic's records: `format`, unless `[kafka.formats]` names the topic.
#[derive(Clone, Debug)]
pub(super) struct TopicFormats {
    default: Format,
    topics: Vec<(String, Format)>,
}

impl TopicFormats {
    /// The format of `topic`'s records (looked up once per job, not per record).
    pub(super) fn of(&self, topic: &str) -> Format {
        self.topics
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(self.default, |(_, f)| *f)
    }
}

impl KafkaConfig {
    /// `format` and `[kafka.formats]`, checked: every format name known, and every topic
    /// given a format one the input reads. A name that is in no subscription would never
    /// apply, most likely a misspelling that would dead-letter the topic's records, so it is
    /// refused; with a pattern among `topics` (`^…`, which librdkafka matches against the
    /// broker's topics) any name is accepted, since it may match.
    pub(super) fn formats(&self) -> Result<TopicFormats> {
        let default: Format = self
            .format
            .as_deref()
            .unwrap_or("native")
            .parse()
            .map_err(|e: String| anyhow::anyhow!("[kafka]: format: {e}"))?;
        let patterns = self.topics.iter().any(|t| t.starts_with('^'));
        let mut topics = Vec::with_capacity(self.formats.len());
        for (topic, name) in &self.formats {
            let f: Format = name
                .parse()
                .map_err(|e: String| anyhow::anyhow!("[kafka.formats]: {topic:?}: {e}"))?;
            if !patterns && !self.topics.contains(topic) {
                anyhow::bail!(
                    "[kafka.formats]: {topic:?} is not one of topics {:?}; a format applies \
                     only to a topic the input reads",
                    self.topics
                );
            }
            topics.push((topic.clone(), f));
        }
        Ok(TopicFormats { default, topics })
    }

    /// The librdkafka properties common to the consumer and the producer, secrets resolved.
    pub(super) fn client(&self) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            if self.secrets.contains_key(k) {
                anyhow::bail!("[kafka]: {k:?} is in both [kafka.properties] and [kafka.secrets]");
            }
            c.set(k, v);
        }
        for (k, source) in &self.secrets {
            let value =
                crate::oauthbearer::read_secret(&format!("[kafka.secrets]: {k:?}"), source)?;
            c.set(k, value);
        }
        if self.oauthbearer.is_some() {
            match self.properties.get("sasl.mechanism").map(String::as_str) {
                None | Some("OAUTHBEARER") => {}
                Some(other) => anyhow::bail!(
                    "[kafka]: [kafka.oauthbearer] is set but sasl.mechanism is {other:?}; remove one"
                ),
            }
            c.set("sasl.mechanism", "OAUTHBEARER");
            if !self.properties.contains_key("security.protocol") {
                c.set("security.protocol", "SASL_SSL");
            }
        }
        Ok(c)
    }
}
