//! API tokens' text form and hash. A token reads
//! `berth_<id>_<secret>`: the prefix lets secret scanners (and people)
//! recognise a leaked one; the id (16 of `[0-9a-z]`) is public and names
//! the stored row, so a check is one indexed read; the secret (43 of
//! `[0-9A-Za-z]`, 256 bits) is stored only as a SHA-256 hash and compared
//! in constant time.
//!
//! Why not argon2 like namespace passwords: a slow hash protects secrets
//! people choose, which can be guessed. This secret is 256 random bits:
//! nobody can guess it, offline or online, whatever the hash costs, so a
//! fast hash loses nothing, and it keeps every token check cheap (CI sends
//! one with each request) instead of 19 MiB of argon2 per check.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "berth_";
pub const ID_LEN: usize = 16;
pub const SECRET_LEN: usize = 43;
/// Longest token name.
pub const NAME_MAX: usize = 64;

const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const SECRET_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Domain separation: these hashes are of API token secrets, version 1.
const HASH_CONTEXT: &[u8] = b"berth api token v1\0";

/// A token's two parts, as presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// True when `s` claims to be an API token (it may still be malformed):
/// bearer JWTs never start so.
pub fn claims_to_be(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// Splits a well-formed token; `None` for anything else.
pub fn parse(s: &str) -> Option<Presented<'_>> {
    let rest = s.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (valid_id(id)
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric()))
    .then_some(Presented { id, secret })
}

/// True for a token id (as in `DELETE .../tokens/{id}`).
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b))
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling,
/// so no character is likelier than another).
fn random_text(alphabet: &[u8], len: usize) -> String {
    let bound = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::getrandom(&mut buf).expect("the OS random source is available");
        for &b in &buf {
            if (b as usize) < bound && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// A new token: (id, secret, the whole token text).
pub fn generate() -> (String, String, String) {
    let id = random_text(ID_ALPHABET, ID_LEN);
    let secret = random_text(SECRET_ALPHABET, SECRET_LEN);
    let token = format!("{PREFIX}{id}_{secret}");
    (id, secret, token)
}

/// What is stored of a secret: SHA-256 over a context, the id and the secret.
pub fn hash(id: &str, secret: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(HASH_CONTEXT)
        .chain_update(id.as_bytes())
        .chain_update([0u8])
        .chain_update(secret.as_bytes())
        .finalize()
        .to_vec()
}

/// Checks a presented secret against the stored hash in constant time.
pub fn verify(presented: &Presented<'_>, stored: &[u8]) -> bool {
    hash(presented.id, presented.secret).ct_eq(stored).into()
}

/// A token's name: 1 to 64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid token name {:?}: use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_hash_and_verify() {
        let (id, secret, token) = generate();
        assert_eq!(token.len(), PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        let p = parse(&token).unwrap();
        assert_eq!((p.id, p.secret), (id.as_str(), secret.as_str()));
        let stored = hash(&id, &secret);
        assert!(verify(&p, &stored));
        let (_, other, _) = generate();
        assert_ne!(other, secret);
        assert!(!verify(
            &Presented {
                id: &id,
                secret: &other
            },
            &stored
        ));
        // The id is bound into the hash: a secret does not move to another id.
        let (id2, _, _) = generate();
        assert!(!verify(
            &Presented {
                id: &id2,
                secret: &secret
            },
            &stored
        ));
        assert!(!verify(&p, b"short"));
    }

    #[test]
    fn malformed_tokens_are_not_tokens() {
        let (id, secret, token) = generate();
        assert!(claims_to_be(&token) && !claims_to_be("eyJhbGciOi.x.y"));
        for bad in [
            String::new(),
            "berth_".into(),
            format!("berth_{id}"),
            format!("berth_{id}_"),
            format!("berth_{id}_{secret}x"),
            format!("berth_{id}_{}", &secret[1..]),
            format!("berth_{}_{secret}", id.to_uppercase()),
            format!("berth_{}_{secret}", &id[1..]),
            format!("Berth_{id}_{secret}"),
            format!("berth_{id}_{}-", &secret[1..]),
            format!("berth_{id}_{}é", &secret[2..]),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
        assert!(valid_id(&id) && !valid_id("../x") && !valid_id(""));
    }

    #[test]
    fn secrets_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            seen.extend(generate().1.bytes());
        }
        assert_eq!(seen.len(), SECRET_ALPHABET.len());
    }

    #[test]
    fn names() {
        for ok in ["ci", "CI-deploy.2", "a", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-ci", ".x", "a b", "a/b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
