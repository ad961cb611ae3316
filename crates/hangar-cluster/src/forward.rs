//! Requests one node passes to another on a caller's behalf: a claim from a pool it has no
//! waiting instance of, or a page of events for `hangar events --cluster`. The request carries
//! a **node credential**: a short-lived, single-use [`NodeCredential`] signed with the cluster
//! key, naming the node it is for, the one request it allows, and the scope of the caller the
//! first node authenticated. The receiving node accepts it in place of a bearer token for that
//! one request, acts with the caller's scope, never more, and passes nothing on again.

use serde::{Deserialize, Serialize};

use crate::signed::{hex, unhex_vec, ClusterKey, KeyRing, SignatureError};

/// The kind of a node credential's signed document.
pub const NODE_CREDENTIAL: &str = "node-credential";

/// What a bearer token that is a node credential starts with.
pub const CREDENTIAL_PREFIX: &str = "hangar-node.";

/// How long a credential is good for, from when it is made, in milliseconds: long enough for
/// one request between nodes whose clocks differ a little, short enough that a copy is soon
/// useless (and each is accepted once anyway).
pub const CREDENTIAL_LIFETIME_MS: u64 = 30_000;

/// How far ahead of the receiving node's clock a credential may have been made.
pub const CLOCK_SKEW_MS: u64 = 5_000;

/// The one request a credential allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Forwarded {
    /// `POST /v1/pools/{pool}/claim`.
    Claim {
        /// The pool to claim from.
        pool: String,
        /// Whether the receiver may make a new instance when none is waiting (the last
        /// resort); otherwise it answers that it has none and the sender asks another node.
        create: bool,
    },
    /// `GET /v1/events/page` (any query).
    EventsPage,
}

/// One request passed from node to node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCredential {
    /// The node that passed it on.
    pub from: String,
    /// The only node that may act on it.
    pub to: String,
    /// What it allows.
    pub allows: Forwarded,
    /// The scope of the caller `from` authenticated (`admin` or `tenant:<id>:<role>`).
    pub scope: String,
    /// Who that caller was, for the receiving node's audit log.
    pub who: String,
    /// When it was made, milliseconds since the epoch.
    pub issued_at: u64,
    /// Random, so that each is accepted once.
    pub nonce: String,
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not a credential, or not signed by a trusted cluster key.
    #[error("{0}")]
    Signature(#[from] SignatureError),
    /// Signed, but not good here and now.
    #[error("node credential refused: {0}")]
    Refused(String),
}

impl NodeCredential {
    /// The bearer token that carries it, signed with `key`.
    pub fn credential(&self, key: &ClusterKey) -> String {
        let signed = serde_json::to_vec(&key.sign(NODE_CREDENTIAL, self)).expect("serialises");
        format!("{CREDENTIAL_PREFIX}{}", hex(&signed))
    }

    /// The credential in a bearer token, if `ring` trusts its signature.
    pub fn open(token: &str, ring: &KeyRing) -> Result<NodeCredential, CredentialError> {
        let unsigned = |why: &str| SignatureError::Unsigned(why.to_string());
        let body = token
            .strip_prefix(CREDENTIAL_PREFIX)
            .ok_or_else(|| unsigned("a node credential starts with hangar-node."))?;
        let stored = unhex_vec(body).ok_or_else(|| unsigned("a node credential is hex"))?;
        Ok(ring.open(NODE_CREDENTIAL, &stored)?)
    }

    /// Whether node `me` may serve `method path` (the path without its query) with it at `now`
    /// (milliseconds since the epoch).
    pub fn check(
        &self, me: &str, method: &str, path: &str, now: u64,
    ) -> Result<(), CredentialError> {
        let refuse = |why: String| Err(CredentialError::Refused(why));
        if self.to != me {
            return refuse(format!("it is for node {:?}, not this one ({me:?})", self.to));
        }
        let allowed = match &self.allows {
            Forwarded::Claim { pool, .. } => {
                method == "POST"
                    && path.strip_prefix("/v1/pools/") == Some(&format!("{pool}/claim"))
            }
            Forwarded::EventsPage => method == "GET" && path == "/v1/events/page",
        };
        if !allowed {
            return refuse(format!("it allows {:?}, not {method} {path}", self.allows));
        }
        if self.issued_at > now.saturating_add(CLOCK_SKEW_MS) {
            return refuse("it was made in the future (are the nodes' clocks apart?)".into());
        }
        if now >= self.expires_at() {
            return refuse(format!("it expired {} ms ago", now - self.expires_at()));
        }
        Ok(())
    }

