#!/usr/bin/env python3
"""Cold first-pull latency: reads "TARGET URL" lines on stdin (already
interleaved by the caller), GETs each URL once on a new connection with the
OCI Accept header, and prints "TARGET p50_ms p90_ms n failures" per target.
Each URL names a manifest digest that the target has never served."""

import http.client
import statistics
import sys
import time
import urllib.parse

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json")


def get(url):
    u = urllib.parse.urlsplit(url)
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(u.netloc, timeout=30)
    c.request("GET", u.path, headers={"Accept": ACCEPT})
    r = c.getresponse()
    r.read()
    elapsed = time.perf_counter() - t0
    c.close()
    return r.status, elapsed


def main():
    samples, failures, order = {}, {}, []
    for line in sys.stdin:
        if not line.strip():
            continue
        target, url = line.split()
        if target not in samples:
            samples[target], failures[target] = [], 0
            order.append(target)
        status, elapsed = get(url)
        if status == 200:
            samples[target].append(elapsed * 1000)
        else:
            failures[target] += 1
            print(f"# {target} {url}: HTTP {status}", file=sys.stderr)
    for t in order:
        s = sorted(samples[t])
        if not s:
            print(f"{t} nan nan 0 {failures[t]}")
            continue
        p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
        print(f"{t} {statistics.median(s):.3f} {p90:.3f} {len(s)} {failures[t]}")


if __name__ == "__main__":
    main()
