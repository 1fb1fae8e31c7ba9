//! Where every request is authenticated and authorized; no handler decides
//! access on its own. Callers prove who they are with HTTP Basic (admin or
//! a namespace account, or any name with an API token as the password), a
//! bearer token from `/token`, or an API token as the bearer token;
//! `policy` says what each principal may do, an API token's scope may
//! narrow it; tokens carry exactly the grants `/token` gave.

pub mod api_token;
pub mod policy;
pub mod secrets;
pub mod throttle;
pub mod token;

use crate::error::{ApiError, ApiResult, Code};
use base64::Engine as _;
pub use berth_storage::meta::TokenScope;
use berth_storage::{Metadata, RepoName};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use policy::Policy;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use throttle::LoginThrottle;
pub use token::Grant;
use token::TokenKeys;

/// The admin's user name.
pub const ADMIN_USER: &str = "admin";
/// Subject of tokens handed to callers without credentials.
pub const ANONYMOUS: &str = "anonymous";
/// How long a verified Basic login is remembered, sparing argon2 on every
/// request of a client that sends Basic credentials each time.
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Remembered logins at most (each is a hash and a principal).
const LOGIN_CACHE_ENTRIES: usize = 10_000;
/// How long a login waits for one of the `password_checks` places.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(5);

/// Bounds on what callers can make authentication hold (`[limits]`).
#[derive(Debug, Clone)]
pub struct AuthLimits {
    /// Scopes one `/token` request may ask for.
    pub token_max_scopes: usize,
    /// Largest token issued, and largest bearer token even looked at.
    pub token_max_bytes: usize,
    /// Memory for verified tokens remembered until their expiry.
    pub token_cache_bytes: usize,
    /// Password checks in flight per client address.
    pub logins_per_address: usize,
    /// Login attempts in flight per account.
    pub logins_per_account: usize,
    /// Password hashes (argon2, ~19 MiB each) computed at once, overall.
    pub password_checks: usize,
    /// API tokens one namespace (and the admin) may hold.
    pub api_tokens_per_namespace: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            token_max_scopes: 32,
            token_max_bytes: 16 * 1024,
            token_cache_bytes: 16 * 1024 * 1024,
            logins_per_address: 8,
            logins_per_account: 4,
            password_checks: 8,
            api_tokens_per_namespace: 100,
        }
    }
}

/// Why a login did not produce a principal.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (401); the message is for the client.
    Invalid(String),
    /// A limit or the database stopped the attempt before it was judged.
    Refused(ApiError),
}

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// The API token a caller came with: directly (Basic password or bearer
/// token), or through a bearer token `/token` issued for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    pub id: String,
    pub scope: TokenScope,
    /// Unix milliseconds.
    pub expires_ms: i64,
}

impl TokenUse {
    fn of(t: &berth_storage::meta::ApiToken) -> TokenUse {
        TokenUse {
            id: t.id.clone(),
            scope: t.scope,
            expires_ms: t.expires_ms,
        }
    }
}

/// Whether an API token's scope lets it do `action` (no token: nothing
/// narrows the principal's rights).
fn scope_allows(token: Option<&TokenUse>, action: Action) -> bool {
    token.is_none_or(|t| t.scope != TokenScope::Pull || action == Action::Pull)
}

/// Who a login proved to be: a principal, and the API token when the
/// password was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub token: Option<TokenUse>,
}

impl Identity {
    pub fn of(principal: Principal) -> Identity {
        Identity {
            principal,
            token: None,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is switched off: everyone may do everything.
    Unrestricted,
    Admin,
    /// A namespace account; its name is the namespace it owns.
    Namespace(String),
    Anonymous,
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Unrestricted => "unrestricted",
            Principal::Admin => ADMIN_USER,
            Principal::Namespace(n) => n,
            Principal::Anonymous => ANONYMOUS,
        }
    }

    pub(crate) fn from_subject(sub: &str) -> Principal {
        match sub {
            ADMIN_USER => Principal::Admin,
            ANONYMOUS => Principal::Anonymous,
            "unrestricted" => Principal::Unrestricted,
            other if !other.contains(':') => Principal::Namespace(other.to_owned()),
            _ => Principal::Anonymous,
        }
    }
}

/// The identity of a verified TLS client certificate, which `server`
/// attaches to every request of its connection: the namespace account
/// its common name maps to (`[auth] client_cert_namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub namespace: String,
}

/// An authenticated caller: the principal, and when they came with a
/// token, exactly what the token grants; `token` when they came with an
/// API token (or a bearer token issued for one), whose scope narrows
/// what the principal may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// Shared: a cached token's caller is cloned for every request, and a
    /// token can carry dozens of grants.
    pub grants: Option<Arc<[Grant]>>,
    pub token: Option<TokenUse>,
    /// The subject of the token the caller came with, when it names more
    /// than the principal does (a build's token: `build:<id>`).
    pub token_subject: Option<String>,
}

impl Caller {
    pub fn new(principal: Principal, grants: Option<Vec<Grant>>) -> Caller {
        Caller {
            principal,
            grants: grants.map(Arc::from),
            token: None,
            token_subject: None,
        }
    }

