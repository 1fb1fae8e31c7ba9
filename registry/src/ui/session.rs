//! Console sign-in sessions: in memory with SQLite, rows with PostgreSQL;
//! bounded either way.
//!
//! Why memory with SQLite: berth is one process per data dir there, a
//! session is worth a sign-in at most, and keeping them out of SQLite
//! keeps every page view from being a write (a restart signs people out
//! and nothing else). With PostgreSQL, replicas share the sessions
//! (`ui_sessions`, migration 13), so a sign-in on one works on every
//! other and a sign-out or a revocation on one ends it everywhere; a page
//! view there is one `UPDATE ... RETURNING` (its use and its flash).
//!
//! A session is found by the SHA-256 of its cookie value (the value itself
//! is not kept), carries its own CSRF token, ends after `session_idle`
//! without use or `session_ttl` after sign-in, and ends at once on
//! sign-out or when its account's credentials are revoked. Bounded overall
//! (`sessions`; a full table refuses new sign-ins with 429 rather than
//! evicting other people) and per account (`sessions_per_account`; the
//! account's oldest session makes room); with PostgreSQL both across
//! replicas (the creation is serialised by an advisory lock).

use crate::auth::secrets;
use crate::auth::{Identity, Principal, TokenUse};
use crate::error::ApiError;
use berth_storage::meta::{UiSessionBounds, UiSessionRow};
use berth_storage::Metadata;
use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "berth_session";
/// The sign-in form's own cookie (its CSRF pair, before any session).
pub const LOGIN_COOKIE: &str = "berth_login";
/// Longest flash message kept with a session.
const FLASH_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max: usize,
    pub per_account: usize,
    pub ttl: Duration,
    pub idle: Duration,
}

/// What a request learns from its session.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// The API token signed in with, if one was the password: its scope
    /// narrows the session, and the session ends with it.
    pub token: Option<TokenUse>,
    pub csrf: String,
    /// A one-line result of the last action, shown once.
    pub flash: Option<String>,
}

struct Entry {
    principal: Principal,
    token: Option<TokenUse>,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<String>,
}

