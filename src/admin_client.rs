//! The admin CLI's HTTP client: subcommands such as `berth namespace
//! credentials` talk to a running berth, so they work on a live system.

use std::path::PathBuf;
use std::time::Duration;

/// Where the server is and how to log in as admin.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the running berth.
    #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// The admin password [default: BERTH_ADMIN_PASSWORD, else <data-dir>/admin-password].
    #[arg(long, env = "BERTH_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Data dir of a berth on this host, to read its generated admin password.
    #[arg(long, default_value = "./berth-data")]
    pub data_dir: PathBuf,
}

pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl AdminClient {
    pub fn connect(c: &Connection) -> Result<AdminClient, String> {
        use base64::Engine as _;
        let password = match &c.admin_password {
            Some(p) => p.clone(),
            None => {
                let path = c.data_dir.join("admin-password");
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| format!("no admin password: set BERTH_ADMIN_PASSWORD or --admin-password (reading {} failed: {e})", path.display()))?
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(AdminClient {
            agent,
            base: c.url.trim_end_matches('/').to_owned(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
            ),
        })
    }

    /// Sends a request with an optional JSON body and reads the answer as
    /// `T` (one of `berth_registry::api`'s types); an error answer becomes
    /// the server's message.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, String> {
        let text = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| {
            format!("{method} {path}: the answer is not what this CLI expects ({e}); is the server the same version?")
        })
    }

    /// Sends a request whose answer has no body of interest.
    pub fn call_empty(&self, method: &str, path: &str) -> Result<(), String> {
        self.send(method, path, None::<&()>).map(drop)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let body = match body {
            Some(b) => serde_json::to_string(b).map_err(|e| e.to_string())?,
            None => String::new(),
        };
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(format!("{method} {path}: HTTP {status}: {message}"));
        }
        Ok(text)
    }
}
