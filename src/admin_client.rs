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

    /// Sends a request; returns the status and the JSON body (if any), or
    /// the server's error message.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let url = format!("{}{path}", self.base);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: serde_json::Value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        if status >= 400 {
            let message = json["errors"][0]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| json.to_string());
            return Err(format!("{method} {path}: HTTP {status}: {message}"));
        }
        Ok((status, json))
    }
}
