//! Notifications (registry:2's notifications and Harbor's webhooks are the
//! models): the change feed the metadata store keeps (`berth_storage`'s
//! events, recorded in the same transaction as each change, so a committed
//! push is never left unsaid) is delivered to each configured endpoint, in
//! order, at least once: one task per endpoint reads the events after its
//! cursor, POSTs those it subscribes to in registry:2's envelope (signed
//! with HMAC-SHA256 when it has a secret), and moves the cursor only on a
//! 2xx answer; a failure is retried with backoff. Cursors and the delivery
//! log live in the database, so a restart resumes where delivery stopped.

use berth_storage::lease::{self, Lease, Taken};
use berth_storage::meta::{DeliveryAttempt, EndpointState, Event, Metadata};
use berth_storage::now_ms;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What endpoints may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A manifest was pushed (one per tag it was pushed with).
    Push,
    /// A manifest or a tag was deleted through the API.
    Delete,
    /// A tag-cleanup run finished (its counts).
    TagCleanup,
    /// An untagged GC run finished (its counts).
    Gc,
    /// A build finished (its status, and the image it pushed).
    Build,
    /// A namespace's usage reached `quota_threshold_percent` of its limit.
    Quota,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Push,
        EventKind::Delete,
        EventKind::TagCleanup,
        EventKind::Gc,
        EventKind::Build,
        EventKind::Quota,
    ];

    /// The feed's action for this kind.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::Delete => "delete",
            EventKind::TagCleanup => "tag-cleanup",
            EventKind::Gc => "gc",
            EventKind::Build => "build",
            EventKind::Quota => "quota",
        }
    }
}

/// The `[notifications]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    pub endpoints: Vec<EndpointConfig>,
    /// A `quota` event when a namespace's usage reaches this percentage of
    /// its limit (once per crossing, from below).
    pub quota_threshold_percent: f64,
    /// Events every endpoint has are forgotten after this long.
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            endpoints: Vec::new(),
            quota_threshold_percent: 90.0,
            event_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// One `[[notifications.endpoints]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Names the endpoint in the admin API and keeps its place in the feed.
    pub name: String,
    pub url: String,
    /// What it hears of (default: everything).
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
    /// Signs each delivery: `X-Berth-Signature-256: sha256=<hex HMAC-SHA256
    /// of the body>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// An answer must come within this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most events in one delivery.
    #[serde(default = "default_batch")]
    pub max_events: u32,
    /// Waits between failed attempts double up to this.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Extra headers sent with each delivery (e.g. an Authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn all_events() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_batch() -> u32 {
    32
}

fn default_backoff() -> Duration {
    Duration::from_secs(300)
}

impl NotificationsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for e in &self.endpoints {
            let what = format!("[[notifications.endpoints]] {:?}", e.name);
            if e.name.is_empty()
                || e.name.len() > 64
                || !e
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("{what}: name must be 1-64 letters, digits, - or _"));
            }
            if !names.insert(e.name.as_str()) {
                return Err(format!("{what}: two endpoints have this name"));
            }
            match e.url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => return Err(format!("{what}: url {:?} is not an http(s) URL", e.url)),
            }
            if e.timeout.is_zero() || e.max_events == 0 || e.max_backoff.is_zero() {
                return Err(format!(
                    "{what}: timeout, max_events and max_backoff must be more than 0"
                ));
            }
            for (k, v) in &e.headers {
                if http::HeaderName::try_from(k.as_str()).is_err()
                    || http::HeaderValue::try_from(v.as_str()).is_err()
                {
                    return Err(format!("{what}: header {k:?} is not a valid header"));
                }
            }
        }
        if !(self.quota_threshold_percent > 0.0 && self.quota_threshold_percent <= 100.0) {
            return Err("[notifications] quota_threshold_percent must be in (0, 100]".into());
        }
        Ok(())
    }

    /// Whether any endpoint hears of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.endpoints.iter().any(|e| e.events.contains(&kind))
    }
}

/// Where deliveries say they come from (registry:2's `source`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// registry:2's notification envelope.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    events: Vec<Notification<'a>>,
}

#[derive(Debug, Serialize)]
struct Notification<'a> {
    id: String,
    timestamp: String,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Target<'a>>,
    actor: Actor<'a>,
    source: &'a Source,
    /// Berth's own details (a GC run's counts, a build's status, a quota).
    #[serde(skip_serializing_if = "Option::is_none")]
    berth: Option<&'a serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Target<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// The body of one delivery.
