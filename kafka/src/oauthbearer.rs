//! SASL/OAUTHBEARER for the Kafka clients: tokens from the organisation's OAuth 2.0
//! authorization server by the client credentials grant (RFC 6749 §4.4), the way Kafka
//! deployments behind an IdP (KIP-768) expect their clients to authenticate.
//!
//! Why our own token source rather than librdkafka's built-in OIDC support: that needs
//! librdkafka built against libcurl, a second HTTP and TLS stack beside the one Cordon already
//! uses for its responders; here the request goes through `reqwest` (rustls), its errors name
//! the endpoint and the OAuth error code, and the client secret comes from the environment or
//! a file, never from the configuration text. librdkafka asks for a token when a client starts
//! and again at 80% of the previous token's lifetime; each request is counted in metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::client::OAuthToken;

/// `[kafka.oauthbearer]` of `cordon.toml`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthConfig {
    /// The authorization server's token endpoint (`https://idp.example/oauth2/token`).
    pub token_endpoint: String,
    /// Cordon's client id at the authorization server.
    pub client_id: String,
    /// Its secret: `env:NAME` or `file:PATH`, never the secret itself.
    pub client_secret: String,
    /// Scopes to ask for (space-separated), if the server needs them.
    #[serde(default)]
    pub scope: Option<String>,
    /// The principal name given to librdkafka (default: the client id).
    #[serde(default)]
    pub principal: Option<String>,
    /// A PEM file of CA certificates to trust for the token endpoint, beside the public roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// Token requests made and failed.
#[derive(Debug, Default)]
pub struct TokenStats {
    /// Tokens obtained.
    pub issued: AtomicU64,
    /// Requests that failed (librdkafka retries them).
    pub failures: AtomicU64,
}

/// Reads a secret given as `env:NAME` or `file:PATH`; `what` names it in errors.
pub fn read_secret(what: &str, source: &str) -> Result<String> {
    if let Some(name) = source.strip_prefix("env:") {
        std::env::var(name).map_err(|_| {
            anyhow::anyhow!("{what} comes from the environment variable {name}, which is not set")
        })
    } else if let Some(path) = source.strip_prefix("file:") {
        Ok(std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{what}: {path}: {e}"))?
            .trim_end_matches(['\r', '\n'])
            .to_owned())
    } else {
        anyhow::bail!(
            "{what}: expected \"env:NAME\" or \"file:PATH\" (the secret itself never goes in the config)"
        )
    }
}

/// Gets tokens for the Kafka clients.
pub struct TokenSource {
    endpoint: url::Url,
    client_id: String,
    secret: String,
    scope: Option<String>,
    principal: String,
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
    /// Counters for `/metrics`.
    pub stats: Arc<TokenStats>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenSource {
    /// Checks the section and reads the secret (errors name the field).
    pub fn new(c: &OauthConfig, rt: tokio::runtime::Handle) -> Result<TokenSource> {
        let endpoint = url::Url::parse(&c.token_endpoint).map_err(|e| {
            anyhow::anyhow!(
                "[kafka.oauthbearer]: token_endpoint {:?}: expected an http(s) URL ({e})",
                c.token_endpoint
            )
        })?;
        if !matches!(endpoint.scheme(), "https" | "http") {
            anyhow::bail!(
                "[kafka.oauthbearer]: token_endpoint {:?}: expected an http(s) URL",
                c.token_endpoint
            );
        }
        if c.client_id.is_empty() {
            anyhow::bail!("[kafka.oauthbearer]: client_id is empty");
        }
        let secret = read_secret("[kafka.oauthbearer]: client_secret", &c.client_secret)?;
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        if let Some(path) = &c.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("[kafka.oauthbearer]: ca_file {path}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("[kafka.oauthbearer]: ca_file {path}: expected PEM"))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(TokenSource {
            endpoint,
            client_id: c.client_id.clone(),
            secret,
            scope: c.scope.clone(),
            principal: c.principal.clone().unwrap_or_else(|| c.client_id.clone()),
            http: http.build().context("[kafka.oauthbearer]: HTTP client")?,
            rt,
            stats: Arc::new(TokenStats::default()),
        })
    }

    /// A fresh token, for librdkafka (called on a client's polling thread).
    pub fn token(&self) -> Result<OAuthToken, String> {
        let r = self.fetch();
        match &r {
            Ok(_) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint = %self.endpoint, client_id = %self.client_id, "Kafka OAUTHBEARER token obtained");
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "Kafka OAUTHBEARER token not obtained; librdkafka retries");
            }
        }
        r
    }

    fn fetch(&self) -> Result<OAuthToken, String> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = &self.scope {
            form.push(("scope", s.as_str()));
        }
        let at = &self.endpoint;
        // Built inside the runtime: the request's timeout is a tokio timer.
        let (status, body) = self.rt.block_on(async {
            let resp = self
                .http
                .post(at.clone())
                .basic_auth(&self.client_id, Some(&self.secret))
                .form(&form)
                .send()
                .await
                .map_err(|e| format!("token endpoint {at}: {}", e.without_url()))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("token endpoint {at}: {}", e.without_url()))?;
            Ok::<_, String>((status, body))
        })?;
        if !status.is_success() {
            let why = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| match e.error_description {
                    Some(d) => format!("{}: {d}", e.error),
                    None => e.error,
                })
                .unwrap_or_else(|_| "no OAuth error in the response".into());
            return Err(format!("token endpoint {at}: HTTP {status}: {why}"));
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            format!("token endpoint {at}: expected a JSON token response with access_token ({e})")
        })?;
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let lifetime_ms = now_ms + 1000 * t.expires_in.unwrap_or(3600).min(86_400 * 365) as i64;
        Ok(OAuthToken {
            token: t.access_token,
            principal_name: self.principal.clone(),
            lifetime_ms,
        })
    }
}