    /// Who did it, as the change feed and logs name them.
    pub fn actor(&self) -> &str {
        self.token_subject
            .as_deref()
            .unwrap_or_else(|| self.principal.name())
    }
}

/// The `[auth]` settings, read straight from the config file (every key
/// documented in config.example.toml). `limits` come from `[limits]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    /// The `service` of the token spec (audience of issued tokens).
    pub service: String,
    /// Token endpoint URL to advertise; by default `http://<Host>/token`.
    pub realm: Option<String>,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    pub anonymous_pull: bool,
    pub private_namespaces: Vec<String>,
    /// The admin's password; else `BERTH_ADMIN_PASSWORD`, else generated
    /// into `<data dir>/admin-password` (the wiring decides).
    pub admin_password: Option<String>,
    /// The token signing key's file; else `<data dir>/token-key`.
    pub token_key_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; asked for
    /// only when set (and TLS is on).
    pub client_ca: Option<std::path::PathBuf>,
    /// The namespace a client certificate's common name stands for.
    pub client_cert_namespace: String,
    /// When set, a client certificate counts only if its subject has this
    /// organization (O).
    pub client_cert_organization: Option<String>,
    /// Lifetime of an API token created without `expires_in`.
    #[serde(with = "humantime_serde")]
    pub api_token_default_lifetime: Duration,
    /// Longest lifetime an API token may be given.
    #[serde(with = "humantime_serde")]
    pub api_token_max_lifetime: Duration,
    #[serde(skip)]
    pub limits: AuthLimits,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            service: "berth".into(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            anonymous_pull: true,
            private_namespaces: Vec::new(),
            admin_password: None,
            token_key_file: None,
            client_ca: None,
            client_cert_namespace: "tool-{cn}".into(),
            client_cert_organization: None,
            api_token_default_lifetime: Duration::from_secs(90 * 86400),
            api_token_max_lifetime: Duration::from_secs(365 * 86400),
            limits: AuthLimits::default(),
        }
    }
}

pub struct Auth {
    config: AuthConfig,
    admin_password: String,
    keys: TokenKeys,
    policy: Policy,
    throttle: LoginThrottle,
    password_checks: tokio::sync::Semaphore,
    /// Remembered logins, each until its deadline (60 s, or its API
    /// token's expiry when sooner), with the `Stamp` it was found under.
    logins: Mutex<HashMap<[u8; 32], (Identity, Instant, Stamp)>>,
    /// Tokens already verified: a client sends the same token on every
    /// request of a pull or push.
    verified: Mutex<TokenCache>,
    /// Bumped by every credential change: a check that began before one
    /// does not remember what it found (it may be revoked already).
    generation: AtomicU64,
}

/// When a cache entry was found: this process's credential generation and
/// the storage's invalidation epoch (which, with PostgreSQL, moves with
/// every credential change on any replica). An entry is used only under
/// the stamp it was found with; there is no stamp (nothing is cached or
/// used) while a shared database's invalidations cannot be heard.
type Stamp = (u64, u64);

/// Verified tokens until their own expiry, bounded in bytes (a token's
/// grants can be large) rather than in entries. Found by the token's
/// signature (its last segment: an HMAC over the rest, so it differs
/// between any two tokens berth signed) and then compared whole, so a
/// token that reuses another's signature with other claims is no hit.
/// Hashing whole tokens (kilobytes with many scopes) cost every pull
/// request more than the rest of the lookup.
#[derive(Default)]
struct TokenCache {
    entries: HashMap<Box<str>, CachedToken>,
    bytes: usize,
}

struct CachedToken {
    token: Box<str>,
    caller: Caller,
    exp: u64,
    size: usize,
    stamp: Stamp,
}

/// The part of a JWT a cache entry is found by.
fn signature_of(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

impl TokenCache {
    fn get(&self, token: &str, now: u64, stamp: Stamp) -> Option<Caller> {
        self.entries
            .get(signature_of(token))
            .filter(|e| e.exp > now && e.stamp == stamp && *e.token == *token)
            .map(|e| e.caller.clone())
    }

    fn insert(
        &mut self,
        token: &str,
        (caller, exp, stamp): (Caller, u64, Stamp),
        now: u64,
        budget: usize,
    ) {
        let size = caller_bytes(&caller) + 2 * token.len();
        if size > budget / 4 {
            return; // never worth evicting everyone else for
        }
        if self.bytes + size > budget {
            self.entries.retain(|_, e| e.exp > now && e.stamp == stamp);
            self.bytes = self.entries.values().map(|e| e.size).sum();
        }
        while self.bytes + size > budget {
            // Still full of live tokens: drop some; they are re-verified
            // (cheaply) when they come back.
            let Some(k) = self.entries.keys().next().cloned() else {
                break;
            };
            if let Some(e) = self.entries.remove(&k) {
                self.bytes -= e.size;
            }
        }
        let entry = CachedToken {
            token: token.into(),
            caller,
            exp,
            size,
            stamp,
        };
        if let Some(old) = self.entries.insert(signature_of(token).into(), entry) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }
}

/// What a cached caller costs in memory, roughly.
fn caller_bytes(c: &Caller) -> usize {
    let grants: usize = c
        .grants
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            64 + g.kind.len() + g.name.len() + g.actions.iter().map(|a| a.len() + 24).sum::<usize>()
        })
        .sum();
    128 + c.principal.name().len() + grants
}

