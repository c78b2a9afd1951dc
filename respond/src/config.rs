//! The `[response]` section of `cordon.toml`: where the outbox lives, dry-run, which playbooks,
//! and the allow-list of targets — the only URLs Cordon will ever call. Secrets (webhook
//! signing secrets, OAuth client secrets) are read from environment variables or files named
//! here, never written in the file itself, and never shown in errors or logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sign::Secret;

/// The `[response]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// The durable outbox (a redb file).
    pub outbox: PathBuf,
    /// Record what would be done without calling anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Playbook files or directories (default: the built-in playbooks).
    #[serde(default)]
    pub playbooks: Vec<PathBuf>,
    /// Append every attempt and outcome here as JSON lines (`cordon.action.attempt` events),
    /// for a SIEM or an audit trail. Tokens appear only as a hash.
    #[serde(default)]
    pub action_log: Option<PathBuf>,
    /// Base URL of the console, for links in notifications.
    #[serde(default)]
    pub console_url: Option<String>,
    /// The targets, by name.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
}

/// How a target is called.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// An OAuth 2.0 revocation endpoint (RFC 7009): form POST with client authentication.
    OauthRevocation,
    /// A JSON webhook signed per Standard Webhooks.
    Webhook,
}

/// OAuth client authentication at a revocation endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// One target.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// How it is called.
    pub kind: TargetKind,
    /// Its URL.
    pub url: String,
    /// Environment variable holding the `whsec_…` signing secret (webhooks).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the `whsec_…` signing secret (webhooks).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// OAuth client id (revocation endpoints).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the OAuth client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the OAuth client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Client authentication method.
    #[serde(default)]
    pub auth: ClientAuth,
    /// Timeout of one request (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts before the action fails (default 8).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Requests per second at most (default 20).
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Consecutive failures that open the circuit (default 5).
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long an open circuit stays open (default 30s).
    #[serde(default)]
    pub breaker_cooldown: Option<String>,
    /// First retry delay, doubled on each retry up to a minute (default 500ms).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A target ready to call: URL parsed, secrets loaded.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// How it is called.
    pub kind: TargetKind,
    /// Its URL.
    pub url: url::Url,
    /// Webhook signing secret.
    pub secret: Option<Secret>,
    /// OAuth client id and secret.
    pub client: Option<(String, ClientSecret)>,
    /// Client authentication.
    pub auth: ClientAuth,
    /// Request timeout.
    pub timeout: Duration,
    /// Attempts before failing.
    pub max_attempts: u32,
    /// Requests per second at most.
    pub rate_per_s: f64,
    /// Failures that open the circuit.
    pub breaker_failures: u32,
    /// How long the circuit stays open.
    pub breaker_cooldown: Duration,
    /// First retry delay.
    pub backoff: Duration,
}

/// An OAuth client secret; its `Debug` form never shows it.
#[derive(Clone)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(…)")
    }
}

fn read_secret(
    target: &str,
    what: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<String>, String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(format!(
            "[response.targets.{target}]: give {what}_env or {what}_file, not both"
        )),
        (Some(var), None) => std::env::var(var).map(Some).map_err(|_| {
            format!(
                "[response.targets.{target}]: environment variable {var} ({what}_env) is not set"
            )
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|e| {
                format!(
                    "[response.targets.{target}]: {what}_file {}: {e}",
                    path.display()
                )
            }),
        (None, None) => Ok(None),
    }
}

fn dur(
    target: &str,
    field: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            format!("[response.targets.{target}]: {field} {s:?} is not a duration like 10s ({e})")
        }),
    }
}

impl ResponseConfig {
    /// Resolves every target: parses URLs and durations, reads secrets. Errors name the
    /// target and the field, never a secret's value.
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        let mut out = Vec::new();
        for (name, t) in &self.targets {
            let url = url::Url::parse(&t.url)
                .map_err(|e| format!("[response.targets.{name}]: url {:?}: {e}", t.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "[response.targets.{name}]: url must be http or https, not {}",
                    url.scheme()
                ));
            }
            let secret = read_secret(name, "secret", &t.secret_env, &t.secret_file)?
                .map(|s| Secret::parse(&s).map_err(|e| format!("[response.targets.{name}]: {e}")))
                .transpose()?;
            let client_secret = read_secret(
                name,
                "client_secret",
                &t.client_secret_env,
                &t.client_secret_file,
            )?;
            let client = match (&t.client_id, client_secret) {
                (Some(id), Some(s)) => Some((id.clone(), ClientSecret(s))),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(format!(
                        "[response.targets.{name}]: client_id and client_secret_env/client_secret_file go together"
                    ))
                }
                (None, None) => None,
            };
            match t.kind {
                TargetKind::Webhook if secret.is_none() => {
                    return Err(format!(
                        "[response.targets.{name}]: a webhook target needs secret_env or secret_file (a whsec_ secret to sign with)"
                    ))
                }
                TargetKind::OauthRevocation if client.is_none() => {
                    return Err(format!(
                        "[response.targets.{name}]: an oauth_revocation target needs client_id and client_secret_env or client_secret_file"
                    ))
                }
                _ => {}
            }
            let rate = t.rate_per_s.unwrap_or(20.0);
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(format!(
                    "[response.targets.{name}]: rate_per_s must be a positive number"
                ));
            }
            out.push(Target {
                name: name.clone(),
                kind: t.kind,
                url,
                secret,
                client,
                auth: t.auth,
                timeout: dur(name, "timeout", &t.timeout, Duration::from_secs(10))?,
                max_attempts: t.max_attempts.unwrap_or(8).max(1),
                rate_per_s: rate,
                breaker_failures: t.breaker_failures.unwrap_or(5).max(1),
                breaker_cooldown: dur(
                    name,
                    "breaker_cooldown",
                    &t.breaker_cooldown,
                    Duration::from_secs(30),
                )?,
                backoff: dur(name, "backoff", &t.backoff, Duration::from_millis(500))?,
            });
        }
        Ok(out)
    }
}
