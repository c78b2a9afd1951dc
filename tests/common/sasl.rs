//! The broker's side of SASL, for the Kafka tests: tansu has no SASL listener, so this
//! front on loopback authenticates each connection — PLAIN, SCRAM-SHA-256 or -512 (RFC 5802,
//! 7677)
//! or OAUTHBEARER (RFC 7628, the bearer token checked by RFC 7662 introspection at the test
//! OAuth server) — and only then relays its bytes to tansu, which advertises the front's
//! port so that every connection a client makes comes through here.
//!
//! Before a connection has authenticated, the front answers only ApiVersions (relayed to
//! tansu, which lists SaslHandshake v0–1 and SaslAuthenticate v0–2), SaslHandshake v1 and
//! SaslAuthenticate v0–1; any other request closes the connection and is counted, so
//! nothing reaches the broker unauthenticated. With a TLS acceptor ([`start_with`]) it does
//! TLS first, as a SASL_SSL listener does.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const ITERATIONS: u32 = 4096;

/// Who may connect.
#[derive(Clone, Default)]
pub struct Accounts {
    /// PLAIN: user → password.
    pub plain: HashMap<String, String>,
    /// SCRAM-SHA-256 and -512: user → password (the front keeps only the derived keys).
    pub scram: HashMap<String, String>,
    /// OAUTHBEARER: the OAuth server's port; tokens are introspected there as `cordon`.
    pub introspect_port: Option<u16>,
}

/// What the front saw.
#[derive(Default)]
pub struct Counts {
    /// Connections authenticated, by mechanism.
    pub plain: AtomicU64,
    /// SCRAM-SHA-256 connections authenticated.
    pub scram: AtomicU64,
    /// SCRAM-SHA-512 connections authenticated.
    pub scram512: AtomicU64,
    /// OAUTHBEARER connections authenticated.
    pub oauthbearer: AtomicU64,
    /// Authentications refused (wrong password, bad proof, inactive token).
    pub failed: AtomicU64,
    /// Connections closed for sending something other than SASL before authenticating.
    pub refused: AtomicU64,
}

impl Counts {
    /// Every authenticated connection.
    pub fn authenticated(&self) -> u64 {
        self.plain.load(Ordering::Relaxed)
            + self.scram.load(Ordering::Relaxed)
            + self.scram512.load(Ordering::Relaxed)
            + self.oauthbearer.load(Ordering::Relaxed)
    }
}

/// SCRAM keys by user and hash.
type Scram = HashMap<(String, Sha), ScramKeys>;

/// SCRAM keys derived from a password (what a broker stores instead of it).
struct ScramKeys {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// The hash of a SCRAM mechanism.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Sha {
    S256,
    S512,
}

