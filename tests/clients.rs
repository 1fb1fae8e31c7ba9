//! Real clients against the real binary: skopeo, docker (through a dockerd
//! the test starts on a private socket) and podman. Docker schema2 and OCI
//! images both.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Blob files of an OCI layout, by digest.
fn layout_blobs(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!("sha256:{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Pushes a fresh OCI image from a layout made by the test into `repo:tag`,
/// logged in as `creds` (user:password).
fn push_with_skopeo(
    berth: &Berth,
    work: &Path,
    repo: &str,
    tag: &str,
    format: &str,
    creds: &str,
) -> Vec<Vec<u8>> {
    let layout = work.join(format!("layout-{}-{tag}", repo.replace('/', "_")));
    let layers = write_oci_layout(&layout, tag, &format!("{repo}:{tag}"), 2);
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{}/{repo}:{tag}", berth.host()),
        &["--format", format, "--dest-creds", creds],
    );
    layers
}

#[test]
fn skopeo_round_trip_keeps_blobs_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let creds = format!("tool-e2e:{}", berth.namespace_credentials("tool-e2e"));
    for (format, tag) in [("oci", "oci"), ("v2s2", "schema2")] {
        let src = dir.path().join(format!("src-{tag}"));
        write_oci_layout(&src, tag, &format!("skopeo-{tag}"), 3);
        let image = format!("docker://{}/tool-e2e/skopeo:{tag}", berth.host());
        skopeo_copy(
            &format!("oci:{}:{tag}", src.display()),
            &image,
            &["--format", format, "--dest-creds", &creds],
        );

        // The registry serves the manifest with the type it was pushed as.
        let (status, headers, body) = get(
            &format!("{}/v2/tool-e2e/skopeo/manifests/{tag}", berth.url()),
            Some(MANIFEST_ACCEPT),
        );
        assert_eq!(status, 200);
        let expected_type = if format == "oci" {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        };
        assert_eq!(headers["content-type"], expected_type);
        assert_eq!(
            headers["docker-content-digest"].to_str().unwrap(),
            sha256(&body)
        );

        // Pulled back anonymously: tool namespaces are public.
        // Pulled back anonymously: tool namespaces are public.
        let out = dir.path().join(format!("out-{tag}"));
        skopeo_copy(&image, &format!("oci:{}:{tag}", out.display()), &[]);
        let pushed = layout_blobs(&src);
        let pulled = layout_blobs(&out);
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            let d = layer["digest"].as_str().unwrap();
            assert_eq!(
                pushed.get(d),
                pulled.get(d),
                "layer {d} must come back byte-identical ({format})"
            );
            assert!(pulled.contains_key(d));
        }
        if format == "oci" {
            // Untouched by conversion: every blob, manifest included, is identical.
            for (d, bytes) in &pushed {
                assert_eq!(
                    pulled.get(d),
                    Some(bytes),
                    "blob {d} differs after the round trip"
                );
            }
        }
    }
    // skopeo's own view of the tags.
    let tags = run(Command::new(tool("skopeo"))
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/tool-e2e/skopeo", berth.host())));
    assert!(
        tags.contains("\"oci\"") && tags.contains("\"schema2\""),
        "{tags}"
    );
}

#[test]
fn docker_pulls_and_pushes_schema2_and_oci_images() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let host = berth.host();
    let password = berth.namespace_credentials("tool-e2e");
    let creds = format!("tool-e2e:{password}");
    push_with_skopeo(
        &berth,
        dir.path(),
        "tool-e2e/docker-src",
        "schema2",
        "v2s2",
        &creds,
    );
    push_with_skopeo(
        &berth,
        dir.path(),
        "tool-e2e/docker-src",
        "oci",
        "oci",
        &creds,
    );
    dockerd
        .login(&host, "tool-e2e", &password)
        .expect("docker login");

    for tag in ["schema2", "oci"] {
        let src = format!("{host}/tool-e2e/docker-src:{tag}");
        let dst = format!("{host}/tool-e2e/docker-dst:{tag}");
        run(dockerd.cmd().args(["pull", &src]));
        run(dockerd.cmd().args(["tag", &src, &dst]));
        let out = run(dockerd.cmd().args(["push", &dst]));
        assert!(out.contains("digest: sha256:"), "docker push output: {out}");

        // What docker pushed is intact: its manifest's blobs are all there
        // and hash to their digests.
        let (status, _, body) = get(
            &format!("{}/v2/tool-e2e/docker-dst/manifests/{tag}", berth.url()),
            Some(MANIFEST_ACCEPT),
        );
        assert_eq!(status, 200);
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
        for l in manifest["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_owned());
        }
        for d in digests {
            let (status, _, blob) = get(
                &format!("{}/v2/tool-e2e/docker-dst/blobs/{d}", berth.url()),
                None,
            );
            assert_eq!(status, 200, "blob {d}");
            assert_eq!(sha256(&blob), d);
        }

        // A fresh pull of what docker pushed.
        run(dockerd.cmd().args(["rmi", "-f", &src, &dst]));
        run(dockerd.cmd().args(["pull", &dst]));
        let inspect = run(dockerd.cmd().args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            &dst,
        ]));
        assert!(
            inspect.contains("tool-e2e/docker-src"),
            "labels survive: {inspect}"
        );
    }

    // A missing image is reported as such.
    let err = run_failing(
        dockerd
            .cmd()
            .args(["pull", &format!("{host}/tool-e2e/docker-src:nope")]),
    );
    assert!(
        err.contains("not found") || err.contains("manifest unknown"),
        "docker pull of a missing tag: {err}"
    );
}

#[test]
fn podman_pulls_oci_and_schema2_images() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let creds = format!("tool-e2e:{}", berth.namespace_credentials("tool-e2e"));
    push_with_skopeo(&berth, dir.path(), "tool-e2e/podman", "oci", "oci", &creds);
    push_with_skopeo(
        &berth,
        dir.path(),
        "tool-e2e/podman",
        "schema2",
        "v2s2",
        &creds,
    );
    let storage = dir.path().join("podman");
    for tag in ["oci", "schema2"] {
        let out = run(Command::new(tool("podman"))
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(["pull", "--tls-verify=false"])
            .arg(format!("{}/tool-e2e/podman:{tag}", berth.host())));
        assert!(!out.trim().is_empty(), "podman pull prints the image id");
    }
}
