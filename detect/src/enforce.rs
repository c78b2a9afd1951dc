//! The closed loop: what Cordon's playbooks enforced (a token revoked, a server isolated, an
//! agent quarantined), fed back to the engine so that the stream shows whether it holds. An
//! event that uses a revoked token, reaches an isolated server or comes from a quarantined
//! agent after the action succeeded gets the flag `response.token_revoked`,
//! `response.server_isolated` or `response.agent_quarantined`, and the rule
//! `cordon.response.not_enforced` raises a critical alert when such a call was allowed.
//!
//! Times are event times: an enforcement takes effect from the event that triggered its alert,
//! so a replay of the same stream flags the same events whatever the wall clock did.

use cordon_ingest::{BaselineField, CoreField, Event};
use rustc_hash::FxHashMap;

/// Something a playbook made true.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Enforcement {
    /// A token (its id as events carry it, `audit.token.jti`) was revoked.
    TokenRevoked {
        /// The token id.
        token: String,
        /// Event time (ms) from which it is revoked.
        from_ms: i64,
    },
    /// Calls to a server are denied until `until_ms`.
    ServerIsolated {
        /// The server (`audit.target`).
        server: String,
        /// From (event time, ms).
        from_ms: i64,
        /// Until (event time, ms).
        until_ms: i64,
    },
    /// Calls by an agent are denied until `until_ms`.
    AgentQuarantined {
        /// The agent (`gen_ai.agent.id`).
        agent: String,
        /// From (event time, ms).
        from_ms: i64,
        /// Until (event time, ms).
        until_ms: i64,
    },
}

/// Bound on each kind of enforcement held (the oldest go first, counted).
const MAX_HELD: usize = 100_000;

/// What is enforced now.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Enforced {
    tokens: FxHashMap<String, i64>,
    servers: FxHashMap<String, (i64, i64)>,
    agents: FxHashMap<String, (i64, i64)>,
    /// Enforcements dropped to stay under the bound.
    pub evicted: u64,
}

fn bounded<V>(m: &mut FxHashMap<String, V>, evicted: &mut u64, key: impl Fn(&V) -> i64) {
    if m.len() < MAX_HELD {
        return;
    }
    // Ties go by name, not by the map's iteration order (which a restored copy does not share).
    if let Some(k) = m
        .iter()
        .min_by_key(|(k, v)| (key(v), *k))
        .map(|(k, _)| k.clone())
    {
        m.remove(&k);
        *evicted += 1;
    }
}

impl Enforced {
    /// Records an enforcement.
    pub fn add(&mut self, e: Enforcement) {
        match e {
            Enforcement::TokenRevoked { token, from_ms } => {
                bounded(&mut self.tokens, &mut self.evicted, |v| *v);
                let at = self.tokens.entry(token).or_insert(from_ms);
                *at = (*at).min(from_ms);
            }
            Enforcement::ServerIsolated {
                server,
                from_ms,
                until_ms,
            } => {
                bounded(&mut self.servers, &mut self.evicted, |v| v.1);
                self.servers.insert(server, (from_ms, until_ms));
            }
            Enforcement::AgentQuarantined {
                agent,
                from_ms,
                until_ms,
            } => {
                bounded(&mut self.agents, &mut self.evicted, |v| v.1);
                self.agents.insert(agent, (from_ms, until_ms));
            }
        }
    }

    /// Whether anything is enforced.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.servers.is_empty() && self.agents.is_empty()
    }

    /// How many enforcements are held.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.servers.len() + self.agents.len()
    }

    /// Flags the event when it falls under an enforcement.
    pub fn mark(&self, ev: &mut Event) {
        if self.is_empty() {
            return;
        }
        let Some(t) = ev.timestamp_nanos().map(|n| n.div_euclid(1_000_000)) else {
            return;
        };
        let within = |(from, until): (i64, i64)| t >= from && t < until;
        let token = ev
            .str(CoreField::TokenJti)
            .and_then(|j| self.tokens.get(j))
            .is_some_and(|from| t >= *from);
        let server = ev
            .str(CoreField::Target)
            .and_then(|s| self.servers.get(s))
            .is_some_and(|w| within(*w));
        let agent = ev
            .agent_id()
            .and_then(|a| self.agents.get(a))
            .is_some_and(|w| within(*w));
        for (f, on) in [
            (BaselineField::TokenRevoked, token),
            (BaselineField::ServerIsolated, server),
            (BaselineField::AgentQuarantined, agent),
        ] {
            if on {
                ev.set_flag(f, true);
            }
        }
    }
}
