//! Restart safety: everything pushed before a crash (SIGKILL, even in the
//! middle of a push) is pullable afterwards and an interrupted upload leaves
//! no trace; SIGTERM lets in-flight requests finish before berth exits.

mod common;

use berth_conformance::client::Client;
use berth_conformance::fixtures::{sha256 as digest_of, Ctx};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opens a raw connection and sends request headers plus `first` body bytes
/// of a body declared as `total` bytes long.
fn start_slow_request(port: u16, method: &str, path: &str, total: u64, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
        basic("admin", ADMIN_PASSWORD)
    )
    .unwrap();
    s.write_all(first).unwrap();
    s.flush().unwrap();
    s
}

/// Checks that `repo:tag` is pullable and every blob matches its digest.
fn assert_image_intact(url: &str, repo: &str, tag: &str, manifest: &[u8]) {
    let (status, _, body) = get(
        &format!("{url}/v2/{repo}/manifests/{tag}"),
        Some(MANIFEST_ACCEPT),
    );
    assert_eq!(status, 200, "{repo}:{tag} must survive the restart");
    assert_eq!(body, manifest);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in digests {
        let (status, _, blob) = get(&format!("{url}/v2/{repo}/blobs/{d}"), None);
        assert_eq!(status, 200);
        assert_eq!(sha256(&blob), d);
    }
}

#[test]
fn sigkill_mid_push_loses_nothing_and_hides_the_interrupted_upload() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut berth = Berth::start(&data);
    let ctx = Ctx::new(Client::new(&berth.url(), admin()), "tool-restart");

    let mut images = Vec::new();
    for i in 0..5 {
        let repo = format!("tool-restart/app{i}");
        let (manifest, _) = ctx.push_image(&repo, "v1").unwrap();
        images.push((repo, manifest));
    }

    // An upload into a brand-new repository, killed half-way through a
    // large streamed PATCH.
    let post = ctx
        .client
        .send(
            "POST",
            "/v2/tool-restart/interrupted/blobs/uploads/",
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(post.status, 202);
    let location = post.header("location").unwrap().to_owned();
    let chunk = vec![7u8; 4 * 1024 * 1024];
    let mut slow = start_slow_request(berth.port, "PATCH", &location, 64 * 1024 * 1024, &chunk);
    slow.write_all(&chunk).unwrap();
    // And a monolithic push of a known digest, also cut off.
    let doomed = vec![9u8; 3 * 1024 * 1024];
    let doomed_digest = digest_of(&doomed);
    let _slow2 = start_slow_request(
        berth.port,
        "POST",
        &format!("/v2/tool-restart/app0/blobs/uploads/?digest={doomed_digest}"),
        doomed.len() as u64,
        &doomed[..1024 * 1024],
    );
    std::thread::sleep(Duration::from_millis(500));
    berth.kill9();

    let berth = Berth::start(&data);
    for (repo, manifest) in &images {
        assert_image_intact(&berth.url(), repo, "v1", manifest);
    }
    let admin_auth = basic("admin", ADMIN_PASSWORD);
    let (status, _, body) = request(
        "GET",
        &format!("{}{location}", berth.url()),
        &[("authorization", &admin_auth)],
    );
    assert_eq!(status, 404, "the interrupted upload must be gone");
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UPLOAD_UNKNOWN"));
    let (status, _, _) = get(
        &format!("{}/v2/tool-restart/app0/blobs/{doomed_digest}", berth.url()),
        None,
    );
    assert_eq!(status, 404, "a half-received blob must not be visible");
    let leftovers: Vec<_> = std::fs::read_dir(data.join("uploads"))
        .unwrap()
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging files of dead uploads are removed at start: {leftovers:?}"
    );
    let (_, _, catalog) = get(&format!("{}/v2/_catalog", berth.url()), None);
    let catalog = String::from_utf8_lossy(&catalog).into_owned();
    assert!(
        !catalog.contains("interrupted"),
        "an upload that never finished creates no repository: {catalog}"
    );
    assert!(catalog.contains("tool-restart/app4"));

    // The registry is fully usable again, in the same repositories.
    let ctx = Ctx::new(Client::new(&berth.url(), admin()), "tool-restart");
    ctx.push_image("tool-restart/interrupted", "v1").unwrap();
    ctx.push_image("tool-restart/app0", "v2").unwrap();
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut berth = Berth::start(&data);

    let blob: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let digest = digest_of(&blob);
    let half = blob.len() / 2;
    let mut slow = start_slow_request(
        berth.port,
        "POST",
        &format!("/v2/tool-graceful/app/blobs/uploads/?digest={digest}"),
        blob.len() as u64,
        &blob[..half],
    );
    std::thread::sleep(Duration::from_millis(200));
    berth.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(&blob[half..]).unwrap();
    let mut response = [0u8; 64];
    let n = slow.read(&mut response).unwrap();
    let head = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 201"),
        "the in-flight upload completes during shutdown: {head}"
    );
    drop(slow);

    let status = berth.wait();
    assert!(
        status.success(),
        "berth exits 0 after SIGTERM: {status:?}\n{}",
        berth.log_text()
    );
    assert!(
        berth.log_text().contains("berth stopped cleanly"),
        "{}",
        berth.log_text()
    );

    let berth = Berth::start(&data);
    let (status, _, body) = get(
        &format!("{}/v2/tool-graceful/app/blobs/{digest}", berth.url()),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(body, blob);
}

/// A berth whose address is taken exits at once, saying which address,
/// and the harness sees it exit rather than taking whatever answers on
/// that port for it (what made port races look like other failures).
#[test]
fn a_taken_address_stops_berth_at_start_with_the_address_named() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let data = dir.path().join("data");
    let berth = std::panic::catch_unwind(|| Berth::start_on(&data, port));
    let message = match berth {
        Ok(_) => panic!("berth started on a port another socket holds"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("exited before it became healthy"),
        "{message}"
    );
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    drop(holder);
}