impl Auth {
    pub fn new(config: AuthConfig, admin_password: String, token_key: &[u8]) -> Auth {
        let policy = Policy {
            anonymous_pull: config.anonymous_pull,
            private_namespaces: config.private_namespaces.iter().cloned().collect(),
        };
        let password_checks = tokio::sync::Semaphore::new(config.limits.password_checks.max(1));
        Auth {
            keys: TokenKeys::new(token_key, &config.service),
            config,
            admin_password,
            policy,
            throttle: LoginThrottle::default(),
            password_checks,
            logins: Mutex::new(HashMap::new()),
            verified: Mutex::new(TokenCache::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// The `[auth]` settings (API token lifetimes; `limits`).
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Signs a token for `subject` with `grants` (e.g. for a build runner:
    /// push to its tool's namespace, pull of the run image).
    pub fn mint(&self, subject: &str, grants: Vec<Grant>, ttl: Option<Duration>) -> String {
        self.keys
            .mint(subject, grants, ttl.unwrap_or(self.config.token_ttl))
            .0
    }

    /// Forgets remembered logins and verified tokens; called when any
    /// credential changes, so a revoked or rotated secret (and a bearer
    /// token issued for a revoked API token) stops working at once.
    pub fn credentials_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.login_cache().clear();
        let mut verified = self.token_cache();
        verified.entries.clear();
        verified.bytes = 0;
    }

    /// The stamp cache entries are found and kept under now (`None`: use
    /// and keep nothing).
    fn stamp(&self, meta: &Metadata) -> Option<Stamp> {
        let generation = self.generation.load(Ordering::SeqCst);
        meta.cache_epoch().map(|epoch| (generation, epoch))
    }

    /// Works out who sent the request. Credentials in `Authorization` win;
    /// without them a verified client certificate is its namespace account;
    /// with neither the caller is anonymous. Bad credentials are an error
    /// (never a fall-back to the certificate).
    pub async fn authenticate(
        &self,
        meta: &Metadata,
        headers: &HeaderMap,
        client_cert: Option<&ClientCertificate>,
        peer: IpAddr,
    ) -> ApiResult<Caller> {
        if !self.config.enabled {
            return Ok(Caller::new(Principal::Unrestricted, None));
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            let principal = client_cert
                .map(|c| Principal::Namespace(c.namespace.clone()))
                .unwrap_or(Principal::Anonymous);
            return Ok(Caller::new(principal, None));
        };
        let value = value.to_str().map_err(|_| self.malformed(headers))?;
        let (scheme, rest) = value
            .split_once(' ')
            .ok_or_else(|| self.malformed(headers))?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = rest.trim();
            if token.len() > self.config.limits.token_max_bytes {
                return Err(self.unauthorized(
                    headers,
                    None,
                    Some("invalid_token"),
                    &format!(
                        "bearer token is longer than any this registry issues ({} bytes, [limits] token_max_bytes)",
                        self.config.limits.token_max_bytes
                    ),
                ));
            }
            let invalid = |e: LoginError| match e {
                LoginError::Invalid(reason) => {
                    self.unauthorized(headers, None, Some("invalid_token"), &reason)
                }
                LoginError::Refused(e) => e,
            };
            if api_token::claims_to_be(token) {
                if api_token::parse(token).is_none() {
                    return Err(invalid(LoginError::Invalid(
                        "malformed API token: expected berth_<id>_<secret> as it was shown at creation".into(),
                    )));
                }
                let identity = self.login(meta, "", token, peer).await.map_err(invalid)?;
                return Ok(Caller {
                    token: identity.token,
                    ..Caller::new(identity.principal, None)
                });
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stamp = self.stamp(meta);
            if let Some(caller) = stamp.and_then(|st| self.token_cache().get(token, now, st)) {
                return Ok(caller);
            }
            let claims = self.keys.verify(token).map_err(|e| {
                tracing::info!(%peer, reason = %e, "bearer token refused");
                self.unauthorized(headers, None, Some("invalid_token"), &e.to_string())
            })?;
            let token_use = match claims.tid.as_deref() {
                None => None,
                Some(tid) => Some(
                    self.token_origin(meta, tid, &claims.sub)
                        .await
                        .map_err(|e| {
                            tracing::info!(%peer, token = %truncate(tid), "bearer token of an unusable API token refused");
                            invalid(e)
                        })?,
                ),
            };
            let principal = Principal::from_subject(&claims.sub);
            let token_subject = (claims.sub != principal.name()).then(|| claims.sub.clone());
            let caller = Caller {
                principal,
                grants: Some(Arc::from(claims.access)),
                token: token_use,
                token_subject,
            };
            let mut cache = self.token_cache();
            if let Some(st) = stamp.filter(|st| self.stamp(meta) == Some(*st)) {
                cache.insert(
                    token,
                    (caller.clone(), claims.exp, st),
                    now,
                    self.config.limits.token_cache_bytes,
                );
            }
            return Ok(caller);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(rest).ok_or_else(|| self.malformed(headers))?;
            let identity = self
                .login(meta, &user, &password, peer)
                .await
                .map_err(|e| match e {
                    LoginError::Invalid(reason) => self.unauthorized(headers, None, None, &reason),
                    LoginError::Refused(e) => e,
                })?;
            return Ok(Caller {
                token: identity.token,
                ..Caller::new(identity.principal, None)
            });
        }
        Err(self.malformed(headers))
    }

    fn token_cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn login_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Identity, Instant, Stamp)>> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies a user name and password; a password that is an API token
    /// is checked as one, whatever the user name (the token says who it
    /// is). Repeated failures at one account (or token id) from one
    /// address are slowed down; attempts in flight are capped per account
    /// and per address, and password hashing overall, so parallel
    /// guessing is refused (429) rather than queued. A success is
    /// remembered for 60 s, never past its API token's expiry, and
    /// forgotten at any credential change.
    pub async fn login(
        &self,
        meta: &Metadata,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Identity, LoginError> {
        let cache_key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let stamp = self.stamp(meta);
        if let Some((identity, until, found)) = self.login_cache().get(&cache_key) {
            if Instant::now() < *until && Some(*found) == stamp {
                return Ok(identity.clone());
            }
        }
        let identity = match api_token::parse(password) {
            // The admin's password, however it looks, is the admin's.
            Some(presented)
                if !(user == ADMIN_USER
                    && secrets::secrets_equal(password, &self.admin_password)) =>
            {
                self.check_api_token(meta, presented, peer).await?
            }
            _ => self.check_password(meta, user, password, peer).await?,
        };
        let mut ttl = LOGIN_CACHE_TTL;
        if let Some(t) = &identity.token {
            let left = t.expires_ms.saturating_sub(berth_storage::now_ms());
            ttl = ttl.min(Duration::from_millis(left.max(0) as u64));
        }
        let mut cache = self.login_cache();
        if let Some(st) = stamp.filter(|st| self.stamp(meta) == Some(*st)) {
            if cache.len() >= LOGIN_CACHE_ENTRIES {
                cache.retain(|_, (_, until, found)| Instant::now() < *until && *found == st);
                if cache.len() >= LOGIN_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(cache_key, (identity.clone(), Instant::now() + ttl, st));
        }
        Ok(identity)
    }

    /// Runs `check` for a login attempt at `account` from `peer` under the
    /// throttle: the account's in-flight cap (held through the failure
    /// delay), the delay, the address's in-flight cap. `Ok(None)` from
    /// `check` is a failure, counted and answered with `failure`.
    async fn throttled<F>(
        &self,
        peer: IpAddr,
        account: &str,
        failure: impl FnOnce() -> String,
        check: F,
    ) -> Result<Identity, LoginError>
    where
        F: std::future::Future<Output = Result<Option<Identity>, LoginError>>,
    {
        let limits = &self.config.limits;
        let busy = |b: throttle::Busy| {
            let (limit, message) = match b {
                throttle::Busy::Account(n) => ("logins_per_account", format!(
                    "too many logins in flight for {:?} (limit {n}, [limits] logins_per_account); retry shortly",
                    truncate(account)
                )),
                throttle::Busy::Address(n) => ("logins_per_address", format!(
                    "too many logins in flight from your address (limit {n}, [limits] logins_per_address); retry shortly"
                )),
            };
            tracing::warn!(%peer, user = %truncate(account), limit, "login refused: too many in flight");
            LoginError::Refused(ApiError::too_many(limit, message))
        };
        let _account = self
            .throttle
            .enter_account(account, limits.logins_per_account)
            .map_err(busy)?;
        let delay = self.throttle.delay_for(peer, account);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let _address = self
            .throttle
            .enter_address(peer, limits.logins_per_address)
            .map_err(busy)?;
        match check.await? {
            Some(identity) => {
                self.throttle.succeeded(peer, account);
                Ok(identity)
            }
            None => {
                let failures = self.throttle.failed(peer, account);
                tracing::warn!(%peer, user = %truncate(account), failures, "login failed");
                Err(LoginError::Invalid(failure()))
            }
        }
    }

    /// The admin's password, or a namespace account's (argon2, at most
    /// `password_checks` at once).
    async fn check_password(
        &self,
        meta: &Metadata,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Identity, LoginError> {
        let limits = &self.config.limits;
        let check = async {
            if user == ADMIN_USER {
                return Ok(secrets::secrets_equal(password, &self.admin_password)
                    .then(|| Identity::of(Principal::Admin)));
            }
            match meta.namespace_account(user).await {
                Ok(Some(account)) => {
                    let _check = tokio::time::timeout(
                        PASSWORD_CHECK_WAIT,
                        self.password_checks.acquire(),
                    )
                    .await
                    .map_err(|_| {
                        LoginError::Refused(ApiError::too_many(
                            "password_checks",
                            format!(
                                "the registry is busy checking passwords ({} at once, [limits] password_checks); retry shortly",
                                limits.password_checks
                            ),
                        ))
                    })?
                    .map_err(|_| LoginError::Refused(ApiError::unavailable("the registry is shutting down")))?;
                    let (password, hash) = (password.to_owned(), account.secret_hash.clone());
                    let ok = tokio::task::spawn_blocking(move || {
                        secrets::verify_secret(&password, &hash)
                    })
                    .await
                    .unwrap_or(false);
                    Ok(ok.then(|| Identity::of(Principal::Namespace(account.namespace))))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::error!(error = %e, "credential lookup failed");
                    Err(LoginError::Refused(ApiError::unavailable(
                        "credentials could not be checked; try again",
                    )))
                }
            }
        };
        self.throttled(
            peer,
            user,
            || format!("invalid user name or password for {:?}", truncate(user)),
            check,
        )
        .await
    }

    /// An API token: one read by its id, a constant-time comparison of
    /// the secret's hash, its expiry; its use is recorded (at most once a
    /// minute). Throttled like a password, under the account `token:<id>`.
    async fn check_api_token(
        &self,
        meta: &Metadata,
        presented: api_token::Presented<'_>,
        peer: IpAddr,
    ) -> Result<Identity, LoginError> {
        let account = format!("token:{}", presented.id);
        let check = async {
            let row = match meta.api_token(presented.id).await {
                Ok(Some(row)) if api_token::verify(&presented, &row.secret_hash) => row,
                Ok(_) => return Ok(None),
                Err(e) => {
                    tracing::error!(error = %e, "API token lookup failed");
                    return Err(LoginError::Refused(ApiError::unavailable(
                        "credentials could not be checked; try again",
                    )));
                }
            };
            if row.expires_ms <= berth_storage::now_ms() {
                tracing::info!(%peer, token = %row.id, "expired API token refused");
                return Err(LoginError::Invalid(format!(
                    "API token {} ({:?}) expired at {}; create a new one",
                    row.id,
                    row.name,
                    rfc3339((row.expires_ms.max(0) / 1000) as u64)
                )));
            }
            if let Err(e) = meta.api_token_used(&row.id, row.last_used_ms).await {
                tracing::warn!(error = %e, token = %row.id, "could not record the API token's use");
            }
            let principal = match &row.namespace {
                Some(ns) => Principal::Namespace(ns.clone()),
                None => Principal::Admin,
            };
            Ok(Some(Identity {
                principal,
                token: Some(TokenUse::of(&row)),
            }))
        };
        self.throttled(
            peer,
            &account,
            || format!("unknown or revoked API token {}", presented.id),
            check,
        )
        .await
    }

    /// The API token a bearer token from `/token` was issued for: it must
    /// still exist, be unexpired and belong to the token's subject.
    pub async fn token_origin(
        &self,
        meta: &Metadata,
        tid: &str,
        subject: &str,
    ) -> Result<TokenUse, LoginError> {
        let row = match meta.api_token(tid).await {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(error = %e, "API token lookup failed");
                return Err(LoginError::Refused(ApiError::unavailable(
                    "credentials could not be checked; try again",
                )));
            }
        };
        let owner = |t: &berth_storage::meta::ApiToken| {
            t.namespace.clone().unwrap_or_else(|| ADMIN_USER.to_owned())
        };
        match row {
            Some(t) if owner(&t) != subject => Err(LoginError::Invalid(
                "token was not issued for this API token's owner".into(),
            )),
            Some(t) if t.expires_ms > berth_storage::now_ms() => Ok(TokenUse::of(&t)),
            Some(_) => Err(LoginError::Invalid(
                "the API token this bearer token was issued for has expired; log in again with a new one".into(),
            )),
            None => Err(LoginError::Invalid(
                "the API token this bearer token was issued for was revoked".into(),
            )),
        }
    }

    /// True when `caller` may do `action` on `repo`.
    pub fn may(&self, caller: &Caller, repo: &RepoName, action: Action) -> bool {
        match &caller.grants {
            Some(grants) => grants.iter().any(|g| {
                g.kind == "repository"
                    && g.name == repo.as_str()
                    && g.actions.iter().any(|a| a == action.as_str() || a == "*")
            }),
            None => {
                self.policy
                    .allows(&caller.principal, repo.namespace(), action)
                    && scope_allows(caller.token.as_ref(), action)
            }
        }
    }

    /// Whether `caller` may see repositories of `namespace` (catalog).
    pub fn may_list(&self, caller: &Caller, namespace: &str) -> bool {
        self.policy
            .allows(&caller.principal, namespace, Action::Pull)
    }

    /// Requires `action` on `repo`, answering as the token spec asks when
    /// it is not allowed: a challenge naming the scope to ask for.
    pub fn require(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        repo: &RepoName,
        action: Action,
    ) -> ApiResult<()> {
        if self.may(caller, repo, action) {
            return Ok(());
        }
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
            Action::Delete => "delete",
        };
        let scope = format!("repository:{repo}:{actions}");
        let mut denied = format!(
            "requested access to {repo} ({}) is denied for {}",
            action.as_str(),
            caller.principal.name()
        );
        if let Some(t) = caller
            .token
            .as_ref()
            .filter(|t| t.scope == TokenScope::Pull)
        {
            denied.push_str(&format!(" (API token {} may only pull)", t.id));
        }
        Err(match (&caller.grants, &caller.principal) {
            // A token without the scope: the client may ask for a better one.
            (Some(_), _) => self.challenge_error(
                headers,
                Some(&scope),
                Some("insufficient_scope"),
                Code::Denied,
                &denied,
            ),
            (None, Principal::Anonymous) => self.challenge_error(
                headers,
                Some(&scope),
                None,
                Code::Unauthorized,
                "authentication required",
            ),
            // Known by name and simply not allowed.
            (None, _) => ApiError::new(StatusCode::FORBIDDEN, Code::Denied, denied),
        })
    }

    /// Requires any authenticated caller (for `/v2/` itself: a 401 there is
    /// how clients learn where to get tokens).
    pub fn require_known(&self, caller: &Caller, headers: &HeaderMap) -> ApiResult<()> {
        if caller.principal == Principal::Anonymous && caller.grants.is_none() {
            return Err(self.challenge_error(
                headers,
                None,
                None,
                Code::Unauthorized,
                "authentication required",
            ));
        }
        Ok(())
    }

    /// Requires the namespace's own account (or the admin), for views of a
    /// tool's private figures such as its quota.
    pub fn require_owner(&self, caller: &Caller, namespace: &str) -> ApiResult<()> {
        match &caller.principal {
            Principal::Admin | Principal::Unrestricted => Ok(()),
            Principal::Namespace(own) if own == namespace => Ok(()),
            Principal::Anonymous => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                format!("log in as {namespace} (HTTP Basic or a bearer token)"),
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth\""),
            )),
            other => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                format!(
                    "{} may not act for {namespace} (only its own account or the admin may)",
                    other.name()
                ),
            )),
        }
    }

    /// Requires that the caller may change what its namespace holds
    /// (builds, tokens): not a pull-only API token. Follows `require_owner`
    /// or `require_admin`, which decide whose things they are.
    pub fn require_write(&self, caller: &Caller) -> ApiResult<()> {
        match &caller.token {
            Some(t) if t.scope == TokenScope::Pull => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                format!("API token {} may only pull", t.id),
            )),
            _ => Ok(()),
        }
    }

    /// Requires a password login (or a bearer token `/token` issued for
    /// one), not an API token: for creating credentials (API tokens,
    /// namespace passwords), so that no credential can mint another that
    /// outlives its own expiry or revocation.
    pub fn require_password(&self, caller: &Caller) -> ApiResult<()> {
        match &caller.token {
            Some(t) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                format!(
                    "API token {} cannot create credentials; log in with the account's password",
                    t.id
                ),
            )),
            None => Ok(()),
        }
    }

    /// Access for a build: push and pull on `push_repo`, pull on `pull_repo`.
    pub fn mint_build_token(&self, subject: &str, push_repo: &str, pull_repo: &str) -> String {
        let grant = |name: &str, actions: &[&str]| Grant {
            kind: "repository".into(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        };
        // Generous enough for the slowest build's export, still short-lived.
        self.mint(
            subject,
            vec![
                grant(push_repo, &["pull", "push"]),
                grant(pull_repo, &["pull"]),
            ],
            Some(Duration::from_secs(3 * 3600)),
        )
    }

    /// Requires the admin (admin API).
    pub fn require_admin(&self, caller: &Caller) -> ApiResult<()> {
        match caller.principal {
            Principal::Admin | Principal::Unrestricted => Ok(()),
            Principal::Anonymous => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                "the admin API needs the admin's credentials (HTTP Basic or a bearer token)",
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth admin\""),
            )),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                "the admin API is for the admin only",
            )),
        }
    }

    /// Answers `/token`: the intersection of what was asked for and what
    /// the principal (narrowed by its API token's scope) may do, signed.
    /// A token issued for an API token names it (so its revocation ends
    /// this token too) and expires no later than it.
    pub fn issue(&self, who: &Identity, scopes: &[String]) -> ApiResult<serde_json::Value> {
        let principal = &who.principal;
        let limits = &self.config.limits;
        let scopes: Vec<&str> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
            .collect();
        if scopes.len() > limits.token_max_scopes {
            return Err(ApiError::too_many(
                "token_max_scopes",
                format!(
                    "{} scopes asked for; one token request may ask for at most {} ([limits] token_max_scopes)",
                    scopes.len(),
                    limits.token_max_scopes
                ),
            ));
        }
        let mut grants: Vec<Grant> = Vec::new();
        for scope in scopes {
            let (kind, name, actions) = parse_scope(scope).ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::Denied,
                    format!(
                        "scope {:?} is malformed; expected repository:<name>:<actions>",
                        truncate(scope)
                    ),
                )
            })?;
            if kind == "registry" {
                if name == "catalog" {
                    grants.push(Grant {
                        kind,
                        name,
                        actions: vec!["*".into()],
                    });
                }
                continue;
            }
            let repo = RepoName::parse(&name).map_err(|e| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::Denied,
                    format!("scope {:?}: {e}", truncate(scope)),
                )
            })?;
            let mut allowed: Vec<String> = Vec::new();
            for a in actions.split(',') {
                let wanted: Vec<Action> = if a == "*" {
                    vec![Action::Pull, Action::Push, Action::Delete]
                } else {
                    Action::parse(a).into_iter().collect()
                };
                for w in wanted {
                    if self.policy.allows(principal, repo.namespace(), w)
                        && scope_allows(who.token.as_ref(), w)
                        && !allowed.iter().any(|x| x == w.as_str())
                    {
                        allowed.push(w.as_str().to_owned());
                    }
                }
            }
            match grants
                .iter_mut()
                .find(|g| g.kind == "repository" && g.name == name)
            {
                Some(g) => g.actions.extend(
                    allowed
                        .into_iter()
                        .filter(|a| !g.actions.contains(a))
                        .collect::<Vec<_>>(),
                ),
                None => grants.push(Grant {
                    kind: "repository".into(),
                    name,
                    actions: allowed,
                }),
            }
        }
        let origin = who
            .token
            .as_ref()
            .map(|t| (t.id.as_str(), (t.expires_ms.max(0) / 1000) as u64));
        let (token, claims) =
            self.keys
                .mint_from(principal.name(), grants, self.config.token_ttl, origin);
        if token.len() > limits.token_max_bytes {
            return Err(ApiError::too_many(
                "token_max_bytes",
                format!(
                    "the token for these scopes would be {} bytes, over the limit of {} ([limits] token_max_bytes); ask for fewer or shorter scopes",
                    token.len(),
                    limits.token_max_bytes
                ),
            ));
        }
        let issued_at = rfc3339(claims.iat);
        Ok(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": claims.exp.saturating_sub(claims.iat),
            "issued_at": issued_at,
        }))
    }

    /// The namespace account a verified client certificate stands for:
    /// its one common name put into `client_cert_namespace`, which must
    /// give a namespace that can own an account (never `admin`: no
    /// certificate is the admin). With `client_cert_organization` set, the
    /// subject must also have that organization.
    pub fn client_certificate(
        &self,
        subject: &crate::tls::PeerCertificate,
    ) -> Result<ClientCertificate, String> {
        if let Some(o) = &self.config.client_cert_organization {
            if !subject.organizations.iter().any(|x| x == o) {
                return Err(format!(
                    "its subject's organizations {:?} do not include {o:?} ([auth] client_cert_organization)",
                    subject.organizations
                ));
            }
        }
        let [cn] = subject.common_names.as_slice() else {
            return Err(format!(
                "its subject has {} common names; exactly one is needed",
                subject.common_names.len()
            ));
        };
        let namespace = client_cert_namespace(&self.config.client_cert_namespace, cn)?;
        Ok(ClientCertificate { namespace })
    }

    fn realm(&self, headers: &HeaderMap) -> String {
        if let Some(r) = &self.config.realm {
            return r.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() < 256
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        // The server sets X-Forwarded-Proto on every request to the scheme
        // the client used (TLS, or a trusted proxy's word): never a
        // client's own header.
        let scheme = match headers.get(crate::proxy::X_FORWARDED_PROTO) {
            Some(v) if v == "https" => "https",
            _ => "http",
        };
        format!("{scheme}://{host}/token")
    }

    fn challenge_error(
        &self,
        headers: &HeaderMap,
        scope: Option<&str>,
        error: Option<&str>,
        code: Code,
        message: &str,
    ) -> ApiError {
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.keys.service()
        );
        if let Some(s) = scope {
            value.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            value.push_str(&format!(",error=\"{e}\""));
        }
        ApiError::new(StatusCode::UNAUTHORIZED, code, message).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
        )
    }

    fn unauthorized(
        &self,
        headers: &HeaderMap,
        scope: Option<&str>,
        error: Option<&str>,
        message: &str,
    ) -> ApiError {
        self.challenge_error(headers, scope, error, Code::Unauthorized, message)
    }

    fn malformed(&self, headers: &HeaderMap) -> ApiError {
        self.unauthorized(
            headers,
            None,
            None,
            "malformed Authorization header; use Basic <base64 user:password> or Bearer <token>",
        )
    }
}

