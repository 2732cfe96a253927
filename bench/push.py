#!/usr/bin/env python3
"""Pushes the benchmark's content to a distribution registry (standard library only).

    push.py setup HOST:PORT --big-mib N --work DIR    -> JSON on stdout
        demo/app:v1    a small image (one gzip layer)
        demo/multi:v1  a multi-arch index (linux/amd64 + linux/arm64)
        demo/big:v1    an image with one uncompressed tar layer of N MiB
    push.py fresh HOST:PORT REPO PREFIX COUNT          -> "tag digest" lines
        COUNT small images never seen before (unique config each), tagged
        PREFIX0..PREFIX{COUNT-1}, for cold first-pull measurements.
    push.py sigs HOST:PORT REPO < JSON lines
        pushes the keyless .sig manifests `keyless-sign sign` printed (its
        config and payload blobs, then the manifest under sha256-<hex>.sig)
"""

import gzip
import hashlib
import http.client
import io
import json
import os
import sys
import tarfile
import time
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def conn(host):
    return http.client.HTTPConnection(host, timeout=120, blocksize=1 << 20)


def request(host, method, path, body=None, headers=None):
    c = conn(host)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data


def push_blob(host, repo, data=None, path=None, digest=None, size=None):
    """Monolithic upload: POST an upload session, PUT the bytes with ?digest=."""
    if data is not None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        size = len(data)
    r, _ = request(host, "HEAD", f"/v2/{repo}/blobs/{digest}")
    if r.status == 200:
        return digest, size
    r, body = request(host, "POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    if r.status != 202:
        sys.exit(f"push.py: POST upload for {repo}: HTTP {r.status} {body[:200]!r}")
    location = r.getheader("Location")
    u = urllib.parse.urlsplit(location)
    target = (u.path or location) + "?" + (u.query + "&" if u.query else "") + "digest=" + digest
    c = conn(host)
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    if data is not None:
        c.request("PUT", target, body=data, headers=headers)
    else:
        with open(path, "rb") as f:
            c.request("PUT", target, body=f, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 201:
        sys.exit(f"push.py: PUT blob {digest} to {repo}: HTTP {r.status} {body[:200]!r}")
    return digest, size


def push_manifest(host, repo, ref, manifest, media_type):
    data = json.dumps(manifest, separators=(",", ":")).encode()
    r, body = request(host, "PUT", f"/v2/{repo}/manifests/{ref}", data,
                      {"Content-Type": media_type, "Content-Length": str(len(data))})
    if r.status != 201:
        sys.exit(f"push.py: PUT manifest {repo}:{ref}: HTTP {r.status} {body[:200]!r}")
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def small_layer(text):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as t:
        payload = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        info.mtime = 1704067200
        t.addfile(info, io.BytesIO(payload))
    raw = tar_bytes.getvalue()
    gz = gzip.compress(raw, mtime=0)
    return gz, "sha256:" + hashlib.sha256(raw).hexdigest()


def push_image(host, repo, ref, layer, layer_media, diff_id, arch="amd64", label="bench"):
    layer_digest, layer_size = layer
    config = {
        "created": "2024-01-01T00:00:00Z", "architecture": arch, "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.title": label}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_digest, config_size = push_blob(host, repo, data=config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer_media, "digest": layer_digest, "size": layer_size}],
    }
    digest, size = push_manifest(host, repo, ref, manifest, OCI_MANIFEST)
    return digest, size


def big_tar(path, mib):
    """An uncompressed tar with one file of `mib` MiB of random bytes."""
    size = mib << 20
    h = hashlib.sha256()
    info = tarfile.TarInfo("data.bin")
    info.size = size
    info.mtime = 1704067200
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    with open(path, "wb") as f:
        def put(b):
            h.update(b)
            f.write(b)
        put(header)
        left = size
        while left:
            n = min(left, 1 << 20)
            put(os.urandom(n))
            left -= n
        pad = (-size) % 512
        put(b"\0" * (pad + 1024))
    total = os.path.getsize(path)
    return "sha256:" + h.hexdigest(), total


def setup(host, big_mib, work):
    out = {}
    gz, diff_id = small_layer("hello from the portcullis benchmark\n")
    layer = push_blob(host, "demo/app", data=gz)
    out["app_digest"], out["app_size"] = push_image(host, "demo/app", "v1", layer, LAYER_GZIP, diff_id)
    out["app_layer"] = layer[0]

    children = []
    for arch in ("amd64", "arm64"):
        gz, diff_id = small_layer(f"hello from {arch}\n")
        layer = push_blob(host, "demo/multi", data=gz)
        d, s = push_image(host, "demo/multi", f"v1-{arch}", layer, LAYER_GZIP, diff_id, arch=arch)
        children.append({"mediaType": OCI_MANIFEST, "digest": d, "size": s,
                         "platform": {"architecture": arch, "os": "linux"}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    out["multi_digest"], _ = push_manifest(host, "demo/multi", "v1", index, OCI_INDEX)

    t0 = time.time()
    path = os.path.join(work, "big-layer.tar")
    digest, size = big_tar(path, big_mib)
    layer = push_blob(host, "demo/big", path=path, digest=digest, size=size)
    os.unlink(path)
    out["big_digest"], _ = push_image(host, "demo/big", "v1", layer, LAYER_TAR, digest)
    out["big_layer"], out["big_layer_size"] = layer
    out["big_push_seconds"] = round(time.time() - t0, 2)
    json.dump(out, sys.stdout)
    print()


def fresh(host, repo, prefix, count):
    gz, diff_id = small_layer("cold\n")
    layer = push_blob(host, repo, data=gz)
    nonce = f"{time.time_ns()}-{os.getpid()}"
    for i in range(count):
        tag = f"{prefix}{i}"
        d, _ = push_image(host, repo, tag, layer, LAYER_GZIP, diff_id, label=f"{nonce}-{tag}")
        print(tag, d)


def sigs(host, repo):
    import base64
    for line in sys.stdin:
        if not line.strip():
            continue
        sig = json.loads(line)
        push_blob(host, repo, data=base64.b64decode(sig["config"]))
        push_blob(host, repo, data=base64.b64decode(sig["payload"]))
        tag = sig["digest"].replace(":", "-", 1) + ".sig"
        push_manifest(host, repo, tag, sig["manifest"], OCI_MANIFEST)


def main(argv):
    if len(argv) >= 2 and argv[0] == "setup":
        host = argv[1]
        big_mib = int(argv[argv.index("--big-mib") + 1])
        work = argv[argv.index("--work") + 1]
        setup(host, big_mib, work)
    elif len(argv) == 5 and argv[0] == "fresh":
        fresh(argv[1], argv[2], argv[3], int(argv[4]))
    elif len(argv) == 3 and argv[0] == "sigs":
        sigs(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
