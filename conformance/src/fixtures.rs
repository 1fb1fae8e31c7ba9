//! Test content: unique blobs and the manifests that tie them together, and
//! the push helpers every check builds on.

use crate::client::{Client, Resp};
use sha2::{Digest as _, Sha256, Sha512};
use std::cell::Cell;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub fn sha512(bytes: &[u8]) -> String {
    format!("sha512:{:x}", Sha512::digest(bytes))
}

#[derive(Clone)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob { bytes, digest }
    }
}

/// Shared state of one suite run: the client, the repositories it may use
/// and a nonce that keeps this run's content distinct from earlier runs'.
pub struct Ctx {
    pub client: Client,
    pub namespace: String,
    nonce: u128,
    counter: Cell<u64>,
}

impl Ctx {
    pub fn new(client: Client, namespace: &str) -> Ctx {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ctx {
            client,
            namespace: namespace.trim_matches('/').to_owned(),
            nonce,
            counter: Cell::new(0),
        }
    }

    fn next(&self) -> u64 {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        n
    }

    /// A fresh repository name for one check.
    pub fn repo(&self, purpose: &str) -> String {
        format!(
            "{}/conf-{}-{:x}-{}",
            self.namespace,
            purpose,
            self.nonce % 0xffff_ffff,
            self.next()
        )
    }

    /// A blob of `len` bytes that no other run or check has pushed.
    pub fn blob(&self, len: usize) -> Blob {
        let seed = format!("berth-conformance {} {}", self.nonce, self.next());
        let mut bytes = Vec::with_capacity(len);
        let mut block = Sha256::digest(seed.as_bytes()).to_vec();
        while bytes.len() < len {
            bytes.extend_from_slice(&block);
            block = Sha256::digest(&block).to_vec();
        }
        bytes.truncate(len);
        Blob::new(bytes)
    }

    /// A config blob (valid JSON, unique).
    pub fn config(&self) -> Blob {
        Blob::new(
            format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Labels":{{"run":"{}-{}"}}}}}}"#,
                self.nonce,
                self.next()
            )
            .into_bytes(),
        )
    }

    /// Monolithic push: POST then PUT with the whole body.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<(), String> {
        let put = self
            .client
            .push_blob(repo, &blob.digest, blob.bytes.clone())?;
        if put.status != 201 {
            return Err(format!("PUT upload: expected 201, got {}", put.describe()));
        }
        Ok(())
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Resp, String> {
        self.client.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
    }

    /// Pushes config + one layer + manifest; returns the manifest and its digest.
    pub fn push_image(&self, repo: &str, tag: &str) -> Result<(Vec<u8>, String), String> {
        let config = self.config();
        let layer = self.blob(2048);
        self.push_blob(repo, &config)?;
        self.push_blob(repo, &layer)?;
        let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer], None);
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest)?;
        if resp.status != 201 {
            return Err(format!(
                "manifest PUT: expected 201, got {}",
                resp.describe()
            ));
        }
        let digest = sha256(&manifest);
        Ok((manifest, digest))
    }
}

/// Appends a query to a URL that may already have one (Locations may).
pub fn with_query(url: &str, query: &str) -> String {
    if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

pub fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": blob.digest, "size": blob.bytes.len() })
}

/// An image manifest in OCI or Docker schema2 form.
pub fn image_manifest(
    media_type: &str,
    config: &Blob,
    layers: &[&Blob],
    subject: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let docker = media_type == DOCKER_MANIFEST;
    let (config_type, layer_type) = if docker {
        (DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_CONFIG, OCI_LAYER)
    };
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
    });
    if let Some((subject_type, subject_bytes)) = subject {
        m["subject"] = serde_json::json!({
            "mediaType": subject_type, "digest": sha256(subject_bytes), "size": subject_bytes.len()
        });
    }
    serde_json::to_vec_pretty(&m).expect("json")
}

/// An index (OCI or Docker manifest list) over manifests given as bytes.
pub fn index_manifest(media_type: &str, child_type: &str, children: &[&[u8]]) -> Vec<u8> {
    let manifests: Vec<_> = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "mediaType": child_type, "digest": sha256(c), "size": c.len(),
                "platform": {"architecture": if i == 0 {"amd64"} else {"arm64"}, "os": "linux"}
            })
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests }),
    )
    .expect("json")
}