impl Sha {
    fn of(mechanism: &str) -> Option<Sha> {
        match mechanism {
            "SCRAM-SHA-256" => Some(Sha::S256),
            "SCRAM-SHA-512" => Some(Sha::S512),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Sha::S256 => Sha256::digest(data).to_vec(),
            Sha::S512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Sha::S256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Sha::S512 => {
                let mut m = Hmac::<Sha512>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// RFC 5802 `Hi()`: PBKDF2 with the mechanism's HMAC, one block.
fn salted_password(sha: Sha, password: &str, salt: &[u8]) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = sha.hmac(password.as_bytes(), &first);
    let mut out = u.clone();
    for _ in 1..ITERATIONS {
        u = sha.hmac(password.as_bytes(), &u);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

impl ScramKeys {
    fn derive(sha: Sha, password: &str, salt: Vec<u8>) -> ScramKeys {
        let salted = salted_password(sha, password, &salt);
        ScramKeys {
            stored_key: sha.digest(&sha.hmac(&salted, b"Client Key")),
            server_key: sha.hmac(&salted, b"Server Key"),
            salt,
        }
    }
}

/// Starts the front on `listener`, relaying authenticated connections to `upstream`.
pub fn start(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    upstream: String,
    accounts: Accounts,
) -> Arc<Counts> {
    start_with(rt, listener, upstream, accounts, None)
}

/// [`start`], with TLS first when `tls` is given (SASL_SSL).
pub fn start_with(
    rt: &tokio::runtime::Runtime,
    listener: TcpListener,
    upstream: String,
    accounts: Accounts,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let scram: Arc<Scram> = Arc::new(
        accounts
            .scram
            .iter()
            .flat_map(|(u, p)| {
                [Sha::S256, Sha::S512].map(|sha| {
                    let salt: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
                    ((u.clone(), sha), ScramKeys::derive(sha, p, salt))
                })
            })
            .collect(),
    );
    let accounts = Arc::new(accounts);
    let c = counts.clone();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, accounts, scram, c, tls) = (
                upstream.clone(),
                accounts.clone(),
                scram.clone(),
                c.clone(),
                tls.clone(),
            );
            tokio::spawn(async move {
                let _ = match tls {
                    Some(tls) => match tls.accept(client).await {
                        Ok(client) => serve(client, &upstream, &accounts, &scram, &c).await,
                        Err(_) => Ok(()),
                    },
                    None => serve(client, &upstream, &accounts, &scram, &c).await,
                };
            });
        }
    });
    counts
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let n = s.read_i32().await?;
    let mut buf = vec![0; usize::try_from(n).unwrap_or(0)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    s.write_all(&(body.len() as i32).to_be_bytes()).await?;
    s.write_all(body).await
}

/// A request's header: (api key, version, correlation id, where the body starts). Header v1
/// (non-flexible), which is what SaslHandshake and SaslAuthenticate v0–1 use.
fn header(frame: &[u8]) -> Option<(i16, i16, i32, usize)> {
    let key = i16::from_be_bytes(frame.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(frame.get(2..4)?.try_into().ok()?);
    let corr = i32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
    let id_len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    Some((
        key,
        version,
        corr,
        10 + usize::try_from(id_len).unwrap_or(0),
    ))
}

fn handshake_response(corr: i32, error: i16, mechanisms: &[&str]) -> Vec<u8> {
    let mut out = corr.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(mechanisms.len() as i32).to_be_bytes());
    for m in mechanisms {
        out.extend_from_slice(&(m.len() as i16).to_be_bytes());
        out.extend_from_slice(m.as_bytes());
    }
    out
}

fn authenticate_response(
    corr: i32,
    version: i16,
    error: i16,
    message: Option<&str>,
    bytes: &[u8],
) -> Vec<u8> {
    let mut out = corr.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    match message {
        Some(m) => {
            out.extend_from_slice(&(m.len() as i16).to_be_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
    if version >= 1 {
        out.extend_from_slice(&0i64.to_be_bytes());
    }
    out
}

/// Where a connection is in its SASL exchange.
enum Stage {
    Start,
    Mechanism(String),
    /// SCRAM after the server-first message: (hash, user, auth message so far, nonce).
    ScramSent(Sha, String, String, String),
}

/// What one SaslAuthenticate step decided.
enum Step {
    Continue(Vec<u8>, Stage),
    Done(Vec<u8>, String),
    Fail(String),
}

async fn serve<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    upstream: &str,
    accounts: &Accounts,
    scram: &Scram,
    counts: &Counts,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut stage = Stage::Start;
    loop {
        let frame = read_frame(&mut client).await?;
        let Some((key, version, corr, body)) = header(&frame) else {
            return Ok(());
        };
        match key {
            API_VERSIONS => {
                write_frame(&mut up, &frame).await?;
                let answer = read_frame(&mut up).await?;
                write_frame(&mut client, &answer).await?;
            }
            SASL_HANDSHAKE if version == 1 => {
                let mechanism = string_at(&frame, body).unwrap_or_default();
                let offered = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];
                let error = if offered.contains(&mechanism.as_str()) {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                write_frame(&mut client, &handshake_response(corr, error, &offered)).await?;
                if error != 0 {
                    return Ok(());
                }
                stage = Stage::Mechanism(mechanism);
            }
            SASL_AUTHENTICATE if version <= 1 => {
                let auth = bytes_at(&frame, body).unwrap_or_default();
                match step(
                    std::mem::replace(&mut stage, Stage::Start),
                    &auth,
                    accounts,
                    scram,
                )
                .await
                {
                    Step::Continue(reply, next) => {
                        write_frame(
                            &mut client,
                            &authenticate_response(corr, version, 0, None, &reply),
                        )
                        .await?;
                        stage = next;
                    }
                    Step::Done(reply, mechanism) => {
                        write_frame(
                            &mut client,
                            &authenticate_response(corr, version, 0, None, &reply),
                        )
                        .await?;
                        match mechanism.as_str() {
                            "PLAIN" => &counts.plain,
                            "SCRAM-SHA-256" => &counts.scram,
                            "SCRAM-SHA-512" => &counts.scram512,
                            _ => &counts.oauthbearer,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                        tokio::io::copy_bidirectional(&mut client, &mut up).await?;
                        return Ok(());
                    }
                    Step::Fail(why) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        let answer = authenticate_response(
                            corr,
                            version,
                            SASL_AUTHENTICATION_FAILED,
                            Some(&why),
                            &[],
                        );
                        write_frame(&mut client, &answer).await?;
                        return Ok(());
                    }
                }
            }
            _ => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
}

fn string_at(frame: &[u8], at: usize) -> Option<String> {
    let n = usize::try_from(i16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?)).ok()?;
    String::from_utf8(frame.get(at + 2..at + 2 + n)?.to_vec()).ok()
}

fn bytes_at(frame: &[u8], at: usize) -> Option<Vec<u8>> {
    let n = usize::try_from(i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?)).ok()?;
    Some(frame.get(at + 4..at + 4 + n)?.to_vec())
}

async fn step(stage: Stage, auth: &[u8], accounts: &Accounts, scram: &Scram) -> Step {
    let text = String::from_utf8_lossy(auth).into_owned();
    match stage {
        Stage::Start => Step::Fail("SaslAuthenticate before SaslHandshake".into()),
        Stage::Mechanism(m) if m == "PLAIN" => {
            let parts: Vec<&str> = text.split('\0').collect();
            match parts.as_slice() {
                [_, user, password] if accounts.plain.get(*user).is_some_and(|p| p == password) => {
                    Step::Done(Vec::new(), m)
                }
                _ => Step::Fail("PLAIN: wrong user name or password".into()),
            }
        }
        Stage::Mechanism(m) if Sha::of(&m).is_some() => {
            let sha = Sha::of(&m).unwrap();
            // client-first: gs2 header ("n,," or "n,a=…,"), then "n=user,r=nonce".
            let Some(bare) = text.splitn(3, ',').nth(2) else {
                return Step::Fail("SCRAM: malformed client-first message".into());
            };
            let field = |k: &str| {
                bare.split(',')
                    .find_map(|kv| kv.strip_prefix(k).map(str::to_owned))
            };
            let (Some(user), Some(nonce)) = (field("n="), field("r=")) else {
                return Step::Fail("SCRAM: no user name or nonce".into());
            };
            let Some(keys) = scram.get(&(user.clone(), sha)) else {
                return Step::Fail("SCRAM: unknown user".into());
            };
            let nonce = format!("{nonce}{}", ulid::Ulid::new());
            let first = format!(
                "r={nonce},s={},i={ITERATIONS}",
                base64::engine::general_purpose::STANDARD.encode(&keys.salt)
            );
            Step::Continue(
                first.clone().into_bytes(),
                Stage::ScramSent(sha, user, format!("{bare},{first}"), nonce),
            )
        }
        Stage::ScramSent(sha, user, so_far, nonce) => {
            let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                return Step::Fail("SCRAM: no proof".into());
            };
            if !without_proof
                .split(',')
                .any(|kv| kv == format!("r={nonce}"))
            {
                return Step::Fail("SCRAM: nonce mismatch".into());
            }
            let keys = &scram[&(user, sha)];
            let message = format!("{so_far},{without_proof}");
            let signature = sha.hmac(&keys.stored_key, message.as_bytes());
            let Ok(proof) = base64::engine::general_purpose::STANDARD.decode(proof) else {
                return Step::Fail("SCRAM: proof is not base64".into());
            };
            let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
            if sha.digest(&client_key) != keys.stored_key {
                return Step::Fail("SCRAM: wrong password".into());
            }
            let server = sha.hmac(&keys.server_key, message.as_bytes());
            Step::Done(
                format!(
                    "v={}",
                    base64::engine::general_purpose::STANDARD.encode(server)
                )
                .into_bytes(),
                match sha {
                    Sha::S256 => "SCRAM-SHA-256".to_owned(),
                    Sha::S512 => "SCRAM-SHA-512".to_owned(),
                },
            )
        }
        Stage::Mechanism(m) if m == "OAUTHBEARER" => {
            let Some(token) = text
                .split('\u{1}')
                .find_map(|kv| kv.strip_prefix("auth=Bearer "))
            else {
                return Step::Fail("OAUTHBEARER: no bearer token".into());
            };
            let Some(port) = accounts.introspect_port else {
                return Step::Fail("OAUTHBEARER: not accepted here".into());
            };
            match introspect(port, token).await {
                Ok(true) => Step::Done(Vec::new(), m),
                Ok(false) => Step::Fail("OAUTHBEARER: the token is not active".into()),
                Err(e) => Step::Fail(format!("OAUTHBEARER: introspection failed: {e}")),
            }
        }
        Stage::Mechanism(m) => Step::Fail(format!("{m}: not offered")),
    }
}

/// RFC 7662 introspection at the test OAuth server, as its client `cordon`.
async fn introspect(port: u16, token: &str) -> Result<bool, String> {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/token/introspection"))
        .basic_auth("cordon", Some("cordon-secret-0123456789"))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(v["active"] == true)
}
