//! Heuristics for values that look like secrets. A spec is stored, hashed, printed in plans and
//! sent to the daemon; a secret in it leaks everywhere. False positives are cheap (rename the
//! label); false negatives are not, so the patterns lean towards reporting.

/// Words that make a key (or a `key=value` pair) look secret (the JSON Schema says the same).
pub(crate) const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "private_key",
    "credential",
];

/// Prefixes of API tokens: one followed by 20 or more of A-Z, a-z, 0-9, '_' and '-' is one.
pub(crate) const TOKEN_PREFIXES: &[&str] =
    &["ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "sk-"];

/// Whether a label key names a secret (`db_password`, `api-token`).
pub(crate) fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// What kind of secret `value` seems to contain, if any.
pub(crate) fn looks_secret(value: &str) -> Option<&'static str> {
    if value.contains("PRIVATE KEY-----") {
        return Some("private key");
    }
    for word in value.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
        if let Some((key, val)) = word.split_once(['=', ':']) {
            if secret_key(key) && !val.is_empty() {
                return Some("credential assignment");
            }
        }
        if is_prefixed_token(word, "AKIA", 16, |c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
            return Some("cloud access key");
        }
        for prefix in TOKEN_PREFIXES {
            if is_prefixed_token(word, prefix, 20, |c| {
                c.is_ascii_alphanumeric() || c == '_' || c == '-'
            }) {
                return Some("API token");
            }
        }
        for prefix in ["xoxb-", "xoxp-", "xoxa-", "xoxs-"] {
            if word.starts_with(prefix) && word.len() > prefix.len() + 10 {
                return Some("chat token");
            }
        }
    }
    None
}

fn is_prefixed_token(word: &str, prefix: &str, min_len: usize, ok: impl Fn(char) -> bool) -> bool {
    word.strip_prefix(prefix).is_some_and(|rest| rest.len() >= min_len && rest.chars().all(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_common_secrets() {
        for s in [
            "password=hunter2",
            "console=ttyS0 api_key=abc",
            "AKIAABCDEFGHIJKLMNOP",
            "ghp_0123456789abcdefghijABCDEF",
            "-----BEGIN RSA PRIVATE KEY-----",
            "xoxb-123456789012-abc",
        ] {
            assert!(looks_secret(s).is_some(), "{s}");
        }
    }

    #[test]
    fn leaves_ordinary_values_alone() {
        for s in
            ["console=ttyS0 quiet", "web", "token", "AKIA", "root=/dev/vda rw", "root=LABEL=rootfs"]
        {
            assert_eq!(looks_secret(s), None, "{s}");
        }
        assert!(secret_key("db_password"));
        assert!(!secret_key("app"));
    }
}
