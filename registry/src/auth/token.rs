//! Bearer tokens of the distribution token spec: JWTs (HS256, key from
//! the data dir) naming the subject and the access granted, short-lived.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const ISSUER: &str = "berth";

/// One grant, as the token spec writes it: `{"type":"repository",
/// "name":"tool-a/web","actions":["pull","push"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// `admin`, a namespace account name, or `anonymous`.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Grant>,
    /// The API token this token was issued for, when it was: its
    /// revocation ends this token too (checked when it is verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
}

/// Why a presented token was not accepted (shown to the client).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token has expired; request a new one")]
    Expired,
    #[error("token signature is not valid for this registry")]
    BadSignature,
    #[error("token was issued for another service")]
    WrongAudience,
    #[error("token is malformed: {0}")]
    Malformed(String),
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    service: String,
}

impl TokenKeys {
    pub fn new(secret: &[u8], service: &str) -> TokenKeys {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            service: service.to_owned(),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Signs a token for `subject` holding `access`, valid for `ttl`.
    pub fn mint(&self, subject: &str, access: Vec<Grant>, ttl: Duration) -> (String, Claims) {
        self.mint_from(subject, access, ttl, None)
    }

    /// Like `mint`; with `origin` = (API token id, its expiry in unix
    /// seconds), the token names the API token it was issued for and
    /// expires no later than it.
    pub fn mint_from(
        &self,
        subject: &str,
        access: Vec<Grant>,
        ttl: Duration,
        origin: Option<(&str, u64)>,
    ) -> (String, Claims) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut exp = now + ttl.as_secs().max(1);
        if let Some((_, not_after)) = origin {
            exp = exp.min(not_after);
        }
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: self.service.clone(),
            exp,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: super::secrets::generate_secret(),
            access,
            tid: origin.map(|(id, _)| id.to_owned()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&self.service]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    other => TokenError::Malformed(format!("{other:?}")),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let keys = TokenKeys::new(b"key one", "berth");
        let grant = Grant {
            kind: "repository".into(),
            name: "tool-a/web".into(),
            actions: vec!["pull".into()],
        };
        let (token, _) = keys.mint("tool-a", vec![grant.clone()], Duration::from_secs(60));
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "tool-a");
        assert_eq!(claims.access, vec![grant]);
        let other = TokenKeys::new(b"key two", "berth");
        assert!(matches!(
            other.verify(&token),
            Err(TokenError::BadSignature)
        ));
        let other_service = TokenKeys::new(b"key one", "elsewhere");
        assert!(matches!(
            other_service.verify(&token),
            Err(TokenError::WrongAudience)
        ));
        assert!(matches!(
            keys.verify("garbage"),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(claims.tid, None);
    }

    #[test]
    fn a_token_from_an_api_token_names_it_and_ends_with_it() {
        let keys = TokenKeys::new(b"key one", "berth");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (token, minted) = keys.mint_from(
            "tool-a",
            vec![],
            Duration::from_secs(300),
            Some(("abc", now + 30)),
        );
        assert!(minted.exp <= now + 30);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.tid.as_deref(), Some("abc"));
        assert_eq!(claims.exp, minted.exp);
    }
}
