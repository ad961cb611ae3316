//! API tokens for `hangard`'s TCP listener. A token is `hgr_<id>_<secret>`; the store keeps the
//! SHA-256 of the whole token, never the token. Tokens are 160 random bits, so a plain hash
//! (not a slow password hash) is the right tool: there is nothing to brute-force.

use std::io::Read;

use hangar_api::{ErrorBody, NewToken};
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

fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| ErrorBody::new(ErrorCode::Io, format!("/dev/urandom: {e}")))?;
    Ok(buf)
}

fn store_failure(e: hangar_store::StoreError) -> ErrorBody {
    use hangar_core::error::Coded;
    ErrorBody::new(e.code(), e.to_string())
}

/// Creates a token named `name`; the returned secret is shown once and stored only hashed.
pub fn create(store: &Store, name: &str) -> Result<NewToken> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        let mut e = ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!("token name {name:?} must be 1 to 64 printable characters"),
        );
        e.hint = "name the token after what uses it: `hangar token create --name ci`".into();
        return Err(e);
    }
    let id = format!("tok-{}", hex(&random(4)?));
    let token = format!("hgr_{id}_{}", hex(&random(20)?));
    store
        .insert_token(&TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            sha256: digest(&token),
            created_at: SystemClock.now(),
        })
        .map_err(store_failure)?;
    Ok(NewToken {
        id,
        name: name.to_string(),
        token,
    })
}

/// The token record a bearer secret belongs to, if any. The lookup is by hash, so the secret
/// is never compared byte by byte against anything stored.
pub fn authenticate(store: &Store, token: &str) -> Result<Option<TokenRecord>> {
    if !token.starts_with("hgr_") || token.len() > 128 {
        return Ok(None);
    }
    store.token_by_hash(&digest(token)).map_err(store_failure)
}