pub struct Sessions {
    limits: SessionLimits,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    /// With a database replicas share (PostgreSQL): sessions are its rows
    /// and `entries` stays empty.
    shared: Option<Metadata>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A database failure while reading or writing a session.
fn unavailable(e: berth_storage::StorageError) -> ApiError {
    tracing::error!(error = %e, "console session store failed");
    ApiError::unavailable("console sessions could not be read or written; try again")
}

impl Sessions {
    /// In-memory sessions (one process).
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            entries: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Sessions kept in `meta` when replicas share it (PostgreSQL), else
    /// in memory.
    pub fn for_store(limits: SessionLimits, meta: &Metadata) -> Sessions {
        Sessions {
            shared: meta.shared().then(|| meta.clone()),
            ..Sessions::new(limits)
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn bounds(&self) -> UiSessionBounds {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        UiSessionBounds {
            max: self.limits.max,
            per_account: self.limits.per_account,
            ttl_ms: ms(self.limits.ttl),
            idle_ms: ms(self.limits.idle),
        }
    }

    fn full(&self) -> ApiError {
        ApiError::too_many(
            "ui_sessions",
            format!(
                "the console has {} sessions open, its limit ([ui] sessions); try again later",
                self.limits.max
            ),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.created) < self.limits.ttl
            && now.duration_since(e.last_seen) < self.limits.idle
    }

    /// Starts a session for `identity`; returns the cookie value.
    pub async fn create(&self, identity: Identity) -> Result<String, ApiError> {
        let token = secrets::generate_secret();
        if let Some(meta) = &self.shared {
            let row = UiSessionRow {
                principal: identity.principal.name().to_owned(),
                token_id: identity.token.as_ref().map(|t| t.id.clone()),
                token_scope: identity.token.as_ref().map(|t| t.scope),
                token_expires_ms: identity.token.as_ref().map(|t| t.expires_ms),
                csrf: secrets::generate_secret(),
                created_ms: 0,
                last_seen_ms: 0,
                flash: None,
            };
            let created = meta
                .create_ui_session(key(&token).to_vec(), row, self.bounds())
                .await
                .map_err(unavailable)?;
            return if created { Ok(token) } else { Err(self.full()) };
        }
        let Identity {
            principal,
            token: api_token,
        } = identity;
        let now = Instant::now();
        let mut map = self.lock();
        // The account's oldest sessions make room for its new one.
        let mut own: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, e)| e.principal == principal)
            .map(|(k, e)| (*k, e.last_seen))
            .collect();
        if own.len() >= self.limits.per_account.max(1) {
            own.sort_by_key(|(_, seen)| *seen);
            let drop = own.len() + 1 - self.limits.per_account.max(1);
            for (k, _) in own.into_iter().take(drop) {
                map.remove(&k);
            }
        }
        if map.len() >= self.limits.max {
            map.retain(|_, e| {
                now.duration_since(e.created) < self.limits.ttl
                    && now.duration_since(e.last_seen) < self.limits.idle
            });
        }
        if map.len() >= self.limits.max {
            return Err(self.full());
        }
        map.insert(
            key(&token),
            Entry {
                principal,
                token: api_token,
                csrf: secrets::generate_secret(),
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        Ok(token)
    }

    /// The live session of `token` (its use counts against the idle time);
    /// the flash message, if any, is handed over once.
    pub async fn get(&self, token: &str) -> Result<Option<Session>, ApiError> {
        let k = key(token);
        if let Some(meta) = &self.shared {
            let Some(row) = meta
                .ui_session(k.to_vec(), self.bounds())
                .await
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let token = match (row.token_id, row.token_scope, row.token_expires_ms) {
                (Some(id), Some(scope), Some(expires_ms)) => Some(TokenUse {
                    id,
                    scope,
                    expires_ms,
                }),
                _ => None,
            };
            return Ok(Some(Session {
                principal: Principal::from_subject(&row.principal),
                token,
                csrf: row.csrf,
                flash: row.flash,
            }));
        }
        let now = Instant::now();
        let mut map = self.lock();
        let live = map.get(&k).is_some_and(|e| self.live(e, now));
        if !live {
            map.remove(&k);
            return Ok(None);
        }
        let Some(e) = map.get_mut(&k) else {
            return Ok(None);
        };
        e.last_seen = now;
        Ok(Some(Session {
            principal: e.principal.clone(),
            token: e.token.clone(),
            csrf: e.csrf.clone(),
            flash: e.flash.take(),
        }))
    }

    /// A message shown on the next page of this session.
    pub async fn flash(&self, token: &str, message: &str) -> Result<(), ApiError> {
        let mut text: String = message.chars().take(FLASH_BYTES / 4).collect();
        text.truncate(FLASH_BYTES);
        if let Some(meta) = &self.shared {
            return meta
                .set_ui_session_flash(key(token).to_vec(), text)
                .await
                .map_err(unavailable);
        }
        if let Some(e) = self.lock().get_mut(&key(token)) {
            e.flash = Some(text);
        }
        Ok(())
    }

    /// Sign-out: the session is gone, whatever its cookie says (on every
    /// replica).
    pub async fn end(&self, token: &str) -> Result<(), ApiError> {
        if let Some(meta) = &self.shared {
            return meta
                .end_ui_session(key(token).to_vec())
                .await
                .map_err(unavailable);
        }
        self.lock().remove(&key(token));
        Ok(())
    }

    /// Ends every session of `principal` (its credentials were revoked or
    /// rotated).
    pub async fn end_all(&self, principal: &Principal) -> Result<(), ApiError> {
        if let Some(meta) = &self.shared {
            return meta
                .end_ui_sessions_of(principal.name())
                .await
                .map_err(unavailable);
        }
        self.lock().retain(|_, e| &e.principal != principal);
        Ok(())
    }
}

/// The value of cookie `name` in the request, if sent (only the first of
/// several with the same name; every `Cookie` header is read).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure when asked,
/// `Max-Age` seconds (0 removes it).
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            max: 4,
            per_account: 2,
            ttl: Duration::from_secs(3600),
            idle: Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn sessions_are_bounded_per_account_and_overall() {
        let s = Sessions::new(limits());
        let ns = |n: &str| Principal::Namespace(n.into());
        let a1 = s.create(Identity::of(ns("tool-a"))).await.unwrap();
        let a2 = s.create(Identity::of(ns("tool-a"))).await.unwrap();
        let a3 = s.create(Identity::of(ns("tool-a"))).await.unwrap();
        assert!(
            s.get(&a1).await.unwrap().is_none(),
            "the account's oldest made room"
        );
        assert!(s.get(&a2).await.unwrap().is_some() && s.get(&a3).await.unwrap().is_some());
        s.create(Identity::of(ns("tool-b"))).await.unwrap();
        s.create(Identity::of(ns("tool-c"))).await.unwrap();
        let full = s.create(Identity::of(ns("tool-d"))).await.unwrap_err();
        assert_eq!(full.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.limit, Some("ui_sessions"));
        assert!(
            s.get(&a2).await.unwrap().is_some(),
            "nobody else was evicted"
        );
        s.end_all(&ns("tool-a")).await.unwrap();
        assert!(s.get(&a2).await.unwrap().is_none() && s.get(&a3).await.unwrap().is_none());
        s.create(Identity::of(ns("tool-d"))).await.unwrap();
    }

    #[tokio::test]
    async fn sign_out_and_flash() {
        let s = Sessions::new(limits());
        let t = s.create(Identity::of(Principal::Admin)).await.unwrap();
        let csrf = s.get(&t).await.unwrap().unwrap().csrf;
        assert_eq!(csrf.len(), 43);
        s.flash(&t, "done").await.unwrap();
        assert_eq!(
            s.get(&t).await.unwrap().unwrap().flash.as_deref(),
            Some("done")
        );
        assert_eq!(s.get(&t).await.unwrap().unwrap().flash, None, "shown once");
        s.end(&t).await.unwrap();
        assert!(s.get(&t).await.unwrap().is_none());
        assert!(s.get("not-a-session").await.unwrap().is_none());
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; berth_session=xyz".parse().unwrap(),
        );
        h.append(http::header::COOKIE, "berth_login=abc".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(COOKIE, "v", "/ui", Duration::from_secs(60), true);
        assert_eq!(
            c,
            "berth_session=v; Path=/ui; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
    }
}