impl berth_builds::TokenMinter for Auth {
    fn mint(&self, subject: &str, push_repo: &str, pull_repo: &str) -> String {
        self.mint_build_token(subject, push_repo, pull_repo)
    }
}

/// The namespace `template` (`[auth] client_cert_namespace`, holding
/// `{cn}` once) gives for common name `cn`, if it can be an account.
pub fn client_cert_namespace(template: &str, cn: &str) -> Result<String, String> {
    if template.matches("{cn}").count() != 1 {
        return Err(format!(
            "[auth] client_cert_namespace = {template:?} must hold {{cn}} exactly once"
        ));
    }
    let namespace = template.replace("{cn}", cn);
    crate::handlers::admin::validate_namespace(&namespace).map_err(|e| {
        format!(
            "common name {:?} gives namespace {:?}, which cannot be an account: {}",
            truncate(cn),
            truncate(&namespace),
            e.message
        )
    })?;
    Ok(namespace)
}

/// Splits `type:name:actions`; the name may itself not contain ':'.
fn parse_scope(scope: &str) -> Option<(String, String, String)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !(kind == "repository" || kind == "registry") || name.is_empty() || actions.is_empty() {
        return None;
    }
    Some((kind.to_owned(), name.to_owned(), actions.to_owned()))
}

