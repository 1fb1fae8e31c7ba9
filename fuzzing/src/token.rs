//! Target `token`: bearer token verification (berth_registry::auth::token).
//! Arbitrary strings, JWTs with fuzzed claims and headers signed with the
//! right key or a wrong one, and arbitrary payload bytes correctly signed.
//! Whatever `verify` accepts must carry berth's issuer, this service as
//! audience, a live expiry, and a signature by the right key with HS256.

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use berth_registry::auth::token::{Grant, TokenKeys};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const KEY: &[u8] = b"fuzz token key";
const SERVICE: &str = "berth";
/// `verify`'s leeway on exp and nbf, in seconds.
const LEEWAY: i64 = 5;

#[derive(Arbitrary, Debug)]
pub enum Who {
    Admin,
    Anonymous,
    Unrestricted,
    Namespace(u8),
    Raw(String),
}

impl Who {
    pub fn name(&self) -> String {
        match self {
            Who::Admin => "admin".into(),
            Who::Anonymous => "anonymous".into(),
            Who::Unrestricted => "unrestricted".into(),
            Who::Namespace(i) => {
                ["tool-a", "tool-b", "library", "tool-private"][*i as usize % 4].into()
            }
            Who::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct GrantSpec {
    kind: bool,
    name: crate::request::Repo,
    actions: Vec<u8>,
}

/// Claims with each field right, wrong or odd.
#[derive(Arbitrary, Debug)]
pub struct ClaimsSpec {
    iss: Option<String>,
    pub sub: Who,
    aud: Option<String>,
    /// Seconds from now (negative: already expired).
    exp: i32,
    nbf: i32,
    iat: i32,
    jti: String,
    access: Vec<GrantSpec>,
    alg: u8,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ClaimsSpec {
    pub fn algorithm(&self) -> Algorithm {
        match self.alg % 8 {
            1 => Algorithm::HS384,
            2 => Algorithm::HS512,
            _ => Algorithm::HS256,
        }
    }

    /// The claims as JSON, and whether `verify` must accept them.
    pub fn json(&self) -> (serde_json::Value, bool) {
        let now = now();
        let grants: Vec<Grant> = self
            .access
            .iter()
            .map(|g| Grant {
                kind: if g.kind { "repository" } else { "registry" }.into(),
                name: g.name.text(),
                actions: g
                    .actions
                    .iter()
                    .map(|a| ["pull", "push", "delete", "*", "PULL", ""][*a as usize % 6].into())
                    .collect(),
            })
            .collect();
        let (exp, nbf, iat) = (
            (now + self.exp as i64).max(0),
            (now + self.nbf as i64).max(0),
            (now + self.iat as i64).max(0),
        );
        let claims = serde_json::json!({
            "iss": self.iss.as_deref().unwrap_or("berth"),
            "sub": self.sub.name(),
            "aud": self.aud.as_deref().unwrap_or(SERVICE),
            "exp": exp,
            "nbf": nbf,
            "iat": iat,
            "jti": self.jti,
            "access": grants,
        });
        // Leave a second of margin either side of the leeway: the clock
        // moves between here and `verify`.
        let valid = self.iss.as_deref().is_none_or(|i| i == "berth")
            && self.aud.as_deref().is_none_or(|a| a == SERVICE)
            && exp > now + LEEWAY + 1
            && nbf < now - LEEWAY - 1
            && self.algorithm() == Algorithm::HS256;
        (claims, valid)
    }

    /// Signed with `key`.
    pub fn sign(&self, key: &[u8]) -> String {
        let (claims, _) = self.json();
        jsonwebtoken::encode(
            &Header::new(self.algorithm()),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .expect("HMAC signing cannot fail")
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Claims {
        spec: ClaimsSpec,
        right_key: bool,
    },
    /// Any header and payload bytes, correctly signed with HS256.
    Payload {
        header: Vec<u8>,
        payload: Vec<u8>,
        standard_header: bool,
    },
    /// A valid token with one character changed.
    Tampered {
        spec: ClaimsSpec,
        at: u16,
        with: u8,
    },
}

pub fn token(data: &[u8]) {
    let keys = TokenKeys::new(KEY, SERVICE);
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        Input::Raw(s) => {
            let result = keys.verify(&s);
            if result.is_ok() {
                accepted(&s);
            }
        }
        Input::Claims { spec, right_key } => {
            let token = spec.sign(if right_key { KEY } else { b"another key" });
            let (claims, valid) = spec.json();
            match keys.verify(&token) {
                Ok(c) => {
                    accepted(&token);
                    assert!(right_key, "a token signed with another key was accepted");
                    assert_eq!(c.sub, claims["sub"], "subject survives");
                    assert_eq!(c.access.len(), spec.access.len(), "grants survive");
                }
                Err(e) => assert!(
                    !(valid && right_key),
                    "a valid token was refused ({e}): {claims}"
                ),
            }
        }
        Input::Payload {
            header,
            payload,
            standard_header,
        } => {
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let header = if standard_header {
                br#"{"alg":"HS256","typ":"JWT"}"#.to_vec()
            } else {
                header
            };
            let message = format!("{}.{}", b64(&header), b64(&payload));
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(KEY),
                Algorithm::HS256,
            )
            .expect("HMAC signing cannot fail");
            let token = format!("{message}.{signature}");
            if keys.verify(&token).is_ok() {
                accepted(&token);
            }
        }
        Input::Tampered { spec, at, with } => {
            let token = spec.sign(KEY);
            let mut bytes = token.into_bytes();
            let i = at as usize % bytes.len();
            if bytes[i] == with || !with.is_ascii() {
                return;
            }
            bytes[i] = with;
            let Ok(tampered) = String::from_utf8(bytes) else {
                return;
            };
            if keys.verify(&tampered).is_ok() {
                accepted(&tampered);
            }
        }
    }
}

/// Checks an accepted token independently of `verify`: HS256 by this key
/// over exactly its first two parts, and claims berth would honour.
fn accepted(token: &str) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let message = format!("{}.{}", parts[0], parts[1]);
    let expected = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(KEY),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |s: &str| b64.decode(s.trim_end_matches('=')).ok();
    assert_eq!(
        decode(parts[2]),
        decode(&expected),
        "accepted a token whose signature is not HS256 by the key"
    );
    let header: serde_json::Value =
        serde_json::from_slice(&decode(parts[0]).expect("header is base64"))
            .expect("header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted alg {}", header["alg"]);
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(parts[1]).expect("payload is base64"))
            .expect("payload is JSON");
    assert_eq!(claims["iss"], "berth", "issuer");
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == SERVICE,
        serde_json::Value::Array(a) => a.iter().any(|x| x == SERVICE),
        _ => false,
    };
    assert!(aud_ok, "audience {}", claims["aud"]);
    let now = now();
    let exp = claims["exp"].as_f64().expect("exp is a number");
    assert!(
        exp as i64 >= now - LEEWAY - 1,
        "expired at {exp}, now {now}"
    );
    if let Some(nbf) = claims["nbf"].as_f64() {
        assert!(
            nbf as i64 <= now + LEEWAY + 1,
            "not before {nbf}, now {now}"
        );
    }
}