pub fn envelope(events: &[Event], source: &Source, public_url: Option<&str>) -> Vec<u8> {
    let events = events
        .iter()
        .map(|e| {
            let ev = &e.event;
            let target = (ev.repository.is_some() || ev.digest.is_some()).then(|| Target {
                media_type: ev.media_type.as_deref(),
                digest: ev.digest.as_deref(),
                size: ev.size,
                length: ev.size,
                repository: ev.repository.as_deref(),
                url: match (public_url, &ev.repository, &ev.digest) {
                    (Some(base), Some(r), Some(d)) => Some(format!(
                        "{}/v2/{r}/manifests/{d}",
                        base.trim_end_matches('/')
                    )),
                    _ => None,
                },
                tag: ev.tag.as_deref(),
            });
            Notification {
                id: e.id.to_string(),
                timestamp: rfc3339(e.at_ms),
                action: &ev.action,
                target,
                actor: Actor {
                    name: ev.actor.as_deref(),
                },
                source,
                berth: ev.detail.as_ref(),
            }
        })
        .collect();
    serde_json::to_vec(&Envelope { events }).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The delivery tasks.
pub struct Notifier {
    config: Arc<NotificationsConfig>,
    meta: Metadata,
    source: Source,
    public_url: Option<String>,
}

/// How often an idle endpoint looks for new events.
const POLL: Duration = Duration::from_millis(250);

impl Notifier {
    pub fn new(
        config: Arc<NotificationsConfig>,
        meta: Metadata,
        source: Source,
        public_url: Option<String>,
    ) -> Notifier {
        Notifier {
            config,
            meta,
            source,
            public_url,
        }
    }

    /// Starts one task per endpoint and one that prunes the feed; they run
    /// until aborted.
    pub fn spawn(self: Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = (0..self.config.endpoints.len())
            .map(|i| {
                let me = self.clone();
                tokio::spawn(async move { me.deliver_forever(i).await })
            })
            .collect();
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.prune_forever().await }));
        tasks
    }

    async fn prune_forever(&self) {
        loop {
            let names = self
                .config
                .endpoints
                .iter()
                .map(|e| e.name.clone())
                .collect();
            let cutoff = now_ms() - self.config.event_retention.as_millis() as i64;
            match self.meta.prune_events(names, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "forgot delivered events"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the change feed"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    /// Delivers to endpoint `index` for as long as this replica holds its
    /// lease (`notify:<name>`): with several replicas on one database, one
    /// deliverer per endpoint at a time, so events go out in order. A
    /// replica that loses the lease (it could not renew it for
    /// `lease::DEFAULT_TTL`) stops after the attempt in hand; the new
    /// holder starts from the stored cursor, so nothing is skipped
    /// (at least once, as always).
    async fn deliver_forever(&self, index: usize) {
        let ep = &self.config.endpoints[index];
        let job = format!("notify:{}", ep.name);
        loop {
            let lease = match Lease::acquire(&self.meta, &job, lease::DEFAULT_TTL, None).await {
                Ok(Taken::Lease(l)) => l,
                Ok(_) => {
                    tokio::time::sleep(lease::DEFAULT_TTL / 3).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep.name, error = %e, "cannot take the endpoint's delivery lease");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while !lease.lost() {
                let wait = match self.deliver_once(ep).await {
                    Ok(Some(wait)) => wait,
                    Ok(None) => Duration::ZERO,
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.name, error = %e, "notification delivery");
                        Duration::from_secs(1)
                    }
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait.min(lease::DEFAULT_TTL / 3)).await;
                }
            }
        }
    }

    /// One step: `Some(wait)` when there is nothing to do for `wait`.
    async fn deliver_once(
        &self,
        ep: &EndpointConfig,
    ) -> Result<Option<Duration>, berth_storage::StorageError> {
        let state: EndpointState = self.meta.endpoint(&ep.name).await?;
        let now = now_ms();
        if state.next_attempt_ms > now {
            return Ok(Some(Duration::from_millis(
                (state.next_attempt_ms - now) as u64,
            )));
        }
        let fetched = self.meta.events_after(state.cursor, ep.max_events).await?;
        let Some(last) = fetched.last().map(|e| e.id) else {
            return Ok(Some(POLL));
        };
        let wanted: Vec<Event> = fetched
            .into_iter()
            .filter(|e| ep.events.iter().any(|k| k.action() == e.event.action))
            .collect();
        if wanted.is_empty() {
            self.meta.endpoint_advanced(&ep.name, last, None).await?;
            return Ok(None);
        }
        let body = envelope(&wanted, &self.source, self.public_url.as_deref());
        let started = Instant::now();
        let result = post(ep, body).await;
        let attempt = |status: Option<u16>, error: Option<String>| DeliveryAttempt {
            at_ms: now,
            first_event: wanted[0].id,
            last_event: last,
            events: wanted.len() as u32,
            status,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        match result {
            Ok(status) if (200..300).contains(&status) => {
                self.meta
                    .endpoint_advanced(&ep.name, last, Some(attempt(Some(status), None)))
                    .await?;
                Ok(None)
            }
            outcome => {
                let (status, error) = match outcome {
                    Ok(status) => (Some(status), format!("answered {status}")),
                    Err(e) => (None, e),
                };
                let backoff = Duration::from_secs(1)
                    .saturating_mul(1u32 << state.failures.min(16))
                    .min(ep.max_backoff);
                tracing::info!(endpoint = %ep.name, error, retry_in = ?backoff, "notification not delivered");
                self.meta
                    .endpoint_failed(
                        &ep.name,
                        now_ms() + backoff.as_millis() as i64,
                        attempt(status, Some(error)),
                    )
                    .await?;
                Ok(Some(backoff))
            }
        }
    }
}

/// POSTs `body` to the endpoint; its status, or why there was none.
async fn post(ep: &EndpointConfig, body: Vec<u8>) -> Result<u16, String> {
    let ep = ep.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(ep.timeout))
            .build()
            .into();
        let mut req = agent
            .post(&ep.url)
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .header("user-agent", concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(secret) = &ep.secret {
            req = req.header("x-berth-signature-256", &signature(secret, &body));
        }
        for (k, v) in &ep.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(&body[..]) {
            Ok(mut resp) => {
                // Read (a bounded part of) the answer so the connection ends cleanly.
                let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
                Ok(resp.status().as_u16())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_storage::meta::NewEvent;

    #[test]
    fn envelope_is_registry2s_shape() {
        let source = Source {
            addr: "127.0.0.1:5000".into(),
            instance_id: "x".into(),
        };
        let e = Event {
            id: 7,
            at_ms: 0,
            event: NewEvent {
                action: "push".into(),
                repository: Some("tool-a/web".into()),
                digest: Some("sha256:abc".into()),
                tag: Some("v1".into()),
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                size: Some(42),
                actor: Some("tool-a".into()),
                detail: None,
            },
        };
        let v: serde_json::Value =
            serde_json::from_slice(&envelope(&[e], &source, Some("https://r.example/"))).unwrap();
        let n = &v["events"][0];
        assert_eq!(n["id"], "7");
        assert_eq!(n["action"], "push");
        assert_eq!(n["target"]["repository"], "tool-a/web");
        assert_eq!(n["target"]["tag"], "v1");
        assert_eq!(n["target"]["length"], 42);
        assert_eq!(
            n["target"]["url"],
            "https://r.example/v2/tool-a/web/manifests/sha256:abc"
        );
        assert_eq!(n["actor"]["name"], "tool-a");
        assert_eq!(n["source"]["instanceID"], "x");
        assert_eq!(n["timestamp"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_is_checked() {
        let mut c = NotificationsConfig::default();
        assert!(c.validate().is_ok());
        let ep = |name: &str, url: &str| EndpointConfig {
            name: name.into(),
            url: url.into(),
            events: all_events(),
            secret: None,
            timeout: default_timeout(),
            max_events: 1,
            max_backoff: default_backoff(),
            headers: BTreeMap::new(),
        };
        c.endpoints = vec![ep("ci", "http://hooks.example/x")];
        assert!(c.validate().is_ok());
        c.endpoints.push(ep("ci", "http://hooks.example/y"));
        assert!(c.validate().unwrap_err().contains("two endpoints"));
        c.endpoints = vec![ep("ci", "ftp://x")];
        assert!(c.validate().is_err());
        c.endpoints = vec![ep("bad name", "http://x")];
        assert!(c.validate().is_err());
    }
}
