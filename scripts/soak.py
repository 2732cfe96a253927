#!/usr/bin/env python3
"""The soak's images, policies and load generator (issue 17); scripts/soak.sh
runs it. Standard library only.

    soak.py setup HOST:PORT --work DIR --proxy-port P --admin-port A
        pushes the soak's images to the registry at HOST:PORT (bench/push.py),
        writes DIR/images.json (digests, blobs, which key signs which image)
        and the two proxy configurations DIR/config-p1.yaml and
        DIR/config-p2.yaml (the public keys DIR/key-{a,b,c}.pub must exist).
    soak.py run --work DIR --pid PID --admin HOST:PORT --proxy HOST:PORT --seconds N ...
        the load: CLIENTS threads, each with one keep-alive connection, mix
        manifest GETs by tag and by digest, HEADs, and blob GETs of every
        image, while a controller thread switches the live configuration
        DIR/portcullis.yaml between the two policies every few seconds
        (alternately by SIGHUP and by the file watch alone) and a sampler
        reads the proxy's VmRSS and open file descriptors every second.
        Every response is checked against the verdict the policy in force
        gives its image (status, OCI error code, and the digest of every
        byte served). Exits 0 when every check passed, 1 otherwise; writes
        the figures as JSON (--json) and as a markdown section (--report).

The policies (both REQUIRE_ATTESTATION by the attestor soak-ci):
    p1: soak-ci holds keys a and c; no allowlist
    p2: soak-ci holds keys a and b; 127.0.0.1:UP/soak/listed is allowlisted
so soak/a (signed with a) is always allowed, soak/b (b) only under p2,
soak/c (c) only under p1, soak/listed (unsigned) only under p2, and
soak/unsigned never.

The policy generations. The controller counts generations: an even
generation 2k is a stable period, policy known and acknowledged by the
proxy (/-/api/policy names its revision); an odd one is a transition, from
writing the new configuration until the proxy acknowledges it. A request
(or a manifest-then-blob pull) is judged against the one policy when it
started and ended within one stable generation; otherwise it must match
the verdict of one of the policies in force while it ran, and is counted as
a transition request. A pull whose blob is asked for after a reload that
came after its manifest is judged like that too: the proxy verifies the
image again under the new policy, so the blob must be served if that policy
admits the image.

PORTCULLIS_SOAK_FLIP=soak/a[,soak/b...] inverts the expected verdict of
those images: the run must then fail (a check that cannot fail checks
nothing).
"""

import argparse
import array
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench"))
import push  # noqa: E402  (bench/push.py: the benchmark's registry client)

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"

# repository, key that signs it (None: unsigned), allowed under p1, under p2
IMAGES = [
    ("soak/a", "a", True, True),
    ("soak/b", "b", False, True),
    ("soak/c", "c", True, False),
    ("soak/listed", None, False, True),
    ("soak/unsigned", None, False, False),
]
POLICIES = ("p1", "p2")
# Operation weights: manifest GET by tag, by digest, HEAD (tag or digest),
# blob GET (after a manifest GET, or alone for an image the policy denies).
OPS = [("get-tag", 25), ("get-digest", 25), ("head", 15), ("blob", 35)]


# ------------------------------------------------------------------ setup --