/// Decodes `Basic` credentials into user and password.
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// RFC 3339 UTC time for `issued_at`.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cache_finds_only_the_very_token_it_verified() {
        let mut cache = TokenCache::default();
        let caller = Caller::new(Principal::Namespace("tool-a".into()), Some(Vec::new()));
        let st = (0, 7);
        cache.insert("head.claims.sig", (caller, 100, st), 10, 1 << 20);
        assert!(cache.get("head.claims.sig", 50, st).is_some());
        // Another token ending in the same signature is no hit.
        assert!(cache.get("head.forged.sig", 50, st).is_none());
        assert!(cache.get("sig", 50, st).is_none());
        // Nor is it past its expiry.
        assert!(cache.get("head.claims.sig", 100, st).is_none());
        // Nor after an invalidation: here or (the epoch) on another replica.
        assert!(cache.get("head.claims.sig", 50, (1, 7)).is_none());
        assert!(cache.get("head.claims.sig", 50, (0, 8)).is_none());
        // The byte bound holds: a token too large for a quarter of it is
        // not kept.
        let big = format!("h.{}.s2", "c".repeat(4096));
        cache.insert(
            &big,
            (Caller::new(Principal::Admin, None), 100, st),
            10,
            8192,
        );
        assert!(cache.get(&big, 50, st).is_none());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:tool-a/web:pull,push"),
            Some(("repository".into(), "tool-a/web".into(), "pull,push".into()))
        );
        assert_eq!(parse_scope("registry:catalog:*").unwrap().1, "catalog");
        assert_eq!(parse_scope("garbage"), None);
        assert_eq!(parse_scope("repository::pull"), None);
        assert_eq!(parse_scope("user:x:y"), None);
    }

    #[test]
    fn client_certificates_map_to_namespace_accounts_only() {
        let auth = |org: Option<&str>, template: &str| {
            Auth::new(
                AuthConfig {
                    client_cert_namespace: template.into(),
                    client_cert_organization: org.map(str::to_owned),
                    ..AuthConfig::default()
                },
                "pw".into(),
                b"key",
            )
        };
        let subject = |cns: &[&str], orgs: &[&str]| crate::tls::PeerCertificate {
            common_names: cns.iter().map(|s| s.to_string()).collect(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            serial: "01".into(),
        };
        let a = auth(None, "tool-{cn}");
        assert_eq!(
            a.client_certificate(&subject(&["alice"], &[])).unwrap(),
            ClientCertificate {
                namespace: "tool-alice".into()
            }
        );
        assert!(a.client_certificate(&subject(&[], &[])).is_err());
        assert!(a.client_certificate(&subject(&["a", "b"], &[])).is_err());
        for bad in ["Alice", "a/b", "system:node:x", "", "a b", "../x"] {
            assert!(
                a.client_certificate(&subject(&[bad], &[])).is_err(),
                "{bad:?} must not map"
            );
        }
        // With the common name as the namespace, principals' names are
        // still refused: a certificate is never the admin.
        let bare = auth(None, "{cn}");
        for reserved in ["admin", "anonymous", "unrestricted"] {
            assert!(bare.client_certificate(&subject(&[reserved], &[])).is_err());
        }
        assert_eq!(
            bare.client_certificate(&subject(&["tool-x"], &[]))
                .unwrap()
                .namespace,
            "tool-x"
        );
        let org = auth(Some("toolforge"), "tool-{cn}");
        assert!(org
            .client_certificate(&subject(&["alice"], &["admins"]))
            .is_err());
        assert!(org
            .client_certificate(&subject(&["alice"], &["x", "toolforge"]))
            .is_ok());
        assert!(client_cert_namespace("tool-x", "a").is_err());
        assert!(client_cert_namespace("{cn}-{cn}", "a").is_err());
    }

    #[test]
    fn realm_follows_the_scheme_the_server_saw() {
        let a = Auth::new(AuthConfig::default(), "pw".into(), b"key");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("r.example:5000"));
        assert_eq!(a.realm(&h), "http://r.example:5000/token");
        h.insert(
            crate::proxy::X_FORWARDED_PROTO,
            HeaderValue::from_static("https"),
        );
        assert_eq!(a.realm(&h), "https://r.example:5000/token");
    }

    #[test]
    fn basic_and_dates() {
        assert_eq!(
            decode_basic("dXNlcjpwYXNz"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(decode_basic("!!!"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