    /// When it stops being good, milliseconds since the epoch.
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(CREDENTIAL_LIFETIME_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> NodeCredential {
        NodeCredential {
            from: "a".into(),
            to: "b".into(),
            allows: Forwarded::Claim { pool: "web".into(), create: false },
            scope: "tenant:acme:operator".into(),
            who: "token:tok-1".into(),
            issued_at: 1_000_000,
            nonce: "00ff".into(),
        }
    }

    #[test]
    fn a_credential_opens_with_the_cluster_key_and_only_where_and_when_it_is_meant() {
        let key = ClusterKey::from_seed([7; 32]);
        let ring = KeyRing::parse(&key.public()).unwrap();
        let token = claim().credential(&key);
        let opened = NodeCredential::open(&token, &ring).unwrap();
        assert_eq!(opened, claim());
        let web = "/v1/pools/web/claim";
        assert!(opened.check("b", "POST", web, 1_000_000).is_ok());
        assert!(opened.check("b", "POST", web, 1_000_000 + CREDENTIAL_LIFETIME_MS - 1).is_ok());
        for (node, method, path, now) in [
            ("a", "POST", web, 1_000_000),
            ("b", "POST", "/v1/pools/db/claim", 1_000_000),
            ("b", "POST", "/v1/pools/web/claim/x", 1_000_000),
            ("b", "DELETE", "/v1/pools/web", 1_000_000),
            ("b", "GET", "/v1/events/page", 1_000_000),
            ("b", "POST", web, 1_000_000 + CREDENTIAL_LIFETIME_MS),
            ("b", "POST", web, 1_000_000 - CLOCK_SKEW_MS - 1),
        ] {
            assert!(
                matches!(opened.check(node, method, path, now), Err(CredentialError::Refused(_))),
                "{node} {method} {path} {now}"
            );
        }
        let events = NodeCredential { allows: Forwarded::EventsPage, ..claim() };
        assert!(events.check("b", "GET", "/v1/events/page", 1_000_000).is_ok());
        assert!(events.check("b", "GET", "/v1/events", 1_000_000).is_err());
        assert!(events.check("b", "POST", web, 1_000_000).is_err());
    }

    #[test]
    fn forged_tampered_and_foreign_credentials_are_refused() {
        let key = ClusterKey::from_seed([7; 32]);
        let ring = KeyRing::parse(&key.public()).unwrap();
        let other = ClusterKey::from_seed([8; 32]);
        let foreign = claim().credential(&other);
        assert!(matches!(
            NodeCredential::open(&foreign, &ring),
            Err(CredentialError::Signature(SignatureError::UnknownKey(_)))
        ));
        // Widen the scope inside a genuine credential.
        let token = claim().credential(&key);
        let stored = unhex_vec(token.strip_prefix(CREDENTIAL_PREFIX).unwrap()).unwrap();
        let tampered = String::from_utf8(stored).unwrap().replace("tenant:acme:operator", "admin");
        let tampered = format!("{CREDENTIAL_PREFIX}{}", hex(tampered.as_bytes()));
        assert!(matches!(
            NodeCredential::open(&tampered, &ring),
            Err(CredentialError::Signature(SignatureError::BadSignature(_)))
        ));
        // A pool document signed by the cluster key is not a credential.
        let pool_doc = serde_json::to_vec(&key.sign("pool", &claim())).unwrap();
        let wrong_kind = format!("{CREDENTIAL_PREFIX}{}", hex(&pool_doc));
        assert!(matches!(
            NodeCredential::open(&wrong_kind, &ring),
            Err(CredentialError::Signature(SignatureError::WrongKind { .. }))
        ));
        for junk in ["", "tok-123", "hangar-node.", "hangar-node.zz", "hangar-node.7b7d"] {
            assert!(NodeCredential::open(junk, &ring).is_err(), "{junk:?}");
        }
    }
}
