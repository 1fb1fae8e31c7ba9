//! Notifications end to end: the real binary tells a local receiver of
//! pushes, deletes, GC runs, a finished build and a quota crossing, while
//! the receiver is down, then slow (berth times out and retries), then up;
//! berth is killed with events pending and delivers them after it comes
//! back. Every event arrives, in order, signed, in registry:2's envelope.

mod common;
#[path = "common/builds.rs"]
mod harness;

use berth_conformance::client::Client;
use berth_conformance::fixtures::Ctx;
use common::*;
use harness::*;
use hmac::{Hmac, Mac};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret";

/// What the receiver got: (body, signature header).
type Received = Arc<Mutex<Vec<(Vec<u8>, String)>>>;

/// A webhook receiver on `port`: answers 200, after `slow` is cleared;
/// while `slow` is set it reads the request and answers only after the
/// sender's timeout.
fn receiver(port: u16, slow: Arc<AtomicBool>) -> Received {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (seen, slow) = (seen.clone(), slow.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut length, mut signature) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        match k.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = v.trim().parse().unwrap_or(0),
                            "x-berth-signature-256" => signature = v.trim().to_owned(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                seen.lock().unwrap().push((body, signature));
                if slow.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2500));
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    got
}

fn admin_get(berth: &Berth, path: &str) -> serde_json::Value {
    let (status, _, body) = request(
        "GET",
        &format!("{}{path}", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn endpoint(berth: &Berth) -> serde_json::Value {
    admin_get(berth, "/admin/v1/notifications")["endpoints"][0].clone()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_reach_a_receiver_that_is_down_then_slow_then_up_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hook_port = free_port();
    let extra = format!(
        "[gc]\nuntagged_grace = \"1s\"\nblob_grace = \"1s\"\n[notifications]\nquota_threshold_percent = 50\n[[notifications.endpoints]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\nmax_backoff = \"1s\"\n"
    );
    let config = builds_config(dir.path(), "source_schemes = [\"file\"]\n", &extra);
    let (data, port) = (dir.path().join("data"), free_port());
    let berth = Berth::start_with(&data, port, &config);
    push_run_image(&berth, dir.path());

    // Changes while the receiver is down.
    let tool = Tool::new(&berth, "n");
    let admin = Client::new(&berth.url(), admin());
    let r = admin
        .send(
            "PUT",
            "/admin/v1/quotas/tool-n",
            &[("content-type", "application/json")],
            br#"{"limit_bytes": 10000}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let ctx = Ctx::new(tool.client, "tool-n");
    let (_, v1) = ctx.push_image("tool-n/app", "v1").unwrap();
    ctx.push_image("tool-n/app", "v2").unwrap();
    let r = ctx.client.delete("/v2/tool-n/app/manifests/v1").unwrap();
    assert_eq!(r.status, 202);
    std::thread::sleep(Duration::from_millis(1100)); // past the GC graces
    for job in ["tag-cleanup", "untagged"] {
        let r = admin
            .send("POST", &format!("/admin/v1/gc/{job}"), &[], Vec::new())
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    let builder = Tool::new(&berth, "b");
    let build = started_id(&builder.start(&git_repo(dir.path()), serde_json::json!({})));
    builder.wait(&build, Duration::from_secs(120));
    wait_until(
        "berth never tried the endpoint",
        Duration::from_secs(30),
        || endpoint(&berth)["failures"].as_u64().unwrap_or(0) >= 1,
    );
    let state = endpoint(&berth);
    assert!(state["pending"].as_u64().unwrap() >= 8, "{state}");
    assert!(state["last_attempt"]["status"].is_null(), "{state}");

    // Killed with everything pending; the feed is in the database.
    let mut berth = berth;
    berth.kill9();
    let berth = Berth::start_with(&data, port, &config);
    assert!(endpoint(&berth)["pending"].as_u64().unwrap() >= 8);

    // Slow: berth gives up after its 1 s timeout and tries again.
    let slow = Arc::new(AtomicBool::new(true));
    let got = receiver(hook_port, slow.clone());
    wait_until(
        "no delivery reached the slow receiver",
        Duration::from_secs(30),
        || !got.lock().unwrap().is_empty(),
    );
    wait_until(
        "no timed-out attempt logged",
        Duration::from_secs(30),
        || {
            admin_get(&berth, "/admin/v1/notifications/hook/deliveries")["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| {
                    a["error"].as_str().unwrap_or("").contains("timed out")
                        || a["error"].as_str().unwrap_or("").contains("timeout")
                })
        },
    );
    // Up.
    slow.store(false, Ordering::SeqCst);
    wait_until("events still pending", Duration::from_secs(60), || {
        endpoint(&berth)["pending"] == 0
    });
    let state = endpoint(&berth);
    assert_eq!(state["failures"], 0, "{state}");
    assert_eq!(state["last_attempt"]["status"], 200, "{state}");

    // What arrived: signed, registry:2's envelope, every event once or
    // more (at least once), first seen in the order they happened.
    let got = got.lock().unwrap().clone();
    let mut first_seen: Vec<(i64, serde_json::Value)> = Vec::new();
    for (body, signature) in &got {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signature, &format!("sha256={want}"), "bad signature");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for e in v["events"].as_array().unwrap() {
            let id: i64 = e["id"].as_str().unwrap().parse().unwrap();
            if !first_seen.iter().any(|(i, _)| *i == id) {
                first_seen.push((id, e.clone()));
            }
        }
    }
    let ids: Vec<i64> = first_seen.iter().map(|(i, _)| *i).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "events arrived out of order");
    assert_eq!(
        ids.len() as i64,
        ids.last().unwrap() - ids[0] + 1,
        "an event is missing: {ids:?}"
    );
    let find = |action: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        first_seen
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["action"] == action && f(e))
            .unwrap_or_else(|| panic!("no {action} event: {first_seen:?}"))
            .clone()
    };
    let push = find("push", &|e| e["target"]["tag"] == "v1");
    assert_eq!(push["target"]["repository"], "tool-n/app");
    assert_eq!(push["target"]["digest"], v1);
    assert_eq!(push["actor"]["name"], "tool-n");
    assert!(push["source"]["instanceID"].as_str().is_some());
    let deleted = find("delete", &|e| e["target"]["tag"] == "v1");
    assert_eq!(deleted["actor"]["name"], "tool-n");
    let quota = find("quota", &|_| true);
    assert_eq!(quota["berth"]["namespace"], "tool-n");
    assert!(quota["berth"]["percent"].as_f64().unwrap() >= 50.0);
    let gc = find("gc", &|_| true);
    assert_eq!(gc["actor"]["name"], "gc");
    assert!(gc["berth"]["manifests_removed"].as_u64().is_some());
    find("tag-cleanup", &|_| true);
    let built = find("build", &|_| true);
    assert_eq!(built["berth"]["status"], "BUILD_SUCCESS");
    assert_eq!(built["target"]["repository"], "tool-b/tool-b");
    assert_eq!(built["actor"]["name"], format!("build:{build}"));
    // The build's own push was told too, by the build's token.
    find("push", &|e| {
        e["actor"]["name"] == format!("build:{build}").as_str()
    });
}
