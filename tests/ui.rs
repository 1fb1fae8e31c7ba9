//! The web console in a real browser: Debian's chromium, headless, driven
//! over WebDriver (chromedriver) by fantoccini, against the real berth
//! binary. Each test signs in through the form and checks what the pages
//! show against the admin API; every page it visits is saved as PNG at
//! 1280 and 375 pixels wide under `target/ui-screenshots/`.

#[path = "common/builds.rs"]
mod builds;
mod common;

use berth_conformance::client::Client;
use berth_conformance::fixtures::{descriptor, Blob, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use common::*;
use fantoccini::{Client as Driver, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A DevTools command, through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: serde_json::Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or("")
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (ureq::http::Method, Option<String>) {
        (
            ureq::http::Method::POST,
            Some(serde_json::json!({"cmd": self.cmd, "params": self.params}).to_string()),
        )
    }
}

/// One browser at a time: chromium is heavy, and the machine has 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WIDTHS: [u32; 2] = [1280, 375];

fn screenshots_dir() -> PathBuf {
    // target/debug/berth -> target/ui-screenshots
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_berth"))
        .parent()
        .and_then(|p| p.parent())
        .expect("the target dir")
        .join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver and a headless chromium with a profile of its own.
struct Browser {
    driver: Child,
    c: Driver,
    _profile: tempfile::TempDir,
    base: String,
    test: &'static str,
}

impl Browser {
    async fn start(base: &str, test: &'static str) -> Browser {
        for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: scripts/install-test-deps installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-quic", "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,900",
                ]
            }),
        );
        let mut last = None;
        for _ in 0..3 {
            match fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps.clone())
            .connect(&url)
            .await
            {
                Ok(c) => {
                    return Browser {
                        driver,
                        c,
                        _profile: profile,
                        base: base.to_owned(),
                        test,
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("cannot start chromium: {last:?}");
    }

    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    /// The visible text of the page's main part.
    async fn text(&self) -> String {
        self.c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Clicks what `css` finds, which loads another page, and waits for
    /// that page (the old one's root element goes stale).
    async fn click(&self, css: &str) {
        let old = self.c.find(Locator::Css("html")).await.unwrap();
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        loop {
            let state = self
                .c
                .execute("return document.readyState;", vec![])
                .await
                .unwrap_or_default();
            if state == "complete" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the page after {css} did not load"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Saves the whole page (not only the window) at both widths.
    async fn shot(&self, name: &str) {
        let dir = screenshots_dir();
        for w in WIDTHS {
            self.c.set_window_size(w, 900).await.unwrap();
            // Readable at this width: nothing but tables (which scroll in
            // their own box) is wider than the window.
            let overflow = self
                .c
                .execute(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                    vec![],
                )
                .await
                .unwrap()
                .as_i64()
                .unwrap_or(0);
            if overflow > 0 {
                let wide = self
                    .c
                    .execute(
                        "return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && !e.closest('.scroll')).slice(0, 5).map(e => e.outerHTML.slice(0, 200));",
                        vec![],
                    )
                    .await
                    .unwrap();
                panic!("{name} at {w} px is {overflow} px wider than the window: {wide}");
            }
            let size = self
                .c
                .execute(
                    "return [document.documentElement.clientWidth, Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)];",
                    vec![],
                )
                .await
                .unwrap();
            let (width, height) = (
                size[0].as_f64().unwrap(),
                size[1].as_f64().unwrap().min(8000.0),
            );
            let shot = self
                .c
                .issue_cmd(Cdp {
                    cmd: "Page.captureScreenshot",
                    params: serde_json::json!({
                        "format": "png",
                        "captureBeyondViewport": true,
                        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                    }),
                })
                .await
                .unwrap();
            use base64::Engine as _;
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().expect("screenshot data"))
                .unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(dir.join(format!("{}-{name}-{w}.png", self.test)), png).unwrap();
        }
        self.c.set_window_size(1280, 900).await.unwrap();
    }

    async fn cookie(&self) -> Option<String> {
        self.c
            .get_named_cookie("berth_session")
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    async fn sign_in(&self, user: &str, password: &str) {
        self.fill("#username", user).await;
        self.fill("#password", password).await;
        self.click("form.login button[type=submit]").await;
    }

    async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = match self.c.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {needle:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn close(mut self) {
        let _ = self.c.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A POST of `body` (form-encoded) with headers; (status, headers, body).
fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, ureq::http::HeaderMap, String) {
    let mut req = http_agent()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (
        status,
        headers,
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn api(berth: &Berth, path: &str) -> serde_json::Value {
    let (status, _, body) = request(
        "GET",
        &format!("{}{path}", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn content(seed: &str, len: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = sha2::Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// Pushes an image of one `layer_bytes` layer to `repo:tag`.
fn push(client: &Client, repo: &str, tag: &str, seed: &str, layer_bytes: usize) {
    let layer = Blob::new(content(seed, layer_bytes));
    let config = Blob::new(
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Labels":{{"seed":"{seed}"}}}}}}"#)
            .into_bytes(),
    );
    for b in [&layer, &config] {
        let r = client.push_blob(repo, &b.digest, b.bytes.clone()).unwrap();
        assert_eq!(r.status, 201, "{}", r.describe());
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config), "layers": [descriptor(OCI_LAYER, &layer)]
    }))
    .unwrap();
    let r = client
        .send(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            manifest,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
}

const MIB: usize = 1024 * 1024;

/// Three tools' images, of different sizes; tool-beta near its limit.
fn seed(berth: &Berth) {
    for (ns, images) in [("tool-alpha", 3), ("tool-beta", 1), ("tool-gamma", 2)] {
        let password = berth.namespace_credentials(ns);
        let client = Client::new(&berth.url(), Some((ns.to_owned(), password)));
        for i in 0..images {
            push(
                &client,
                &format!("{ns}/web"),
                &format!("v{i}"),
                &format!("{ns}-{i}"),
                (i + 1) * MIB,
            );
        }
    }
    let (status, _, _) = {
        let mut r = http_agent()
            .put(&format!("{}/admin/v1/quotas/tool-beta", berth.url()))
            .header("authorization", &basic("admin", ADMIN_PASSWORD))
            .header("content-type", "application/json")
            .send(r#"{"limit_bytes": 1100000}"#)
            .unwrap();
        (
            r.status().as_u16(),
            (),
            r.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_quotas_as_the_api_does_and_sets_a_limit() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[ui]\npage_size = 2\n",
    );
    seed(&berth);
    let b = Browser::start(&berth.url(), "admin").await;

    // A page of the console sends a stranger to the sign-in form, and
    // back to the page after it.
    b.goto("/ui/quotas").await;
    assert_eq!(b.path().await, "/ui/login?next=%2Fui%2Fquotas");
    b.shot("login").await;
    b.sign_in("admin", "wrong").await;
    assert!(b.text().await.contains("Wrong user name or password"));
    b.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(b.path().await, "/ui/quotas");

    // The table is the API's list, a page at a time (page_size = 2).
    b.goto("/ui/quotas?per=50").await;
    let rows =
        b.c.find_all(Locator::Css("table.quotas tbody tr"))
            .await
            .unwrap();
    let listed = api(&berth, "/admin/v1/quotas");
    let listed = listed["namespaces"].as_array().unwrap();
    assert_eq!(rows.len(), listed.len());
    for (row, q) in rows.iter().zip(listed) {
        let attr =
            |name: &'static str| async move { row.attr(name).await.unwrap().unwrap_or_default() };
        assert_eq!(
            attr("data-namespace").await,
            q["namespace"].as_str().unwrap()
        );
        assert_eq!(attr("data-used-bytes").await, q["used_bytes"].to_string());
        let limit = q["limit_bytes"]
            .as_u64()
            .map(|l| l.to_string())
            .unwrap_or_default();
        assert_eq!(attr("data-limit-bytes").await, limit);
        let shown = row
            .find(Locator::Css("td.usage"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let used = berth_registry::error::human_bytes(q["used_bytes"].as_u64().unwrap());
        assert!(shown.starts_with(&format!("{used} of ")), "{shown} vs {q}");
    }
    b.shot("quotas").await;
    b.goto("/ui/quotas").await;
    assert!(b.text().await.contains("Showing 1–2 of 3 (page 1 of 2)"));
    b.click("a[rel=next]").await;
    assert!(b.text().await.contains("Showing 3–3 of 3 (page 2 of 2)"));

    // Over 90%: the API's filter, from the form.
    b.goto("/ui/quotas?per=50").await;
    b.c.find(Locator::Css("#over"))
        .await
        .unwrap()
        .select_by_value("90")
        .await
        .unwrap();
    b.click("form.filters button[type=submit]").await;
    let over: Vec<String> = api(&berth, "/admin/v1/quotas?over_percent=90")["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(over, ["tool-beta"]);
    let mut shown = Vec::new();
    for row in
        b.c.find_all(Locator::Css("table.quotas tbody tr"))
            .await
            .unwrap()
    {
        shown.push(row.attr("data-namespace").await.unwrap().unwrap());
    }
    assert_eq!(shown, over);
    b.shot("quotas-over-90").await;

    // Set a limit through the form; the API reads it back.
    b.goto("/ui/quotas?per=50").await;
    b.c.find(Locator::Css("#mode-tool-gamma"))
        .await
        .unwrap()
        .select_by_value("bytes")
        .await
        .unwrap();
    b.fill("#limit-tool-gamma", "5MiB").await;
    b.click("tr[data-namespace=tool-gamma] form.limit button")
        .await;
    assert!(b
        .text()
        .await
        .contains("The limit of tool-gamma is now 5.0 MiB (override)."));
    let q = api(&berth, "/admin/v1/quotas/tool-gamma");
    assert_eq!(q["limit_bytes"], 5 * MIB as u64);
    assert_eq!(q["limit_source"], "override");
    b.c.find(Locator::Css("#mode-tool-alpha"))
        .await
        .unwrap()
        .select_by_value("unlimited")
        .await
        .unwrap();
    b.click("tr[data-namespace=tool-alpha] form.limit button")
        .await;
    let q = api(&berth, "/admin/v1/quotas/tool-alpha");
    assert_eq!(q["limit_bytes"], serde_json::Value::Null);
    assert_eq!(q["limit_source"], "unlimited");

    // The other admin pages render.
    b.goto("/ui/").await;
    let text = b.text().await;
    assert!(
        text.contains("Namespaces near or over quota") && text.contains("tool-beta"),
        "{text}"
    );
    b.shot("overview").await;
    b.goto("/ui/namespaces/tool-alpha").await;
    let text = b.text().await;
    assert!(
        text.contains("Largest images") && text.contains("v2"),
        "{text}"
    );
    let tags =
        b.c.find_all(Locator::Css("table.tags tbody tr"))
            .await
            .unwrap();
    assert_eq!(tags.len(), 3);
    b.shot("namespace").await;
    b.goto("/ui/storage").await;
    assert!(b.c.find(Locator::Css("figure.chart svg")).await.is_ok());
    b.shot("storage").await;
    b.goto("/ui/builds").await;
    b.shot("builds").await;

    // Every control has a label a screen reader reads out.
    for path in ["/ui/quotas", "/ui/namespaces/tool-alpha", "/ui/gc"] {
        b.goto(path).await;
        let unlabelled = b
            .c
            .execute(
                r#"return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
                     .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                     .map(e => e.outerHTML);"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(unlabelled, serde_json::json!([]), "{path}");
        let unnamed = b
            .c
            .execute(
                "return Array.from(document.querySelectorAll('button, a')).filter(e => !e.textContent.trim()).map(e => e.outerHTML);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(unnamed, serde_json::json!([]), "{path}");
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_dry_run_from_the_page_is_listed_and_offers_the_real_run() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[gc]\nenabled = false\nuntagged_grace = \"0s\"\nblob_grace = \"0s\"\n",
    );
    seed(&berth);
    // Something for the untagged job: a tag removed.
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/v2/tool-alpha/web/manifests/v0", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 202);
    let b = Browser::start(&berth.url(), "gc").await;
    b.goto("/ui/login").await;
    b.sign_in("admin", ADMIN_PASSWORD).await;
    b.goto("/ui/gc").await;
    b.click("form[action='/ui/gc/untagged'] button").await;
    let here = b.path().await;
    let id: i64 = here
        .strip_prefix("/ui/gc/runs/")
        .unwrap_or_else(|| panic!("landed on {here}"))
        .parse()
        .unwrap();
    let text = b.text().await;
    assert!(text.contains("dry run: nothing was removed"), "{text}");
    assert!(text.contains("What a real run would remove"));
    assert!(text.contains("Manifests (1)"), "{text}");
    b.shot("dry-run").await;

    // The API lists the same run; the page lists it too.
    let runs = api(&berth, "/admin/v1/gc/runs");
    assert_eq!(runs["runs"][0]["id"], id);
    assert_eq!(runs["runs"][0]["dry_run"], true);
    assert_eq!(runs["runs"][0]["job"], "untagged");
    b.goto("/ui/gc").await;
    let row =
        b.c.find(Locator::Css(&format!("tr[data-run='{id}']")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(row.contains("untagged") && row.contains("dry run"), "{row}");

    // The real run, from the dry run's page.
    b.goto(&format!("/ui/gc/runs/{id}")).await;
    b.click("section.confirm button").await;
    let text = b.text().await;
    assert!(text.contains("real run"), "{text}");
    let runs = api(&berth, "/admin/v1/gc/runs");
    assert_eq!(runs["runs"][0]["dry_run"], false);
    assert_eq!(runs["runs"][0]["report"]["manifests_removed"], 1);
    b.goto("/ui/gc").await;
    assert_eq!(
        b.c.find_all(Locator::Css("table.runs tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(b.c.find(Locator::Css("figure.chart svg")).await.is_ok());
    b.shot("gc").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_see_only_their_own_forms_need_their_token_and_sign_out_ends_it() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    seed(&berth);
    let alpha = berth.namespace_credentials("tool-alpha");
    let b = Browser::start(&berth.url(), "tool").await;
    b.goto("/ui/").await;
    b.sign_in("tool-alpha", &alpha).await;
    assert_eq!(b.path().await, "/ui/namespaces/tool-alpha");
    let text = b.text().await;
    assert!(
        text.contains("Largest images") && !text.contains("Credentials"),
        "{text}"
    );
    b.shot("own-namespace").await;
    let cookie = format!(
        "berth_session={}",
        b.cookie().await.expect("a session cookie")
    );

    // Another tool's pages and the admin's are refused.
    for path in [
        "/ui/namespaces/tool-beta",
        "/ui/tools/beta/builds",
        "/ui/quotas",
        "/ui/gc",
    ] {
        let (status, _, body) = request(
            "GET",
            &format!("{}{path}", berth.url()),
            &[("cookie", &cookie)],
        );
        assert_eq!(status, 403, "{path}: {}", String::from_utf8_lossy(&body));
    }
    b.goto("/ui/namespaces/tool-beta").await;
    let text = b.text().await;
    assert!(text.contains("403 Forbidden"), "{text}");
    assert!(!text.contains("v0"), "nothing of tool-beta's shows");
    b.shot("forbidden").await;

    // A POST without the form's CSRF token is refused, in the browser
    // (the hidden field removed before submitting) and from anywhere.
    b.goto("/ui/namespaces/tool-alpha").await;
    b.c.execute(
        "document.querySelectorAll('table.tags input[name=csrf]').forEach(e => e.remove());",
        vec![],
    )
    .await
    .unwrap();
    b.click("table.tags tbody tr:first-child button").await;
    let text = b.text().await;
    assert!(
        text.contains("403 Forbidden") && text.contains("CSRF"),
        "{text}"
    );
    b.shot("csrf-refused").await;
    let delete = format!("{}/ui/namespaces/tool-alpha/tags/delete", berth.url());
    let form = "repository=tool-alpha%2Fweb&tag=v2";
    let (status, _, _) = post(&delete, &[("cookie", &cookie)], form);
    assert_eq!(status, 403, "no token");
    let (status, _, _) = post(
        &delete,
        &[("cookie", &cookie)],
        &format!("{form}&csrf=forged"),
    );
    assert_eq!(status, 403, "a wrong token");
    let tags = api(&berth, "/admin/v1/quotas/tool-alpha");
    assert_eq!(tags["largest_images"].as_array().unwrap().len(), 3);
    let (status, _, _) = request(
        "GET",
        &format!("{}/v2/tool-alpha/web/manifests/v2", berth.url()),
        &[("accept", OCI_MANIFEST)],
    );
    assert_eq!(status, 200, "the tag is still there");

    // With the token (the page's own form), the tool deletes its tag.
    b.goto("/ui/namespaces/tool-alpha").await;
    b.click("table.tags tbody tr:first-child button").await;
    assert!(b.text().await.contains("Deleted tag"));
    let (status, _, _) = request(
        "GET",
        &format!("{}/v2/tool-alpha/web/manifests/v2", berth.url()),
        &[("accept", OCI_MANIFEST)],
    );
    assert_eq!(status, 404);

    // Sign-out ends the session on the server: the old cookie is no key.
    b.click("form.signout button").await;
    assert_eq!(b.path().await, "/ui/login");
    let (status, headers, _) = request(
        "GET",
        &format!("{}/ui/namespaces/tool-alpha", berth.url()),
        &[("cookie", &cookie)],
    );
    assert_eq!(status, 303);
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/login"));
    b.goto("/ui/namespaces/tool-alpha").await;
    assert!(b.path().await.starts_with("/ui/login"));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_made_shown_once_and_revoked_from_the_page() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    seed(&berth);
    let alpha = berth.namespace_credentials("tool-alpha");
    let b = Browser::start(&berth.url(), "tokens").await;
    b.goto("/ui/").await;
    b.sign_in("tool-alpha", &alpha).await;

    // Made from the namespace page, shown once.
    let make = |name: &'static str| {
        let b = &b;
        async move {
            b.goto("/ui/namespaces/tool-alpha").await;
            b.fill("#token-name", name).await;
            b.fill("#token-expires", "7d").await;
            b.click("form.token button[type=submit]").await;
            b.c.find(Locator::Css("#secret"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let ci = make("ci").await;
    assert!(ci.starts_with("berth_"), "{ci}");
    b.shot("token-created").await;
    let other = make("other").await;
    let tags = format!("{}/v2/tool-alpha/web/tags/list", berth.url());
    let with = |token: &str| {
        let (status, _, _) = request(
            "GET",
            &tags,
            &[("authorization", &format!("Bearer {token}"))],
        );
        status
    };
    assert_eq!((with(&ci), with(&other)), (200, 200), "both work at once");

    // Listed (never their secrets) with the API's figures.
    b.goto("/ui/namespaces/tool-alpha").await;
    let text = b.text().await;
    assert!(
        text.contains("ci") && text.contains("other") && !text.contains(&ci[10..]),
        "{text}"
    );
    let listed = api(&berth, "/admin/v1/tokens?namespace=tool-alpha");
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2);
    b.shot("tokens").await;

    // Revoked from the page: it stops at once, the other goes on.
    let other_id = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "other")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.c.execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();
    b.click(&format!("tr[data-token='{other_id}'] button"))
        .await;
    assert!(b.text().await.contains("revoked"));
    assert_eq!((with(&ci), with(&other)), (200, 401));

    // An API token signs in as its namespace; such a session makes no
    // tokens (its form is not offered and a forged POST is refused) and
    // ends when the token is revoked.
    b.click("form.signout button").await;
    b.sign_in("anything", &ci).await;
    assert_eq!(b.path().await, "/ui/namespaces/tool-alpha");
    let text = b.text().await;
    assert!(
        text.contains("ci") && !text.contains("Create a token"),
        "{text}"
    );
    let cookie = format!("berth_session={}", b.cookie().await.unwrap());
    let csrf =
        b.c.find(Locator::Css("input[name=csrf]"))
            .await
            .unwrap()
            .attr("value")
            .await
            .unwrap()
            .unwrap();
    let (status, _, body) = post(
        &format!("{}/ui/namespaces/tool-alpha/tokens", berth.url()),
        &[("cookie", &cookie), ("origin", &berth.url())],
        &format!("csrf={csrf}&name=sneaky"),
    );
    assert_eq!(status, 403, "{body}");
    let ci_id = ci["berth_".len()..].split('_').next().unwrap();
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/admin/v1/tokens/{ci_id}", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 204);
    b.goto("/ui/namespaces/tool-alpha").await;
    assert!(
        b.path().await.starts_with("/ui/login"),
        "the session ended with its token"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_sets_its_build_trigger_and_a_push_shows_in_its_build() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    builds::git_repo(dir.path());
    let (berth, _data) = builds::start_berth_with(
        dir.path(),
        "source_schemes = [\"http\"]\n",
        "private_source_hosts = [\"localhost\"]\n",
    );
    let server = builds::GitServer::start(dir.path(), builds::Hang::Never);
    let url = server.url("localhost", "bare.git");
    let password = berth.namespace_credentials("tool-foo");
    let b = Browser::start(&berth.url(), "trigger").await;
    b.goto("/ui/login").await;
    b.sign_in("tool-foo", &password).await;
    b.goto("/ui/tools/foo/builds").await;
    assert!(b.text().await.contains("Pushes start no builds"));
    b.fill("#trigger_source_url", &url).await;
    b.click("form.trigger button[type=submit]").await;
    let read = |css: &'static str| {
        let b = &b;
        async move {
            b.c.find(Locator::Css(css))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let (hook, secret) = (read("#hook-url").await, read("#secret").await);
    assert!(
        hook.starts_with("/v1/hooks/") && secret.len() == 64,
        "{hook} {secret}"
    );
    b.shot("trigger-set").await;
    // The API shows the same trigger.
    let (status, _, body) = request(
        "GET",
        &format!("{}/v1/tool/foo/trigger", berth.url()),
        &[("authorization", &basic("tool-foo", &password))],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["trigger"]["hook_url"], hook.as_str());

    // GitLab delivers a push of the repository's head.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir.path().join("src"))
        .output()
        .unwrap();
    let commit = String::from_utf8(commit.stdout).unwrap().trim().to_owned();
    let mut payload: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/hooks/gitlab-push.json")).unwrap();
    payload["ref"] = "refs/heads/main".into();
    payload["after"] = commit.as_str().into();
    payload["checkout_sha"] = commit.as_str().into();
    payload["project"]["git_http_url"] = url.as_str().into();
    payload["project"]["default_branch"] = "main".into();
    payload["repository"]["git_http_url"] = url.as_str().into();
    let answer = http_agent()
        .post(&format!("{}{hook}", berth.url()))
        .header("content-type", "application/json")
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", &secret)
        .send(serde_json::to_vec(&payload).unwrap())
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);

    // The build page says what started it.
    b.goto("/ui/tools/foo/builds").await;
    b.click("table.builds tbody tr:first-child a").await;
    let text = b.text().await;
    assert!(
        text.contains(&format!("a push of {} to refs/heads/main", &commit[..12])),
        "{text}"
    );
    b.shot("pushed-build").await;

    // A new secret replaces the old one; deleting ends the trigger.
    b.goto("/ui/tools/foo/builds").await;
    b.click("form[action='/ui/tools/foo/trigger/rotate'] button")
        .await;
    let rotated = read("#secret").await;
    assert!(rotated.len() == 64 && rotated != secret);
    b.goto("/ui/tools/foo/builds").await;
    b.c.execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();
    b.click("form[action='/ui/tools/foo/trigger/delete'] button")
        .await;
    assert!(b.text().await.contains("Pushes start no builds"));
    let gone = http_agent()
        .post(&format!("{}{hook}", berth.url()))
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", &rotated)
        .send(serde_json::to_vec(&payload).unwrap())
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_builds_log_follows_in_the_page() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = builds::git_repo(dir.path());
    let (berth, _data) = builds::start_berth(dir.path(), "");
    let password = berth.namespace_credentials("tool-foo");
    let b = Browser::start(&berth.url(), "build").await;
    b.goto("/ui/login").await;
    b.sign_in("tool-foo", &password).await;
    b.goto("/ui/tools/foo/builds").await;
    b.fill("#source_url", &repo).await;
    b.fill("#ref", "main").await;
    b.fill("#envvars", "MODE=sleep").await;
    b.shot("start-form").await;
    b.click("form.build button[type=submit]").await;
    let here = b.path().await;
    let id = here
        .strip_prefix("/ui/tools/foo/builds/")
        .unwrap_or_else(|| panic!("landed on {here}"))
        .to_owned();
    // The stand-in prints "sleeping" and sleeps: the page shows it
    // without a reload.
    b.wait_for_text("#build-log", "sleeping", Duration::from_secs(60))
        .await;
    b.wait_for_text("#log-note", "Following the log", Duration::from_secs(10))
        .await;
    b.shot("log-following").await;
    // Cancelled from elsewhere (the API), the end arrives in the page.
    let (status, _, body) = request(
        "PUT",
        &format!("{}/v1/tool/foo/builds/{id}/cancel", berth.url()),
        &[("authorization", &basic("tool-foo", &password))],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    b.wait_for_text("#build-log", "BUILD_CANCELLED", Duration::from_secs(30))
        .await;
    b.wait_for_text("#build-status", "BUILD_CANCELLED", Duration::from_secs(30))
        .await;
    b.shot("log-ended").await;
    b.goto("/ui/tools/foo/builds").await;
    assert!(b.text().await.contains(&id));
    b.shot("tool-builds").await;
    b.close().await;
}
