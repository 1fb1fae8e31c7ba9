//! Hook secrets and the two ways forges prove they know them.
//!
//! No hook secret is stored. Each is derived when needed:
//! `hex(HMAC-SHA256(server key, "berth-hook-secret-v1" 0 hook_id 0 generation))`,
//! with the server key a random file in the data dir (`hook-key`, mode
//! 0600, like the token key). The database alone (a backup, a leaked copy)
//! holds nothing that signs a delivery; rotating is bumping `generation`;
//! and berth can still compute GitHub's HMAC, which needs the secret
//! itself, not a hash of it.
//!
//! GitLab sends the secret as it is (`X-Gitlab-Token`); GitHub, Gitea and
//! Forgejo send `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw
//! body)>`. Both are compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The server key hook secrets are derived from.
#[derive(Clone)]
pub struct HookKey(Vec<u8>);

impl std::fmt::Debug for HookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookKey(..)")
    }
}

impl HookKey {
    pub fn new(key: &[u8]) -> HookKey {
        HookKey(key.to_vec())
    }

    /// The secret of hook `id` at `generation`: 64 lowercase hex digits.
    pub fn secret(&self, id: &str, generation: i64) -> String {
        let mut mac = mac(&self.0);
        mac.update(b"berth-hook-secret-v1\0");
        mac.update(id.as_bytes());
        mac.update(b"\0");
        mac.update(generation.to_string().as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// How a delivery's proof of the secret looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The proof matches the secret.
    Valid,
    /// No proof was sent.
    Missing,
    /// A proof was sent and does not match (or is malformed).
    Wrong,
}

/// GitLab: the `X-Gitlab-Token` header is the secret.
pub fn check_token(header: Option<&[u8]>, secret: &str) -> Proof {
    match header {
        None => Proof::Missing,
        Some(sent) if bool::from(sent.ct_eq(secret.as_bytes())) => Proof::Valid,
        Some(_) => Proof::Wrong,
    }
}

/// GitHub, Gitea, Forgejo: `X-Hub-Signature-256: sha256=<hex>`, the
/// HMAC-SHA256 of the raw body keyed with the secret.
pub fn check_hub_signature(header: Option<&[u8]>, secret: &str, body: &[u8]) -> Proof {
    let Some(sent) = header else {
        return Proof::Missing;
    };
    let Some(sent) = std::str::from_utf8(sent)
        .ok()
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .and_then(unhex)
    else {
        return Proof::Wrong;
    };
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    // `verify_slice` compares in constant time.
    match mac.verify_slice(&sent) {
        Ok(()) => Proof::Valid,
        Err(_) => Proof::Wrong,
    }
}

/// The header a forge would send for `body` (tests, and the docs' curl).
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_derived_per_hook_and_generation() {
        let key = HookKey::new(b"server key");
        let s = key.secret("a", 1);
        assert_eq!(s.len(), 64);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(s, key.secret("a", 1), "stable");
        assert_ne!(s, key.secret("a", 2), "rotation changes it");
        assert_ne!(s, key.secret("b", 1), "each hook has its own");
        assert_ne!(s, HookKey::new(b"other key").secret("a", 1));
        // No ambiguity between the id and the generation.
        assert_ne!(key.secret("a1", 1), key.secret("a", 11));
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody",
    /// payload "Hello, World!".
    #[test]
    fn the_hub_signature_matches_githubs_example() {
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hub_signature(secret, body), want);
        assert_eq!(
            check_hub_signature(Some(want.as_bytes()), secret, body),
            Proof::Valid
        );
        assert_eq!(
            check_hub_signature(
                Some(want.to_uppercase().replace("SHA256", "sha256").as_bytes()),
                secret,
                body
            ),
            Proof::Valid,
            "hex digits in either case"
        );
        assert_eq!(check_hub_signature(None, secret, body), Proof::Missing);
        for wrong in [
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18",
            "sha256=757107ea",
            "sha256=zz",
            "sha256=",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        ] {
            assert_eq!(
                check_hub_signature(Some(wrong.as_bytes()), secret, body),
                Proof::Wrong,
                "{wrong}"
            );
        }
        assert_eq!(
            check_hub_signature(Some(want.as_bytes()), secret, b"Hello, World?"),
            Proof::Wrong,
            "another body"
        );
        assert_eq!(
            check_hub_signature(Some(want.as_bytes()), "another secret", body),
            Proof::Wrong
        );
        assert_eq!(
            check_hub_signature(Some(&[0xff, 0xfe]), secret, body),
            Proof::Wrong,
            "not UTF-8"
        );
    }

    #[test]
    fn gitlab_tokens_are_compared_whole() {
        let s = "0123456789abcdef";
        assert_eq!(check_token(Some(s.as_bytes()), s), Proof::Valid);
        assert_eq!(check_token(None, s), Proof::Missing);
        for wrong in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcdeF",
        ] {
            assert_eq!(
                check_token(Some(wrong.as_bytes()), s),
                Proof::Wrong,
                "{wrong}"
            );
        }
    }
}
