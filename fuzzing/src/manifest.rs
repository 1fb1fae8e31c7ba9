//! Target `manifest`: `berth_storage::manifest::parse` on raw bytes and on
//! manifests assembled from plausible fragments (`ManifestSpec`, shared
//! with the request target). Whatever it accepts must be safe to store and
//! to serve back: a manifest media type, header-safe strings, valid UTF-8.

use arbitrary::{Arbitrary, Unstructured};
use berth_storage::manifest::{self, is_media_type, MANIFEST_TYPES};
use berth_storage::Digest;

/// Media types, the real ones first, then traps.
pub const MEDIA_TYPES: &[&str] = &[
    manifest::OCI_MANIFEST,
    manifest::OCI_INDEX,
    manifest::DOCKER_MANIFEST,
    manifest::DOCKER_MANIFEST_LIST,
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.example.sbom+json",
    "application/json",
    "application/octet-stream",
    "text/html",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    "application/vnd.oci.image.manifest.v1+json\u{1}",
    "a/b",
    "",
];

#[derive(Arbitrary, Debug)]
pub enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    pub fn media_type(&self) -> String {
        match self {
            Text::Known(i) => MEDIA_TYPES[*i as usize % MEDIA_TYPES.len()].to_owned(),
            Text::Raw(s) => s.clone(),
        }
    }
}

/// A digest in a manifest: of content the request target can push, of an
/// earlier manifest, or anything.
#[derive(Arbitrary, Debug)]
pub enum DigestSpec {
    /// Digest of `BLOBS[i]`.
    Blob(u8),
    /// Digest of the i-th manifest seen so far (request target), else of
    /// a blob.
    Manifest(u8),
    Sha512(u8),
    Raw(String),
}

/// Blob contents the request target pushes and manifests refer to.
pub const BLOBS: &[&[u8]] = &[
    b"{}",
    b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}",
    b"layer one",
    b"",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    &[0xa5; 3000],
];

/// Resolves what `DigestSpec::Manifest` points at.
pub trait Known {
    fn manifest(&self, i: u8) -> Option<String>;
}

impl Known for () {
    fn manifest(&self, _: u8) -> Option<String> {
        None
    }
}

impl DigestSpec {
    pub fn resolve(&self, known: &dyn Known) -> String {
        match self {
            DigestSpec::Blob(i) => blob_digest(*i).to_string(),
            DigestSpec::Manifest(i) => known
                .manifest(*i)
                .unwrap_or_else(|| blob_digest(*i).to_string()),
            DigestSpec::Sha512(i) => Digest::compute(
                berth_storage::Algorithm::Sha512,
                BLOBS[*i as usize % BLOBS.len()],
            )
            .to_string(),
            DigestSpec::Raw(s) => s.clone(),
        }
    }
}

pub fn blob(i: u8) -> &'static [u8] {
    BLOBS[i as usize % BLOBS.len()]
}

pub fn blob_digest(i: u8) -> Digest {
    Digest::sha256_of(blob(i))
}

#[derive(Arbitrary, Debug)]
pub struct Descriptor {
    media_type: Option<Text>,
    digest: DigestSpec,
    /// `None`: the true size when known.
    size: Option<i64>,
    urls: Vec<String>,
    platform: bool,
}

#[derive(Arbitrary, Debug)]
pub enum Schema {
    Two,
    Other(i64),
    Missing,
    Text,
}

#[derive(Arbitrary, Debug)]
pub struct ManifestSpec {
    schema: Schema,
    media_type: Option<Text>,
    artifact_type: Option<Text>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<Vec<(String, String)>>,
    extra: Option<(String, String)>,
}

impl Descriptor {
    fn json(&self, known: &dyn Known) -> serde_json::Value {
        let digest = self.digest.resolve(known);
        let size = self.size.unwrap_or_else(|| match &self.digest {
            DigestSpec::Blob(i) | DigestSpec::Sha512(i) => blob(*i).len() as i64,
            _ => 2,
        });
        let mut d = serde_json::json!({ "digest": digest, "size": size });
        if let Some(m) = &self.media_type {
            d["mediaType"] = m.media_type().into();
        }
        if !self.urls.is_empty() {
            d["urls"] = self.urls.clone().into();
        }
        if self.platform {
            d["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
        }
        d
    }
}

impl ManifestSpec {
    pub fn to_bytes(&self, known: &dyn Known) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        match &self.schema {
            Schema::Two => {
                m.insert("schemaVersion".into(), 2.into());
            }
            Schema::Other(n) => {
                m.insert("schemaVersion".into(), (*n).into());
            }
            Schema::Missing => {}
            Schema::Text => {
                m.insert("schemaVersion".into(), "2".into());
            }
        }
        if let Some(t) = &self.media_type {
            m.insert("mediaType".into(), t.media_type().into());
        }
        if let Some(t) = &self.artifact_type {
            m.insert("artifactType".into(), t.media_type().into());
        }
        if let Some(c) = &self.config {
            m.insert("config".into(), c.json(known));
        }
        if let Some(ls) = &self.layers {
            m.insert(
                "layers".into(),
                ls.iter().map(|l| l.json(known)).collect::<Vec<_>>().into(),
            );
        }
        if let Some(ms) = &self.manifests {
            m.insert(
                "manifests".into(),
                ms.iter().map(|l| l.json(known)).collect::<Vec<_>>().into(),
            );
        }
        if let Some(s) = &self.subject {
            m.insert("subject".into(), s.json(known));
        }
        if let Some(a) = &self.annotations {
            let map: serde_json::Map<_, _> = a
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect();
            m.insert("annotations".into(), map.into());
        }
        if let Some((k, v)) = &self.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        serde_json::to_vec(&m).expect("JSON values serialize")
    }
}

pub fn manifest(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 8 {
        0 => None,
        n => Some(MEDIA_TYPES[(selector / 8) as usize % MEDIA_TYPES.len()].to_owned())
            .filter(|_| n != 7),
    };
    let (bytes, content_type) = if selector & 0x80 == 0 {
        (rest.to_vec(), content_type)
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(spec) = ManifestSpec::arbitrary(&mut u) else {
            return;
        };
        (spec.to_bytes(&()), content_type)
    };
    check(&bytes, content_type.as_deref());
}

fn check(bytes: &[u8], content_type: Option<&str>) {
    let Ok(p) = manifest::parse(bytes, content_type) else {
        return;
    };
    assert!(std::str::from_utf8(bytes).is_ok(), "accepted invalid UTF-8");
    assert!(
        MANIFEST_TYPES.contains(&p.media_type.as_str()),
        "stored media type {:?} is not a manifest type",
        p.media_type
    );
    // Served back as a Content-Type header: it must be one.
    assert!(http::HeaderValue::from_str(&p.media_type).is_ok());
    if let Some(a) = &p.artifact_type {
        assert!(is_media_type(a), "artifact type {a:?}");
    }
    if let Some(a) = &p.annotations {
        let v: serde_json::Value = serde_json::from_str(a).expect("annotations are JSON");
        assert!(v.is_object());
    }
    assert!(
        p.blobs.windows(2).all(|w| w[0] < w[1]),
        "blobs sorted, unique"
    );
    assert!(
        p.children.windows(2).all(|w| w[0] < w[1]),
        "children sorted, unique"
    );
    let index = manifest::is_index_type(&p.media_type);
    assert!(!index || p.blobs.is_empty(), "an index references no blobs");
    assert!(index || p.children.is_empty(), "an image has no children");
}
