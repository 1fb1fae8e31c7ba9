#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/corpus/:
real manifests (the shapes tests/conformance and the CNB lifecycle push),
real paths, Range/Content-Range headers, digests, names, tags, tokens and
config files (`python3 fuzz/seeds/make.py [TARGET...]`). A fuzz run grows
the corpus and `scripts/fuzz --cmin` minimises it, then writes these again.
The request target has no hand-made seeds: its input is a structure built
from real parts (paths, repositories, media types, manifests, blobs)."""
import hashlib, json, os, struct, sys, base64, hmac

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
only = sys.argv[1:]  # targets to write seeds for (default: all)

def put(target, name, data):
    if only and target not in only:
        return
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()
def sha512(b): return "sha512:" + hashlib.sha512(b).hexdigest()

OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
D_M = "application/vnd.docker.distribution.manifest.v2+json"
D_L = "application/vnd.docker.distribution.manifest.list.v2+json"
cfg, layer = b"{}", b"layer one"
desc = lambda mt, b: {"mediaType": mt, "digest": sha(b), "size": len(b)}
image = {"schemaVersion": 2, "mediaType": OCI_M,
         "config": desc("application/vnd.oci.image.config.v1+json", cfg),
         "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)]}
ib = json.dumps(image).encode()
manifests = {
    "oci-image": (image, 0),
    "docker-image": ({"schemaVersion": 2, "mediaType": D_M,
                      "config": desc("application/vnd.docker.container.image.v1+json", cfg),
                      "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)]}, 0),
    # What the CNB lifecycle pushes: Docker layer types inside an OCI manifest.
    "cnb-mixed": ({"schemaVersion": 2, "mediaType": OCI_M,
                   "config": desc("application/vnd.oci.image.config.v1+json", cfg),
                   "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)],
                   "annotations": {"io.buildpacks.lifecycle.metadata": "{}"}}, 0),
    "oci-index": ({"schemaVersion": 2, "mediaType": OCI_I,
                   "manifests": [dict(desc(OCI_M, ib), platform={"architecture": "amd64", "os": "linux"})]}, 0),
    "docker-list": ({"schemaVersion": 2, "mediaType": D_L, "manifests": [desc(D_M, ib)]}, 0),
    "artifact-subject": ({"schemaVersion": 2, "mediaType": OCI_M,
                          "artifactType": "application/vnd.example.sbom+json",
                          "config": desc("application/vnd.oci.empty.v1+json", cfg),
                          "layers": [desc("application/vnd.example.sbom+json", layer)],
                          "subject": desc(OCI_M, ib),
                          "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}, 0),
    "foreign-layer": ({"schemaVersion": 2, "mediaType": D_M,
                       "config": desc("application/vnd.docker.container.image.v1+json", cfg),
                       "layers": [dict(desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", layer),
                                       urls=["https://example.invalid/layer"])]}, 0),
    "no-media-type": ({"schemaVersion": 2, "config": desc("application/vnd.oci.image.config.v1+json", cfg),
                       "layers": []}, 0),
    "schema1": ({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}, 0),
    "html": ({"schemaVersion": 2, "mediaType": "text/html",
              "config": desc("application/vnd.oci.image.config.v1+json", cfg), "layers": []}, 0),
}
for name, (m, sel) in manifests.items():
    body = json.dumps(m).encode()
    put("manifest", name, bytes([sel]) + body)          # no Content-Type
    put("manifest", name + "-ct", bytes([1]) + body)    # Content-Type: OCI manifest
put("manifest", "sha512-config", bytes([0]) + json.dumps(
    dict(image, config={"mediaType": "a/b", "digest": sha512(cfg), "size": 2})).encode())
put("manifest", "control-char", bytes([0]) + json.dumps(dict(image, mediaType=OCI_M + "\u0001")).encode())

paths = ["/v2/", "/v2", "/v2/_catalog?n=10&last=a", "/v2/tool-a/web/tags/list?n=2&last=v1",
         "/v2/tool-a/web/manifests/latest", "/v2/tool-a/web/manifests/" + sha(ib),
         "/v2/tool-a/web/blobs/" + sha(layer), "/v2/tool-a/web/blobs/uploads/",
         "/v2/tool-a/web/blobs/uploads/?digest=" + sha(layer),
         "/v2/tool-b/app/blobs/uploads/?mount=" + sha(layer) + "&from=tool-a/web",
         "/v2/tool-a/web/blobs/uploads/0b7e0cde-1b2a-4d1e-9a9f-3c2d1e0f9a8b?digest=" + sha(layer),
         "/v2/tool-a/web/referrers/" + sha(ib) + "?artifactType=application%2Fvnd.example.sbom%2Bjson",
         "/v2/manifests/manifests/v1", "/v2/a/b/c/d/e/f/blobs/" + sha512(b"x"),
         "/v2/../etc/manifests/latest", "/v2/a%2Fb/manifests/latest",
         "/token?service=berth&scope=repository:tool-a/web:pull,push&scope=registry:catalog:*",
         "/healthz", "/metrics", "/admin/v1/namespaces/tool-a/credentials", "/admin/v1/quotas?over_percent=80",
         "/admin/v1/quotas/tool-a", "/admin/v1/quotas/_reconcile", "/admin/v1/gc/untagged?dry_run=true",
         "/admin/v1/gc/runs?limit=5", "/admin/v1/pins", "/admin/v1/pins/1", "/admin/v1/retention",
         "/admin/v1/retention/tool-a", "/admin/v2/x", "/v1/tool/a/quotas", "/v1/tool/a/builds",
         "/v1/tool/a/builds/latest", "/v1/tool/a/builds/a-buildpacks-abc123/logs?follow=true",
         "/v1/tool/a/builds/a-buildpacks-abc123/cancel", "/v1/tool/a/clean", "/v1/tool/A/clean",
         "/admin/v1/tokens?namespace=tool-a&n=10&last=0123456789abcdef", "/admin/v1/tokens/0123456789abcdef",
         "/v1/namespaces/toolforge/tokens", "/v1/namespaces/tool-a/tokens/0123456789abcdef"]
for i, p in enumerate(paths):
    put("route", "%02d" % i, p)

def size(n):  # the range target's size selector: raw % 4 == 3 takes raw as the size
    raw = (n << 2) | 3
    return struct.pack("<Q", raw & 0xFFFFFFFFFFFFFFFF)
for i, (n, text) in enumerate([(100, "bytes=0-9"), (100, "bytes=90-"), (100, "bytes=-10"),
                               (3000, "bytes=0-0"), (0, "bytes=0-0"), (100, "bytes=0-1,5-6"),
                               (100, "bytes 0-9/100"), (100, "0-18446744073709551615"),
                               (100, "bytes=18446744073709551615-"), (100, " bytes = 1 - 2 ")]):
    put("range", "%02d" % i, size(n) + text.encode())

for i, s in enumerate([sha(b""), sha512(b""), "sha256:" + "A" * 64, "sha384:" + "a" * 96,
                       "tool-a/web", "tool-a//web", "a__b/c--d/e.f", "a___b", "-a", "a" * 256,
                       "latest", "_x", "a" * 129, ".hidden", "v1.0-rc_1"]):
    put("digest", "%02d" % i, s)

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=")
def jwt(claims, key=b"fuzz token key", alg="HS256"):
    m = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    return m + b"." + b64(hmac.new(key, m, hashlib.sha256).digest())
import time
claims = {"iss": "berth", "sub": "tool-a", "aud": "berth", "exp": 4102444800, "nbf": 0, "iat": 0,
          "jti": "x", "access": [{"type": "repository", "name": "tool-a/web", "actions": ["pull", "push"]}]}
# Input::Raw is variant 0: four zero bytes, then the string.
put("token", "valid", b"\0\0\0\0" + jwt(claims))
put("token", "expired", b"\0\0\0\0" + jwt(dict(claims, exp=1)))
put("token", "wrong-key", b"\0\0\0\0" + jwt(claims, key=b"other"))
put("token", "alg-none", b"\0\0\0\0" + b64(b'{"alg":"none"}') + b"." + b64(json.dumps(claims).encode()) + b".")
put("token", "garbage", b"\0\0\0\0not.a.token")

example = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config.example.toml")).read()
put("config", "example", example)
put("config", "small", '[server]\nlisten = "0.0.0.0:5000"\nshutdown_grace = "90s"\n[quota]\ndefault_limit = "unlimited"\n'
    '[limits]\nmax_connections = 1\nbody_min_rate = "1KiB"\nmax_header_bytes = 8192\n'
    '[builds]\nrun_image = "toolforge/run:latest"\nsource_schemes = ["HTTPS"]\n[gc.retention]\nkeep_pattern = "^v"\nmax_age = "30d"\n')
