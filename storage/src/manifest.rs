//! Reading what a pushed manifest refers to. The registry stores manifest
//! bytes verbatim; this module only extracts what it must know: which blobs
//! and child manifests must exist, the subject (for referrers) and the
//! artifact type. Parsing is deliberately lenient about everything else
//! (unknown fields, Docker layer media types inside OCI manifests, artifacts),
//! because clients such as the CNB lifecycle push exactly such mixtures.

use crate::digest::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest accepted, as DESIGN.md fixes (manifests live in SQLite).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The media types a manifest may be stored and served as. Anything else
/// (`text/html` above all) is refused: a stored manifest is served with
/// its media type as Content-Type, and must never become a page.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// RFC 6838's grammar: `type "/" subtype`, each a restricted-name of at
/// most 127 characters (letters, digits and `!#$&-^_.+`, starting with a
/// letter or digit). No parameters, spaces or control characters.
pub fn is_media_type(s: &str) -> bool {
    fn restricted_name(n: &str) -> bool {
        let b = n.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(c))
    }
    match s.split_once('/') {
        Some((t, sub)) => restricted_name(t) && restricted_name(sub),
        None => false,
    }
}

/// What a manifest references and how it describes itself.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// Config and layers: blobs that must be linked into the repository.
    pub blobs: Vec<Digest>,
    /// Children of an index: manifests that must exist in the repository.
    pub children: Vec<Digest>,
    /// Annotations as pushed, serialized JSON object (for the referrers API).
    pub annotations: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2 (schema1 manifests are not supported)")]
    SchemaVersion,
    #[error("manifest field {field} holds an invalid digest: {reason}")]
    Digest { field: &'static str, reason: String },
    #[error("{0}")]
    Shape(String),
    #[error("manifest is not valid UTF-8 (at byte {0})")]
    Utf8(usize),
    #[error("{what} {value:?} is not a manifest media type; berth stores {}", MANIFEST_TYPES.join(", "))]
    MediaType { what: &'static str, value: String },
    #[error("{field} {value:?} is not a media type (type/subtype, RFC 6838)")]
    BadMediaType { field: &'static str, value: String },
}

fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

impl RawDescriptor {
    fn digest(&self, field: &'static str) -> Result<Digest, ManifestError> {
        if self.size < 0 {
            return Err(ManifestError::Shape(format!(
                "{field} descriptor has negative size {}",
                self.size
            )));
        }
        self.digest
            .parse()
            .map_err(|e: crate::digest::DigestError| ManifestError::Digest {
                field,
                reason: e.to_string(),
            })
    }

    /// Foreign (non-distributable) layers live elsewhere, named by `urls`;
    /// the registry is not expected to hold them.
    fn is_foreign(&self) -> bool {
        !self.urls.is_empty()
            && self
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
    }
}

/// True for media types whose body is a list of manifests.
pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Parses `bytes` pushed with `content_type` (the request's Content-Type,
/// if any). The stored media type is the Content-Type when it names a
/// manifest type, else the body's `mediaType`, else the OCI manifest type.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    // serde_json does not check the UTF-8 of values it skips, so check all.
    std::str::from_utf8(bytes).map_err(|e| ManifestError::Utf8(e.valid_up_to()))?;
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let header_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    for (what, value) in [
        ("Content-Type", header_type),
        ("mediaType", raw.media_type.as_deref()),
    ] {
        if let Some(v) = value {
            if !MANIFEST_TYPES.contains(&v) {
                return Err(ManifestError::MediaType {
                    what,
                    value: shown(v),
                });
            }
        }
    }
    let config_type = raw.config.as_ref().and_then(|c| c.media_type.as_deref());
    for (field, value) in [
        ("artifactType", raw.artifact_type.as_deref()),
        ("config.mediaType", config_type),
    ] {
        if let Some(v) = value {
            if !is_media_type(v) {
                return Err(ManifestError::BadMediaType {
                    field,
                    value: shown(v),
                });
            }
        }
    }
    if let (Some(h), Some(b)) = (header_type, raw.media_type.as_deref()) {
        if h != b {
            return Err(ManifestError::Shape(format!(
                "Content-Type {h:?} does not match the manifest's mediaType {b:?}"
            )));
        }
    }
    let is_index = match header_type.or(raw.media_type.as_deref()) {
        Some(t) => is_index_type(t),
        None => raw.manifests.is_some() && raw.config.is_none(),
    };
    let media_type = header_type
        .or(raw.media_type.as_deref())
        .map(str::to_owned)
        .unwrap_or_else(|| if is_index { OCI_INDEX } else { OCI_MANIFEST }.to_owned());

    let mut blobs = Vec::new();
    let mut children = Vec::new();
    if is_index {
        let manifests = raw
            .manifests
            .as_ref()
            .ok_or_else(|| ManifestError::Shape("an index must have a manifests array".into()))?;
        for m in manifests {
            children.push(m.digest("manifests[].digest")?);
        }
    } else {
        let config = raw
            .config
            .as_ref()
            .ok_or_else(|| ManifestError::Shape("an image manifest must have a config".into()))?;
        blobs.push(config.digest("config.digest")?);
        for layer in raw.layers.as_deref().unwrap_or_default() {
            let d = layer.digest("layers[].digest")?;
            if !layer.is_foreign() {
                blobs.push(d);
            }
        }
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| s.digest("subject.digest"))
        .transpose()?;
    // The referrers API reports the config media type when an image manifest
    // has no explicit artifactType (distribution spec, "Listing Referrers").
    let artifact_type = raw.artifact_type.clone().or_else(|| {
        if is_index {
            None
        } else {
            raw.config.as_ref().and_then(|c| c.media_type.clone())
        }
    });
    let annotations = raw
        .annotations
        .as_ref()
        .filter(|a| !a.is_empty())
        .map(|a| serde_json::to_string(a).expect("string map serializes"));
    blobs.sort();
    blobs.dedup();
    children.sort();
    children.dedup();
    Ok(ParsedManifest {
        media_type,
        artifact_type,
        subject,
        blobs,
        children,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_with_mixed_media_types_and_unknown_fields() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","extra":1,
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":3}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":4}},
            "annotations":{{"k":"v"}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let p = parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.subject.unwrap().to_string(), d('c'));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(p.annotations.as_deref(), Some(r#"{"k":"v"}"#));
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('e')
        );
        let p = parse(body.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST_LIST);
        assert!(p.blobs.is_empty());
        assert_eq!(p.children.len(), 1);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion)
        ));
        let bad_digest =
            r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1},"layers":[]}"#;
        assert!(matches!(
            parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Digest { .. })
        ));
        let mismatch = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(mismatch.as_bytes(), Some(OCI_MANIFEST)).is_err());
    }

    fn image(media_type: &str, config_type: &str, extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"{config_type}","digest":"{}","size":2}},"layers":[]{extra}}}"#,
            d('a')
        )
    }

    #[test]
    fn only_manifest_media_types_are_stored() {
        let ok = image(OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", "");
        assert!(parse(ok.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        assert!(parse(ok.as_bytes(), Some("application/json; charset=utf-8")).is_ok());
        // A page, by header or by body, is refused.
        assert!(matches!(
            parse(ok.as_bytes(), Some("text/html")),
            Err(ManifestError::MediaType {
                what: "Content-Type",
                ..
            })
        ));
        let html = image("text/html", "application/vnd.oci.image.config.v1+json", "");
        assert!(matches!(
            parse(html.as_bytes(), None),
            Err(ManifestError::MediaType { .. })
        ));
        // A control character in a media type (it would become a header).
        let ctl = image(
            "application/vnd.oci.image.manifest.v1+json\\u0001",
            "x/y",
            "",
        );
        assert!(parse(ctl.as_bytes(), None).is_err());
        let bad_config = image(OCI_MANIFEST, "a b/c", "");
        assert!(matches!(
            parse(bad_config.as_bytes(), None),
            Err(ManifestError::BadMediaType {
                field: "config.mediaType",
                ..
            })
        ));
        let bad_artifact = image(OCI_MANIFEST, "x/y", r#","artifactType":"x\ny""#);
        assert!(matches!(
            parse(bad_artifact.as_bytes(), None),
            Err(ManifestError::BadMediaType {
                field: "artifactType",
                ..
            })
        ));
    }

    #[test]
    fn invalid_utf8_anywhere_is_refused() {
        let mut body = image(OCI_MANIFEST, "x/y", r#","annotations":{"k":"XX"}"#).into_bytes();
        let at = body.windows(2).position(|w| w == b"XX").unwrap();
        body[at] = 0xff;
        assert!(matches!(parse(&body, None), Err(ManifestError::Utf8(_))));
        let mut unknown = image(OCI_MANIFEST, "x/y", r#","unknownField":"XX""#).into_bytes();
        let at = unknown.windows(2).position(|w| w == b"XX").unwrap();
        unknown[at] = 0xc3;
        assert!(matches!(parse(&unknown, None), Err(ManifestError::Utf8(_))));
    }

    #[test]
    fn media_type_grammar() {
        for good in [
            "application/vnd.oci.image.config.v1+json",
            "a/b",
            "x-y/z.w^1",
        ] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "/b",
            "a/",
            "a/b/c",
            "a /b",
            "a/b; x=y",
            "text/h\u{7f}",
            "-a/b",
        ] {
            assert!(!is_media_type(bad), "{bad}");
        }
    }
}
