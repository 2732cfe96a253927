#!/usr/bin/env python3
"""Blob gating across a fleet (issue 13): the first GET of a blob on a
replica that did not admit its image, which asks Redis (one GET round trip)
before serving it.

    blobgate.py REPO ADMIT_URL OTHER_URL DIRECT_URL CONTROL_DIGEST [REDIS_HOST:PORT]
        < "tag digest" lines

For each never-seen signed image on stdin: GET its manifest by digest through
ADMIT_URL on a new connection, as bench/cold.py does (replica a verifies,
writes the admitted blobs and the verdict to Redis; timed as "admit"). Then
GET its config blob (small and unique to the image, so this measures the
gate, not the transfer) once through each of OTHER_URL (replica b: not
admitted there, one Redis lookup), ADMIT_URL (admitted in process) and
DIRECT_URL (the registry), in a rotating order. Blob GETs go over kept-alive
connections, opened and warmed before, so their times are the request's
alone. Last, the config blob of CONTROL_DIGEST, an image no replica
admitted, through OTHER_URL: it must be refused.

Prints "admit pc-fleet P50 P90 N FAILURES", "blob TARGET P50 P90 N FAILURES"
(targets pc-fleet-b, pc-fleet, direct), "delta pc-fleet-b P50 P90 N 0" (per
image, replica b's blob time minus replica a's: the lookup's cost with the
run's drift paired out) and "control pc-fleet-b HTTP_STATUS"; with
REDIS_HOST:PORT also "rtt redis P50 P90 N 0": a bare Redis GET round trip
from this client, for scale.
"""

import http.client
import json
import socket
import statistics
import sys
import time
import urllib.parse

from cold import ACCEPT


class Target:
    def __init__(self, url):
        self.netloc = urllib.parse.urlsplit(url).netloc
        self.conn = None

    def get(self, path, accept=ACCEPT, new_connection=False):
        """(status, body, ms); with new_connection the connect is timed too."""
        if new_connection and self.conn is not None:
            self.conn.close()
            self.conn = None
        for attempt in (0, 1):
            t0 = time.perf_counter()
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.netloc, timeout=30)
                self.conn.connect()
            if not new_connection:
                t0 = time.perf_counter()
            try:
                self.conn.request("GET", path, headers={"Accept": accept})
                r = self.conn.getresponse()
                body = r.read()
            except (http.client.HTTPException, OSError):
                # The server closed a kept-alive connection: once more on a
                # new one (its connect is not timed).
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - t0
            if r.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return r.status, body, elapsed * 1000
        raise AssertionError("unreachable")


def summary(samples):
    s = sorted(samples)
    if not s:
        return "nan nan 0"
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return f"{statistics.median(s):.3f} {p90:.3f} {len(s)}"


def redis_rtt(addr, n=200):
    """Times of a GET of a missing key on a kept-alive connection (ms)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = b"portcullis-bench:none"
    cmd = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    times = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        s.sendall(cmd)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise OSError("redis closed the connection")
            reply += chunk
        if reply != b"$-1\r\n":
            raise OSError(f"unexpected redis reply {reply!r}")
        if i >= 20:  # the first ones warm up
            times.append((time.perf_counter() - t0) * 1000)
    s.close()
    return times


def config_of(manifest_bytes):
    return json.loads(manifest_bytes)["config"]["digest"]


def main(argv):
    if len(argv) not in (5, 6):
        sys.exit(__doc__)
    repo, admit_url, other_url, direct_url, control = argv[:5]
    admit, other, direct = Target(admit_url), Target(other_url), Target(direct_url)
    blob_targets = [("pc-fleet-b", other), ("pc-fleet", admit), ("direct", direct)]
    for t in (admit, other, direct):
        t.get("/v2/")
    admits, admit_fail = [], 0
    samples = {name: [] for name, _ in blob_targets}
    deltas = []  # per image: replica b's time minus replica a's
    failures = {name: 0 for name, _ in blob_targets}
    images = [line.split() for line in sys.stdin if line.strip()]
    for i, (_tag, digest) in enumerate(images):
        status, body, ms = admit.get(f"/v2/{repo}/manifests/{digest}", new_connection=True)
        if status != 200:
            admit_fail += 1
            print(f"# admit {digest} through pc-fleet: HTTP {status}", file=sys.stderr)
            continue
        admits.append(ms)
        blob = config_of(body)
        k = i % len(blob_targets)
        times = {}
        for name, t in blob_targets[k:] + blob_targets[:k]:
            status, _, ms = t.get(f"/v2/{repo}/blobs/{blob}", accept="*/*")
            if status == 200:
                samples[name].append(ms)
                times[name] = ms
            else:
                failures[name] += 1
                print(f"# blob {blob} of {digest} through {name}: HTTP {status}", file=sys.stderr)
        if "pc-fleet-b" in times and "pc-fleet" in times:
            deltas.append(times["pc-fleet-b"] - times["pc-fleet"])
    print(f"admit pc-fleet {summary(admits)} {admit_fail}")
    for name, _ in blob_targets:
        print(f"blob {name} {summary(samples[name])} {failures[name]}")
    print(f"delta pc-fleet-b {summary(deltas)} 0")
    status, body, _ = direct.get(f"/v2/{repo}/manifests/{control}")
    if status != 200:
        sys.exit(f"blobgate.py: control manifest {control}: HTTP {status}")
    status, _, _ = other.get(f"/v2/{repo}/blobs/{config_of(body)}", accept="*/*")
    print(f"control pc-fleet-b {status}")
    if len(argv) == 6:
        print(f"rtt redis {summary(redis_rtt(argv[5]))} 0")


if __name__ == "__main__":
    main(sys.argv[1:])