def push_image(host, repo, layers, label):
    """An image with several gzip layers and a unique config."""
    descs, diff_ids = [], []
    for text in layers:
        gz, diff_id = push.small_layer(text)
        digest, size = push.push_blob(host, repo, data=gz)
        descs.append({"mediaType": push.LAYER_GZIP, "digest": digest, "size": size})
        diff_ids.append(diff_id)
    config = {
        "created": "2024-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.title": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_digest, config_size = push.push_blob(host, repo, data=config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": push.OCI_MANIFEST,
        "config": {"mediaType": push.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descs,
    }
    digest, _ = push.push_manifest(host, repo, "v1", manifest, push.OCI_MANIFEST)
    blobs = [{"digest": config_digest, "size": config_size}] + [
        {"digest": d["digest"], "size": d["size"]} for d in descs]
    return digest, blobs


def pem(work, key):
    with open(os.path.join(work, f"key-{key}.pub")) as f:
        return f.read()


def config_text(policy, upstream, proxy_port, admin_port, work):
    """One proxy configuration, as JSON (which is YAML)."""
    keys = ("a", "c") if policy == "p1" else ("a", "b")
    rules = {
        "defaultAdmissionRule": {
            "evaluationMode": "REQUIRE_ATTESTATION",
            "enforcementMode": "ENFORCED_BLOCK_AND_AUDIT_LOG",
            "requireAttestationsBy": ["soak-ci"],
        },
    }
    if policy == "p2":
        rules["admissionWhitelistPatterns"] = [{"namePattern": f"{upstream}/soak/listed"}]
    config = {
        "listen": f"127.0.0.1:{proxy_port}",
        "upstreams": [{"registry": upstream, "url": f"http://{upstream}", "default": True}],
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        # Rotated every 16 MiB, so the soak rotates the trail too; enough
        # files kept that none is deleted (checked at the end).
        "audit": {"path": os.path.join(work, "audit.jsonl"), "fsync": "interval",
                  "fsyncInterval": "1s", "maxSizeBytes": 16 << 20, "maxFiles": 1000},
        "cache": {"tagTtl": "0s"},
        "policy": rules,
        "attestors": [{
            "name": "soak-ci",
            "publicKeys": [{"id": f"key-{k}", "pkixPublicKey": {
                "signatureAlgorithm": "ECDSA_P256_SHA256", "publicKeyPem": pem(work, k)}}
                for k in keys],
        }],
    }
    return json.dumps(config, indent=1) + "\n"


def setup(args):
    host = args.registry
    nonce = f"{time.time_ns()}-{os.getpid()}"
    images = []
    for repo, key, p1, p2 in IMAGES:
        # A small layer and a 96 KiB one (random hex, ~50 KiB gzipped), unique per image.
        layers = [f"soak {repo} {nonce}\n", os.urandom(48 << 10).hex()]
        digest, blobs = push_image(host, repo, layers, f"soak-{repo}-{nonce}")
        images.append({"repo": repo, "tag": "v1", "digest": digest, "blobs": blobs,
                       "key": key, "allowed": {"p1": p1, "p2": p2}})
    with open(os.path.join(args.work, "images.json"), "w") as f:
        json.dump({"upstream": host, "images": images}, f, indent=1)
    for policy in POLICIES:
        with open(os.path.join(args.work, f"config-{policy}.yaml"), "w") as f:
            f.write(config_text(policy, host, args.proxy_port, args.admin_port, args.work))
    for image in images:
        if image["key"]:
            print(f"{host}/{image['repo']}:{image['tag']} {image['key']}")


# ---------------------------------------------------------------- the run --

class Generations:
    """The policy generations (see the module's doc). Written by the
    controller only; read by every client (one int read under the GIL)."""

    def __init__(self, first):
        self.gen = 0
        # The policy of generation 2k, by k; during generation 2k+1 the
        # list already holds entry k+1, the policy being installed.
        self.stable = [first]

    def policies_between(self, g0, g1):
        """Every policy in force at some point of generations g0..g1."""
        return {self.stable[k] for k in range((g0 // 2), (g1 + 1) // 2 + 1)
                if k < len(self.stable)}


def admin_get(admin, path, timeout=10):
    c = http.client.HTTPConnection(admin, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path} on the admin listener: HTTP {r.status}")
        return body
    finally:
        c.close()


def revision(admin):
    return json.loads(admin_get(admin, "/-/api/policy"))["revision"]


def metrics(admin):
    """The /metrics samples, {series (name and labels): value}."""
    out = {}
    for line in admin_get(admin, "/metrics").decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(samples, name, label_filter=""):
    return sum(v for k, v in samples.items()
               if (k == name or k.startswith(name + "{")) and label_filter in k)


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


class Stats:
    """One client's counters (merged at the end: no lock on the hot path)."""

    def __init__(self):
        self.requests = 0
        self.by_op = {}
        self.by_status = {}
        self.s5xx = 0
        self.conn_errors = 0
        self.judged = 0
        self.transition = 0
        self.wrong = 0
        self.wrong_transition = 0
        self.decisions = 0
        self.allowed_served = 0
        self.denied_refused = 0
        self.bytes = 0
        self.latency = array.array("d")
        self.examples = []

    def note(self, text):
        if len(self.examples) < 10:
            self.examples.append(text)


class Client(threading.Thread):
    def __init__(self, n, run):
        super().__init__(name=f"client-{n}", daemon=True)
        self.run_ = run
        self.rnd = random.Random(run.seed * 1000 + n)
        self.stats = Stats()
        self.conn = None

    def request(self, method, path):
        """One request on the keep-alive connection: (status, headers, body),
        or None on a connection error (counted; a new connection follows)."""
        st = self.stats
        t = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.run_.proxy, timeout=30)
            self.conn.request(method, path, headers={"Accept": ACCEPT})
            r = self.conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            st.conn_errors += 1
            st.note(f"{method} {path}: connection error: {e!r}")
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None
        st.latency.append((time.monotonic() - t) * 1000)
        st.requests += 1
        st.bytes += len(body)
        st.by_status[r.status] = st.by_status.get(r.status, 0) + 1
        if r.status >= 500:
            st.s5xx += 1
            st.note(f"{method} {path}: HTTP {r.status} {body[:300]!r}")
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return r.status, r, body

    def classify(self, what, resp, want_digest, want_size=None):
        """'allow' (served, every byte checked), 'deny' (refused with the
        OCI DENIED error) or a description of what is wrong."""
        status, r, body = resp
        if status == 200:
            served = r.getheader("Docker-Content-Digest")
            if what == "head":
                return "allow" if served == want_digest else f"HEAD 200 with digest {served}"
            got = "sha256:" + hashlib.sha256(body).hexdigest()
            if got != want_digest:
                return f"200 with a body of digest {got} ({len(body)} bytes)"
            if what == "manifest" and served != want_digest:
                return f"200 with Docker-Content-Digest {served}"
            if want_size is not None and len(body) != want_size:
                return f"200 with {len(body)} bytes, not {want_size}"
            return "allow"
        if status == 403:
            if what == "head":
                return "deny"
            try:
                code = json.loads(body)["errors"][0]["code"]
            except (ValueError, KeyError, IndexError, TypeError):
                return f"403 without an OCI error body: {body[:200]!r}"
            return "deny" if code == "DENIED" else f"403 with code {code}"
        return f"HTTP {status} {body[:200]!r}"

    def judge(self, image, label, verdict, g0, g1):
        """Checks one classified response against the policies in force
        between generations g0 and g1."""
        st = self.stats
        gens = self.run_.gens
        if verdict in ("allow", "deny"):
            if verdict == "allow":
                st.allowed_served += 1
            else:
                st.denied_refused += 1
        if g0 == g1 and g0 % 2 == 0:
            st.judged += 1
            policy = gens.stable[g0 // 2]
            want = "allow" if self.run_.allowed(image, policy) else "deny"
            if verdict != want:
                st.wrong += 1
                st.note(f"{label}: {verdict}, but {policy} (generation {g0}) says {want}")
            return
        st.transition += 1
        policies = gens.policies_between(g0, g1)
        wants = {"allow" if self.run_.allowed(image, p) else "deny" for p in policies}
        if verdict in wants:
            return
        st.wrong_transition += 1
        st.note(f"{label}: {verdict} during generations {g0}..{g1}, "
                f"but {sorted(policies)} say {sorted(wants)}")

    def manifest(self, image, method, ref, g0):
        path = f"/v2/{image['repo']}/manifests/{ref}"
        resp = self.request(method, path)
        if resp is None:
            return None
        self.stats.decisions += resp[0] in (200, 403)
        verdict = self.classify("head" if method == "HEAD" else "manifest", resp, image["digest"])
        self.judge(image, f"{method} {path}", verdict, g0, self.run_.gens.gen)
        return verdict

    def op(self):
        run = self.run_
        gens = run.gens
        rnd = self.rnd
        image = rnd.choice(run.images)
        kind = rnd.choices(run.op_names, run.op_weights)[0]
        st = self.stats
        st.by_op[kind] = st.by_op.get(kind, 0) + 1
        g0 = gens.gen
        if kind == "get-tag":
            self.manifest(image, "GET", image["tag"], g0)
        elif kind == "get-digest":
            self.manifest(image, "GET", image["digest"], g0)
        elif kind == "head":
            self.manifest(image, "HEAD", rnd.choice((image["tag"], image["digest"])), g0)
        else:
            # A pull: the manifest by digest, then one of its blobs. For an
            # image the policy in force denies, half the time the blob
            # alone (a client that skips the refused manifest).
            policy = gens.stable[g0 // 2] if g0 % 2 == 0 else None
            alone = policy is not None and not run.allowed(image, policy) and rnd.random() < 0.5
            manifest_verdict = None
            if not alone:
                manifest_verdict = self.manifest(image, "GET", image["digest"], g0)
                if manifest_verdict is None:
                    return
            blob = rnd.choice(image["blobs"])
            path = f"/v2/{image['repo']}/blobs/{blob['digest']}"
            resp = self.request("GET", path)
            if resp is None:
                return
            self.stats.decisions += resp[0] == 403
            verdict = self.classify("blob", resp, blob["digest"], blob["size"])
            # Across a reload, the proxy verifies the image again: the blob
            # must match one of the policies in force while the pull ran.
            self.judge(image, f"GET {path}", verdict, g0, gens.gen)

    def run(self):
        run = self.run_
        while time.monotonic() < run.deadline and not run.abort.is_set():
            self.op()
        if self.conn is not None:
            self.conn.close()


class Run:
    def __init__(self, args):
        self.args = args
        self.proxy = args.proxy
        self.seed = args.seed
        with open(os.path.join(args.work, "images.json")) as f:
            self.images = json.load(f)["images"]
        flip = {r for r in os.environ.get("PORTCULLIS_SOAK_FLIP", "").split(",") if r}
        unknown = flip - {i["repo"] for i in self.images}
        if unknown:
            sys.exit(f"soak.py: PORTCULLIS_SOAK_FLIP names no image of the soak: {sorted(unknown)}")
        self.flipped = sorted(flip)
        self.expect = {(i["repo"], p): i["allowed"][p] != (i["repo"] in flip)
                       for i in self.images for p in POLICIES}
        self.op_names = [n for n, _ in OPS]
        self.op_weights = [w for _, w in OPS]
        self.gens = Generations("p1")
        self.abort = threading.Event()
        self.failures_setup = []
        self.samples = []  # (seconds since the load started, rss KiB, fds)
        self.reloads = []  # (trigger, seconds to acknowledge)

    def allowed(self, image, policy):
        return self.expect[(image["repo"], policy)]

    def switch(self, live, current, target, trigger, revisions):
        """Writes `target`'s configuration as the live one (atomically),
        signals the proxy when trigger is SIGHUP, and waits for the proxy
        to name its revision."""
        args = self.args
        src = os.path.join(args.work, f"config-{target}.yaml")
        tmp = live + ".tmp"
        with open(src) as f, open(tmp, "w") as g:
            g.write(f.read())
        os.replace(tmp, live)
        if trigger == "sighup":
            os.kill(args.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rev = revision(args.admin)
            if target in revisions:
                if rev == revisions[target]:
                    return
            elif rev != revisions[current]:
                revisions[target] = rev
                return
            time.sleep(0.005)
        raise RuntimeError(f"the proxy did not acknowledge {target} ({trigger}) within 15 s")

    def controller(self):
        args = self.args
        live = os.path.join(args.work, "portcullis.yaml")
        revisions = {"p1": revision(args.admin)}
        n = 0
        next_at = self.started + args.reload_every
        # No switch in the last seconds: the run ends in a stable period.
        while next_at < self.deadline - 1 and not self.abort.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            current = self.gens.stable[-1]
            target = "p2" if current == "p1" else "p1"
            trigger = "sighup" if n % 2 == 0 else "file"
            t = time.monotonic()
            # The transition's target first, then the odd generation: a
            # client that sees generation 2k+1 finds both policies.
            self.gens.stable.append(target)
            self.gens.gen += 1
            try:
                self.switch(live, current, target, trigger, revisions)
            except Exception as e:  # noqa: BLE001 (any failure ends the run)
                self.failures_setup.append(f"reload {n + 1}: {e}")
                self.abort.set()
                return
            self.gens.gen += 1
            self.reloads.append((trigger, time.monotonic() - t))
            n += 1
            next_at += args.reload_every

    def sampler(self):
        while not self.abort.is_set() and time.monotonic() < self.deadline:
            try:
                rss, fds = proc_sample(self.args.pid)
            except (OSError, StopIteration):
                self.failures_setup.append("the proxy process is gone")
                self.abort.set()
                return
            self.samples.append((time.monotonic() - self.started, rss, fds))
            time.sleep(max(0.0, 1 - (time.monotonic() - self.started) % 1))

    def audit_lines(self):
        """Lines and verdicts in the live trail and every rotated file."""
        path = os.path.join(self.args.work, "audit.jsonl")
        files = [path] + [f"{path}.{n}" for n in range(1, 1001)]
        lines, verdicts, rotated = 0, {}, 0
        for i, p in enumerate(files):
            try:
                f = open(p, "rb")
            except FileNotFoundError:
                continue
            rotated = max(rotated, i)
            with f:
                rest = b""
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    # Whole lines only, so that no verdict is cut in two.
                    data = rest + chunk
                    cut = data.rfind(b"\n") + 1
                    chunk, rest = data[:cut], data[cut:]
                    lines += chunk.count(b"\n")
                    for v in ("allow", "exempt", "deny", "dryrun-deny", "breakglass"):
                        verdicts[v] = verdicts.get(v, 0) + chunk.count(f'"verdict":"{v}"'.encode())
        return lines, verdicts, rotated


def summarize(values):
    values = sorted(values)
    if not values:
        return 0, 0, 0
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return pick(0.5), pick(0.99), values[-1]


def run(args):
    r = Run(args)
    out = {"seconds": args.seconds, "clients": args.clients, "reload_every_s": args.reload_every,
           "flipped": r.flipped}
    failures = []
    # Idle figures, before any load.
    rss0, fds0 = proc_sample(args.pid)
    m0 = metrics(args.admin)
    clients = [Client(i, r) for i in range(args.clients)]
    r.started = time.monotonic()
    r.deadline = r.started + args.seconds
    threads = [threading.Thread(target=r.controller, name="controller", daemon=True),
               threading.Thread(target=r.sampler, name="sampler", daemon=True)]
    for t in threads + clients:
        t.start()
    for c in clients:
        c.join(args.seconds + 60)
        if c.is_alive():
            failures.append(f"{c.name} still running 60 s after the end (a request hangs)")
    load_seconds = time.monotonic() - r.started
    for t in threads:
        t.join(30)
    failures += r.failures_setup

    # Merge the clients' counters.
    st = Stats()
    for c in clients:
        s = c.stats
        for k in ("requests", "s5xx", "conn_errors", "judged", "transition", "wrong",
                  "wrong_transition", "decisions", "allowed_served",
                  "denied_refused", "bytes"):
            setattr(st, k, getattr(st, k) + getattr(s, k))
        for k, v in s.by_op.items():
            st.by_op[k] = st.by_op.get(k, 0) + v
        for k, v in s.by_status.items():
            st.by_status[k] = st.by_status.get(k, 0) + v
        st.latency.extend(s.latency)
        for e in s.examples:
            st.note(e)

    # The audit trail catches up (fsync interval 1 s): wait until the
    # writer has written every decision and the files hold every line.
    decisions = written = lines = 0
    verdicts, rotated = {}, 0
    m1 = {}
    wait_until = time.monotonic() + 15
    while True:
        m1 = metrics(args.admin)
        decisions = metric_sum(m1, "portcullis_decisions_total")
        written = metric_sum(m1, "portcullis_audit_records_written_total")
        lines, verdicts, rotated = r.audit_lines()
        if (decisions == written == lines) or time.monotonic() > wait_until:
            break
        time.sleep(0.5)
    rss_after, fds_after = proc_sample(args.pid)

    p50, p99, pmax = summarize(st.latency)
    out.update({
        "load_seconds": round(load_seconds, 1),
        "requests": st.requests,
        "requests_per_s": round(st.requests / load_seconds, 1),
        "operations": st.by_op,
        "status": {str(k): v for k, v in sorted(st.by_status.items())},
        "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(pmax, 1)},
        "bytes_served": st.bytes,
        "served_and_checked": st.allowed_served,
        "refused_and_checked": st.denied_refused,
        "responses_5xx": st.s5xx,
        "connection_errors": st.conn_errors,
        "judged": st.judged,
        "transition_requests": st.transition,
        "wrong_verdicts": st.wrong,
        "wrong_verdicts_in_transitions": st.wrong_transition,
        "examples": st.examples,
    })
    by_trigger = {}
    for trigger, took in r.reloads:
        by_trigger.setdefault(trigger, []).append(took)
    out["transitions"] = len(r.reloads)
    out["transition_ack_ms"] = {
        t: {"count": len(v), "median": round(statistics.median(v) * 1000, 1),
            "max": round(max(v) * 1000, 1)} for t, v in sorted(by_trigger.items())}
    reloads_ok = metric_sum(m1, "portcullis_policy_reloads_total", 'result="success"') - \
        metric_sum(m0, "portcullis_policy_reloads_total", 'result="success"')
    reloads_failed = metric_sum(m1, "portcullis_policy_reloads_total", 'result="failure"')
    out["proxy_reloads"] = {"success": int(reloads_ok), "failure": int(reloads_failed)}
    proxy_5xx = sum(v for k, v in m1.items()
                    if k.startswith("portcullis_requests_total{") and 'status="5' in k)
    out["proxy_5xx"] = int(proxy_5xx)
    out["audit"] = {"lines": lines, "decisions": int(decisions), "records_written": int(written),
                    "decisions_seen_by_clients": st.decisions,
                    "dropped": int(metric_sum(m1, "portcullis_audit_records_dropped_total")),
                    "write_errors": int(metric_sum(m1, "portcullis_audit_write_errors_total")),
                    "rotated_files": rotated,
                    "lines_by_verdict": verdicts,
                    "decisions_by_verdict": {
                        v: int(metric_sum(m1, "portcullis_decisions_total", f'verdict="{v}"'))
                        for v in verdicts}}

    # Memory and descriptors: idle before the load, "start" after the
    # warm-up (caches filled, connections open), "end" over the last
    # seconds of the load, the peak of every sample, idle after.
    warm = min(max(10.0, args.seconds * 0.1), args.seconds / 3)
    samples = r.samples
    start = [s for s in samples if warm <= s[0] < warm + 5] or samples[:1]
    end = [s for s in samples if s[0] >= args.seconds - 5] or samples[-1:]
    med = lambda xs, i: statistics.median(x[i] for x in xs) if xs else 0  # noqa: E731
    if samples:
        rss = {"idle_before": rss0, "start": med(start, 1), "end": med(end, 1),
               "peak": max(s[1] for s in samples), "idle_after": rss_after}
        fds = {"idle_before": fds0, "start": med(start, 2), "end": med(end, 2),
               "peak": max(s[2] for s in samples), "idle_after": fds_after}
    else:
        rss = fds = {}
        failures.append("no RSS or descriptor sample was taken")
    # Eleven points across the run, to see the curve and not only its ends.
    step = max(1.0, args.seconds / 10)
    points, next_t = [], 0.0
    for t, kib, n in samples:
        if t >= next_t:
            points.append((round(t), round(kib / 1024, 1), n))
            next_t += step
    out["series"] = points
    out["warmup_s"] = warm
    out["rss_kib"] = rss
    out["fds"] = fds
    out["samples"] = len(samples)
    out["rss_tolerance_mib"] = args.rss_tolerance_mib
    out["fd_tolerance"] = args.fd_tolerance

    # The verdict.
    if st.s5xx or proxy_5xx:
        failures.append(f"5xx responses: {st.s5xx} seen by the clients, {int(proxy_5xx)} counted by the proxy")
    if st.conn_errors:
        failures.append(f"{st.conn_errors} connection errors")
    if st.wrong:
        failures.append(f"{st.wrong} wrong verdicts within a stable policy generation")
    if st.wrong_transition:
        failures.append(f"{st.wrong_transition} responses during a reload that match neither policy")
    if not (lines == decisions == written == st.decisions):
        failures.append(f"audit lines {lines}, decisions counted {int(decisions)}, records written "
                        f"{int(written)}, decisions the clients saw {st.decisions}: not all equal")
    if out["audit"]["dropped"] or out["audit"]["write_errors"]:
        failures.append("audit records dropped or failed to write")
    if rotated >= 1000:
        failures.append("the audit trail rotated past maxFiles: lines may have been deleted")
    for v, n in verdicts.items():
        if n != out["audit"]["decisions_by_verdict"][v]:
            failures.append(f"audit lines with verdict {v}: {n}, decisions counted: "
                            f"{out['audit']['decisions_by_verdict'][v]}")
    if reloads_failed:
        failures.append(f"{int(reloads_failed)} policy reloads failed")
    if reloads_ok < len(r.reloads):
        failures.append(f"{len(r.reloads)} switches but {int(reloads_ok)} successful reloads")
    if not r.reloads and args.seconds >= 2 * args.reload_every:
        failures.append("no policy switch happened")
    if st.judged == 0:
        failures.append("no request was judged")
    if rss and rss["end"] > rss["start"] + args.rss_tolerance_mib * 1024:
        failures.append(f"RSS grew from {rss['start']} KiB to {rss['end']} KiB "
                        f"(tolerance {args.rss_tolerance_mib} MiB)")
    if fds and fds["end"] > fds["start"] + args.fd_tolerance:
        failures.append(f"open descriptors grew from {fds['start']} to {fds['end']} "
                        f"(tolerance {args.fd_tolerance})")
    out["failures"] = failures
    out["passed"] = not failures

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    report = markdown(out, args)
    if args.report:
        with open(args.report, "w") as f:
            f.write(report)
    print(report)
    return 0 if not failures else 1


def markdown(o, args):
    mib = lambda k: f"{k / 1024:.1f}"  # noqa: E731
    rss, fds, a = o["rss_kib"], o["fds"], o["audit"]
    acks = "; ".join(f"{t}: {v['count']}, median {v['median']} ms, max {v['max']} ms"
                     for t, v in o["transition_ack_ms"].items()) or "none"
    lines = [
        f"Result: **{'PASSED' if o['passed'] else 'FAILED'}**" +
        (f" (expectations flipped for {', '.join(o['flipped'])})" if o["flipped"] else ""),
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| duration, clients | {o['load_seconds']} s, {o['clients']} |",
        f"| requests (requests/s) | {o['requests']:,} ({o['requests_per_s']:,}) |",
        f"| operations | {', '.join(f'{k} {v:,}' for k, v in sorted(o['operations'].items()))} |",
        f"| statuses | {', '.join(f'{k}: {v:,}' for k, v in o['status'].items())} |",
        f"| latency p50 / p99 / max | {o['latency_ms']['p50']} / {o['latency_ms']['p99']} / {o['latency_ms']['max']} ms |",
        f"| served and checked (digest of every byte) / refused with DENIED | {o['served_and_checked']:,} / {o['refused_and_checked']:,} |",
        f"| 5xx (clients / proxy's count), connection errors | {o['responses_5xx']} / {o['proxy_5xx']}, {o['connection_errors']} |",
        f"| policy switches (proxy reloads ok / failed) | {o['transitions']} ({o['proxy_reloads']['success']} / {o['proxy_reloads']['failure']}) |",
        f"| reload acknowledged after | {acks} |",
        f"| judged within one policy generation: wrong verdicts | {o['judged']:,}: **{o['wrong_verdicts']}** |",
        f"| during a switch: matching neither policy | {o['transition_requests']:,}: **{o['wrong_verdicts_in_transitions']}** |",
        f"| audit lines / decisions (metrics) / records written / decisions seen by clients | {a['lines']:,} / {a['decisions']:,} / {a['records_written']:,} / {a['decisions_seen_by_clients']:,} |",
        f"| audit files rotated, dropped, write errors | {a['rotated_files']}, {a['dropped']}, {a['write_errors']} |",
    ]
    if rss:
        lines += [
            f"| RSS MiB: idle before / start / end / peak / idle after | {mib(rss['idle_before'])} / {mib(rss['start'])} / {mib(rss['end'])} / {mib(rss['peak'])} / {mib(rss['idle_after'])} (end ≤ start + {o['rss_tolerance_mib']} MiB) |",
            f"| open fds: idle before / start / end / peak / idle after | {fds['idle_before']} / {fds['start']:g} / {fds['end']:g} / {fds['peak']} / {fds['idle_after']} (end ≤ start + {o['fd_tolerance']}) |",
        ]
        lines.append("| RSS MiB / open fds over the run | " + ", ".join(
            f"{t} s: {m} / {n}" for t, m, n in o["series"]) + " |")
    lines.append("")
    lines.append(f"\"start\" is the median of the samples {o['warmup_s']:.1f}–{o['warmup_s'] + 5:.1f} s into the load "
                 f"(after the warm-up), \"end\" of its last 5 s; {o['samples']} samples, one a second.")
    if o["failures"]:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in o["failures"]]
    if o["examples"]:
        lines += ["", "First problems seen:", ""] + [f"- `{e[:300]}`" for e in o["examples"]]
    return "\n".join(lines) + "\n"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("registry")
    s.add_argument("--work", required=True)
    s.add_argument("--proxy-port", required=True, type=int)
    s.add_argument("--admin-port", required=True, type=int)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--pid", required=True, type=int)
    r.add_argument("--proxy", required=True)
    r.add_argument("--admin", required=True)
    r.add_argument("--seconds", type=float, default=600)
    r.add_argument("--clients", type=int, default=64)
    r.add_argument("--reload-every", type=float, default=3)
    r.add_argument("--rss-tolerance-mib", type=float, default=16)
    r.add_argument("--fd-tolerance", type=int, default=16)
    r.add_argument("--seed", type=int, default=17)
    r.add_argument("--json")
    r.add_argument("--report")
    args = p.parse_args(argv)
    socket.setdefaulttimeout(60)
    if args.cmd == "setup":
        setup(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
