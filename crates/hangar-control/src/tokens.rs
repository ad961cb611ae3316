//! API tokens for `hangard`'s TCP listener. A token is `hgr_<id>_<secret>`; the store keeps the
//! SHA-256 of the whole token, never the token. Tokens are 160 random bits, so a plain hash
//! (not a slow password hash) is the right tool: there is nothing to brute-force.

use crate::ControlError;
use std::io::Read;

use hangar_api::{ErrorBody, NewToken, TokenView};
use hangar_core::access::Scope;
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::error::ErrorCode;
use hangar_store::{Store, TokenRecord};
use sha2::{Digest, Sha256};

use crate::Result;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form of a token.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// `n` bytes from the kernel's random source.
pub fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| ErrorBody::new(ErrorCode::Io, format!("/dev/urandom: {e}")))?;
    Ok(buf)
}

fn store_failure(e: hangar_store::StoreError) -> ControlError {
    ControlError::Store(e)
}

/// Parses a scope as given on the command line or in `POST /v1/tokens`.
pub fn parse_scope(scope: &str) -> Result<Scope> {
    scope.parse().map_err(|why: String| {
        let mut e = ErrorBody::new(ErrorCode::InvalidArgument, why);
        e.path = Some("scope".into());
        e.hint = "use admin, or tenant:<id>:<role> with role viewer, operator or owner".into();
        ControlError::from(e)
    })
}

/// Creates a token named `name` with `scope`; the returned secret is shown once and stored
/// only hashed.
pub fn create(store: &Store, name: &str, scope: &Scope) -> Result<NewToken> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        let mut e = ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!("token name {name:?} must be 1 to 64 printable characters"),
        );
        e.hint = "name the token after what uses it: `hangar token create --name ci`".into();
        return Err(e.into());
    }
    let id = format!("tok-{}", hex(&random(4)?));
    let token = format!("hgr_{id}_{}", hex(&random(20)?));
    store
        .insert_token(&TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            sha256: digest(&token),
            scope: scope.clone(),
            created_at: SystemClock.now(),
        })
        .map_err(store_failure)?;
    Ok(NewToken { id, name: name.to_string(), scope: scope.to_string(), token })
}

/// Every token, oldest first.
pub fn list(store: &Store) -> Result<Vec<TokenView>> {
    Ok(store
        .list_tokens()
        .map_err(store_failure)?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            scope: t.scope.to_string(),
            created_at: t.created_at.0,
        })
        .collect())
}

/// Revokes token `id` (effective on the next request); `E_INVALID_ARGUMENT` if there is none.
pub fn remove(store: &Store, id: &str) -> Result<()> {
    if store.delete_token(id).map_err(store_failure)? {
        Ok(())
    } else {
        let mut e = ErrorBody::new(ErrorCode::InvalidArgument, format!("no token {id:?}"));
        e.hint = "list tokens with `hangar token ls`".into();
        Err(e.into())
    }
}

/// The token record a bearer secret belongs to, if any. The lookup is by hash, so the secret
/// is never compared byte by byte against anything stored.
pub fn authenticate(store: &Store, token: &str) -> Result<Option<TokenRecord>> {
    if !token.starts_with("hgr_") || token.len() > 128 {
        return Ok(None);
    }
    store.token_by_hash(&digest(token)).map_err(store_failure)
}
