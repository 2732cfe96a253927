#!/usr/bin/env python3
"""Turns bench/run.sh's raw measurements (section, case, target, metric,
value; one row per repetition) into the Markdown report: medians over the
repetitions, ratios to the direct registry and to the nginx hop, and the
issue-6 targets checked against this run (with issue 13's Redis target and
issue 14's content-cache targets, those next to distribution's proxy
mode)."""

import math
import statistics
import sys
from collections import defaultdict


def load(raw_path):
    data = defaultdict(list)
    for line in open(raw_path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 5:
            continue
        section, case, target, metric, value = parts
        try:
            data[(section, case, target, metric)].append(float(value))
        except ValueError:
            pass
    return data


RAW = load(sys.argv[1])
META = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]) if "=" in l)


def med(section, case, target, metric):
    v = RAW.get((section, case, target, metric))
    return statistics.median(v) if v else None


def reps(section, case, target, metric):
    return len(RAW.get((section, case, target, metric), []))


def f(x, digits=None):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if digits is None:
        a = abs(x)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def rx(x):
    return "–" if x is None else f"{x:.2f}×"


def cases(section):
    seen = []
    for (s, c, _, _) in RAW:
        if s == section and c not in seen:
            seen.append(c)
    return seen


def targets(section, case):
    order = ["direct", "distproxy", "nginx", "static", "pc-allow", "pc-require", "pc-cache", "pc-fleet", "pc-fleet-b",
             "pc-require-ttl", "pc-keyless", "distproxy-cold", "pc-cache-cold", "direct-sig", "openssl", "criterion"]
    present = {t for (s, c, t, _) in RAW if s == section and c == case}
    return [t for t in order if t in present] + sorted(present - set(order))


NAMES = {
    "direct": "direct registry (distribution 2.8)",
    "distproxy": "distribution proxy mode (warm)",
    "nginx": "nginx reverse proxy hop",
    "static": "nginx `return 200` (HTTP floor)",
    "pc-allow": "**Portcullis** ALWAYS_ALLOW",
    "pc-require": "**Portcullis** REQUIRE_ATTESTATION",
    "pc-require-ttl": "**Portcullis** REQUIRE_ATTESTATION, tagTtl 5s",
    "pc-keyless": "**Portcullis** REQUIRE_ATTESTATION, keyless attestor (Fulcio chain, SCT, Rekor SET, identity)",
    "pc-fleet": "**Portcullis** REQUIRE_ATTESTATION, state.redis (replica a)",
    "pc-fleet-b": "**Portcullis** REQUIRE_ATTESTATION, state.redis (replica b)",
    "pc-cache": "**Portcullis** REQUIRE_ATTESTATION, cache.content (stored: served from disk)",
    "pc-cache-cold": "**Portcullis** REQUIRE_ATTESTATION, cache.content, empty store (first pull)",
    "distproxy-cold": "distribution proxy mode, empty storage (first pull)",
    "redis": "redis-server",
    "direct-sig": "direct registry, the image's `.sig` manifest (one more round trip, for scale)",
}

out = []
p = out.append
p(f"# Portcullis benchmark — {META.get('mode')} run, {META.get('date')}")
p("")
p(f"Machine: {META.get('nproc')} CPUs ({META.get('cpu')}), {META.get('memory')}, {META.get('kernel')}; "
  f"load average at start {META.get('load_start')}, at end {META.get('load_end')}. "
  f"Servers on CPUs {META.get('server_cpus')}, load generators/clients pinned to CPU {META.get('client_cpus')}. "
  f"Commit {META.get('commit')}; {META.get('versions')}. "
  f"{META.get('reps')} repetition(s), interleaved across targets, medians shown; "
  f"{META.get('duration_s')} s per load run; run took {META.get('elapsed')}.")
p("")
p("Everything on 127.0.0.1 over plain HTTP/1.1. The upstream is CNCF distribution with filesystem storage "
  "(log level warn, access log off); nginx has `access_log off`, `proxy_buffering off` and upstream keepalive; "
  "Portcullis runs with its default logging; its two fleet replicas (`pc-fleet`, `pc-fleet-b`) share state "
  "through a local redis-server without persistence. Ratios are to the direct registry and to the nginx hop in the "
  "same run. CPU per request is the server process's utime+stime (all threads; nginx: master+worker) over "
  "the run divided by the requests served; for proxies the upstream registry's CPU per request is shown "
  "separately.")
p("")

# 1. manifests
p("## 1. Manifest GET, warm (wrk, OCI Accept)")
p("")
p("| case | server | req/s | ×direct | ×nginx | ×floor | p50 ms | p99 ms | CPU µs/req | CPU ×direct | upstream CPU µs/req | errors |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for case in cases("manifest"):
    kind, conc = case.split()
    d_rps = med("manifest", case, "direct", "rps")
    n_rps = med("manifest", case, "nginx", "rps")
    floor = med("manifest", f"digest {conc}", "static", "rps")
    d_cpu = med("manifest", case, "direct", "cpu_us_per_req")
    for t in targets("manifest", case):
        rps = med("manifest", case, t, "rps")
        cpu = med("manifest", case, t, "cpu_us_per_req")
        show_ratio = t not in ("static",)
        p(f"| by {kind}, {conc.replace('c', 'c=')} | {NAMES.get(t, t)} | {f(rps, 0)} | "
          f"{rx(ratio(rps, d_rps)) if show_ratio else '–'} | {rx(ratio(rps, n_rps)) if show_ratio else '–'} | "
          f"{rx(ratio(rps, floor))} | {f(med('manifest', case, t, 'p50_ms'), 3)} | "
          f"{f(med('manifest', case, t, 'p99_ms'), 3)} | {f(cpu)} | "
          f"{rx(ratio(cpu, d_cpu)) if t != 'static' else '–'} | "
          f"{f(med('manifest', case, t, 'upstream_cpu_us_per_req'))} | "
          f"{f(med('manifest', case, t, 'errors'), 0)} |")
p("")

# 2. cold
p("## 2. Cold verification: first GET of a never-seen manifest by digest (new connection)")
p("")
p("| server | p50 ms | p90 ms | added p50 over direct | samples |")
p("|---|---:|---:|---:|---:|")
cold_case = "first GET by digest"
d50 = med("cold", cold_case, "direct", "p50_ms")
for t in targets("cold", cold_case):
    v = med("cold", cold_case, t, "p50_ms")
    added = None if v is None or d50 is None else v - d50
    fails = med("cold", cold_case, t, "failures")
    p(f"| {NAMES.get(t, t)} | {f(v, 2)} | {f(med('cold', cold_case, t, 'p90_ms'), 2)} | "
      f"{'–' if t in ('direct', 'direct-sig') else ('+' if (added or 0) >= 0 else '') + f(added, 2) + ' ms'} | "
      f"{META.get('cold_reps', '')}{'' if not fails else f' ({f(fails, 0)} failed)'} |")
sanity = [(c, t, med("sanity", c, t, "http_status")) for c in cases("sanity") for t in targets("sanity", c)]
if sanity:
    p("")
    p("Enforcement check: " + "; ".join(f"{c} → HTTP {f(v, 0)}" for c, _, v in sanity) + ".")
p("")

# 2b. blob gating across the fleet
gate_case = "first blob GET on a replica that did not admit the image (Redis lookup)"
if cases("gate"):
    p("## 2b. Blob gating across a fleet: first GET of a blob on a replica that did not admit its image")
    p("")
    p(f"{META.get('gate_reps')} fresh signed images. Each is admitted through replica a (`pc-fleet`: its "
      "manifest by digest, a cold verification that writes the admitted blobs and the verdict to Redis); then "
      "its config blob (small, unique to the image) is fetched for the first time through replica b "
      "(`pc-fleet-b`: did not admit it, asks Redis, one GET), through replica a (admitted in process) and "
      "from the registry directly, in a rotating order, over kept-alive connections. The last column is "
      "the median over images of replica b's time minus replica a's for the same blob (p90 in brackets).")
    p("")
    p("| case | server | p50 ms | p90 ms | replica b − replica a, per image | samples |")
    p("|---|---|---:|---:|---:|---:|")
    for case in cases("gate"):
        for t in targets("gate", case):
            v = med("gate", case, t, "p50_ms")
            if v is None:
                continue
            d50, d90 = med("gate", case, t, "delta_p50_ms"), med("gate", case, t, "delta_p90_ms")
            delta = "–" if d50 is None else f"{'+' if d50 >= 0 else ''}{f(d50, 3)} ms ({f(d90, 3)})"
            fails = med("gate", case, t, "failures")
            how = {"pc-fleet-b": " (not admitted here: Redis lookup)",
                   "pc-fleet": " (admitted here: in process)"}.get(t, "") if case == gate_case else ""
            p(f"| {case} | {NAMES.get(t, t)}{how} | {f(v, 3)} | {f(med('gate', case, t, 'p90_ms'), 3)} | "
              f"{delta} | {f(med('gate', case, t, 'samples'), 0)}"
              f"{'' if not fails else f' ({f(fails, 0)} failed)'} |")
    hits = med("gate", gate_case, "pc-fleet-b", "redis_hits")
    falls = med("gate", gate_case, "pc-fleet-b", "redis_fallbacks")
    if hits is not None:
        p("")
        p(f"Meanwhile replica b found {f(hits, 0)} blobs in Redis (`portcullis_fleet_shared_hits_total`) and "
          f"answered {f(falls, 0)} requests without it (`portcullis_redis_fallbacks_total`).")
    p("")

# 3. blobs
big = META.get("big_mib")
p(f"## 3. Blob GET, {big} MiB layer (curl, concurrent streams)")
p("")
p("Passed through, except by `pc-cache`, which serves it from its content store (`cache.content`; stored by "
  "one GET in the warm-up, and each run checked to be all hits: no miss, every byte from the store).")
p("")
p("| streams | server | MB/s (total) | ×direct | ×distproxy | ×nginx | server CPU-s/GiB | peak RSS MiB | upstream bytes per client byte |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for case in cases("blob"):
    d = med("blob", case, "direct", "mb_s")
    dp = med("blob", case, "distproxy", "mb_s")
    n = med("blob", case, "nginx", "mb_s")
    for t in targets("blob", case):
        v = med("blob", case, t, "mb_s")
        p(f"| {case} | {NAMES.get(t, t)} | {f(v, 0)} | {rx(ratio(v, d))} | {rx(ratio(v, dp))} | {rx(ratio(v, n))} | "
          f"{f(med('blob', case, t, 'cpu_s_per_gib'), 2)} | {f(med('blob', case, t, 'peak_rss_mib'), 1)} | "
          f"{f(med('blob', case, t, 'upstream_per_client'), 4)} |")
p("")

# 4. pulls
p(f"## 4. Whole-image pull of demo/big:v1 ({big} MiB layer): wall time")
p("")
p("| client | server | wall s | ×direct | ×nginx |")
p("|---|---|---:|---:|---:|")
for case in cases("pull"):
    d = med("pull", case, "direct", "wall_s")
    n = med("pull", case, "nginx", "wall_s")
    for t in targets("pull", case):
        v = med("pull", case, t, "wall_s")
        p(f"| {case} | {NAMES.get(t, t)} | {f(v, 3)} | {rx(ratio(v, d))} | {rx(ratio(v, n))} |")
p("")
if any(t in ("pc-cache", "pc-cache-cold") for c in cases("pull") for t in targets("pull", c)):
    p("`pc-cache` pulls an image it has stored (a second pull; checked: no miss, the layer from the store). "
      "The first pulls: `pc-cache-cold` is a running instance (warmed like the others) whose store is "
      "emptied of the image with `portcullis cache purge` before each pull; `distproxy-cold`, which has no "
      "purge, a new instance on new storage. Both fetch the image's manifests once (as every target's were "
      "in the warm-up, so the verdict is cached as it is for `pc-require`), then pull: every blob is a "
      "first fetch, through the store (checked: a miss, and the layer's bytes downloaded into the store).")
    p("")
mem = cases("memory")
if mem:
    p("RSS at the end of the run: " + ", ".join(
        f"{t} {f(med('memory', mem[0], t, 'rss_mib'), 1)} MiB" for t in targets("memory", mem[0])) + ".")
    p("")

# 4b. content cache (issue 14)
def cache_rows():
    """Issue 14's rows: (measure, Portcullis, peers, ratio, target, ok)."""
    rows = []
    for case in cases("blob"):
        s = case.split()[0]
        pc, d, dp = (med("blob", case, t, "mb_s") for t in ("pc-cache", "direct", "distproxy"))
        if pc is None:
            continue
        rd, rdp = ratio(pc, d), ratio(pc, dp)
        rows.append((f"{big} MiB blob from the store, {s} stream(s): MB/s", f(pc, 0),
                     f"direct {f(d, 0)}; distribution proxy (warm) {f(dp, 0)}",
                     f"{rx(rd)} direct, {rx(rdp)} distribution", "≥ 0.95× direct and ≥ distribution (warm)",
                     None if rd is None or rdp is None else (rd >= 0.95 and rdp >= 1.0)))
        cpu = med("blob", case, "pc-cache", "cpu_s_per_gib")
        rows.append((f"{big} MiB blob from the store, {s} stream(s): Portcullis CPU-s per GiB served", f(cpu, 2),
                     f"direct {f(med('blob', case, 'direct', 'cpu_s_per_gib'), 2)}; distribution proxy (warm) "
                     f"{f(med('blob', case, 'distproxy', 'cpu_s_per_gib'), 2)}", "–", "≤ 0.6 CPU-s/GiB",
                     None if cpu is None else cpu <= 0.6))
    rss = med("blob", "4 stream(s)", "pc-cache", "peak_rss_mib")
    rows.append((f"peak RSS while serving 4 streams of the {big} MiB blob from the store (MiB)", f(rss, 1),
                 f"direct {f(med('blob', '4 stream(s)', 'direct', 'peak_rss_mib'), 1)}; distribution proxy (warm) "
                 f"{f(med('blob', '4 stream(s)', 'distproxy', 'peak_rss_mib'), 1)}", "–", "≤ 64 MiB",
                 None if rss is None else rss <= 64))
    for tool in ("skopeo copy", "ctr pull"):
        pc, d, dp = (med("pull", tool, t, "wall_s") for t in ("pc-cache", "direct", "distproxy"))
        r = ratio(pc, d)
        rows.append((f"whole-image pull of the stored image ({tool}, second pull): wall s", f(pc, 3),
                     f"direct {f(d, 3)}; distribution proxy (warm) {f(dp, 3)}",
                     f"{rx(r)} direct, {rx(ratio(pc, dp))} distribution", "no slower than direct (≤ 1.00×)",
                     None if r is None else r <= 1.0))
    for tool in ("skopeo copy", "ctr pull"):
        pc, pr, dc = (med("pull", tool, t, "wall_s") for t in ("pc-cache-cold", "pc-require", "distproxy-cold"))
        r = ratio(pc, pr)
        rows.append((f"cold pull through the cache ({tool}, empty store, first pull): wall s", f(pc, 3),
                     f"pass-through pc-require {f(pr, 3)}; distribution proxy, empty storage {f(dc, 3)}",
                     f"{rx(r)} pc-require, {rx(ratio(pc, dc))} distribution",
                     "no slower than pass-through pc-require (≤ 1.00×)", None if r is None else r <= 1.0))
    return rows


CACHE_ROWS = cache_rows() if (cases("cache") or any(
    t == "pc-cache" for c in cases("blob") for t in targets("blob", c))) else []
if CACHE_ROWS:
    p("## 4b. Content cache (`cache.content`, issue 14), next to distribution's proxy mode")
    p("")
    p("`pc-cache` is `pc-require` (REQUIRE_ATTESTATION, signed images) with `cache.content` (a new directory, "
      "`maxSize: 8GiB`); `pc-cache-cold` the same, its store emptied of the image before each of its pulls. Figures "
      "from sections 3 and 4 of this run (same repetitions, interleaved with the peers).")
    try:
        tick = 1 / float(META["clk_tck"]) / (float(big) / 1024)
        p("")
        p(f"CPU is counted in 1/{META['clk_tck']} s ticks (`/proc/<pid>/stat`): one tick is {tick:.2f} CPU-s/GiB "
          f"with 1 stream of the {big} MiB blob, {tick / 4:.2f} with 4 streams"
          + (" — too coarse in quick mode to judge the 0.6 CPU-s/GiB target; the full run's figure is the one to "
             "quote." if tick > 0.1 else "."))
    except (KeyError, ValueError, ZeroDivisionError):
        pass
    p("")
    p("| measure | Portcullis, cache.content | peers (same run) | ratio | target | status |")
    p("|---|---:|---|---|---|---|")
    for m, v, peers, r, tgt, ok in CACHE_ROWS:
        p(f"| {m} | {v} | {peers} | {r} | {tgt} | {'not measured' if ok is None else ('**met**' if ok else '**MISSED**')} |")
    hits = med("cache", "content store counters", "pc-cache", "hits")
    if hits is not None:
        p("")
        p(f"`pc-cache`'s store over the whole run: {f(hits, 0)} hits, "
          f"{f(med('cache', 'content store counters', 'pc-cache', 'misses'), 0)} misses "
          "(`portcullis_content_cache_hits_total`, `_misses_total`); "
          f"{f(med('cache', 'content store counters', 'pc-cache', 'gib_from_store'), 2)} GiB served from the store, "
          f"{f(med('cache', 'content store counters', 'pc-cache', 'gib_from_upstream'), 2)} GiB downloaded into it "
          "(`portcullis_content_cache_bytes_total{source=\"store\"|\"upstream\"}`).")
    p("")

# 5. micro
p("## 5. Micro-benchmarks (criterion medians; `openssl speed` for comparison)")
p("")
p("| benchmark | median | throughput |")
p("|---|---:|---:|")
for case in cases("micro"):
    for t in targets("micro", case):
        us = med("micro", case, t, "us")
        if us is not None:
            mbs = med("micro", case, t, "mb_s")
            p(f"| {case} | {f(us, 3)} µs | {'' if mbs is None else f(mbs, 0) + ' MB/s'} |")
        mpm = med("micro", case, t, "mib_per_million")
        if mpm is not None:
            n = med("micro", case, t, "cached_entries")
            how = "filled through `Verifier::admit`" if case == "verdict cache RSS" else "1 entry per key"
            p(f"| {case} ({how}, {f(n, 0)} cached) | {f(mpm, 1)} MiB per million entries | |")
p("")

# targets
p("## Issue 6 targets (and issue 13's Redis target, issue 14's content-cache targets), checked against this run")
p("")
p("| target | measured | status |")
p("|---|---|---|")


def check(name, measured, ok):
    status = "not measured" if ok is None else ("**met**" if ok else "**MISSED**")
    p(f"| {name} | {measured} | {status} |")


def both(a, b):
    return None if a is None or b is None else (a and b)


c16 = "digest c16"
pr = med("manifest", c16, "pc-require", "rps")
dr = med("manifest", c16, "direct", "rps")
st = med("manifest", c16, "static", "rps")
r = ratio(pr, dr)
check("by digest c=16: ≥ 10× direct req/s", f"{f(pr, 0)} vs {f(dr, 0)} req/s = {rx(r)}", None if r is None else r >= 10)
p99p, p99d = med("manifest", c16, "pc-require", "p99_ms"), med("manifest", c16, "direct", "p99_ms")
check("by digest c=16: lower p99 than direct", f"{f(p99p, 3)} vs {f(p99d, 3)} ms",
      None if p99p is None or p99d is None else p99p < p99d)
r = ratio(pr, st)
check("by digest c=16: ≥ 0.4× the static floor", f"{f(pr, 0)} vs {f(st, 0)} req/s = {rx(r)}", None if r is None else r >= 0.4)
cp, cd = med("manifest", c16, "pc-require", "cpu_us_per_req"), med("manifest", c16, "direct", "cpu_us_per_req")
r = ratio(cp, cd)
check("CPU per warm manifest request ≤ 0.05× direct (by digest, c=16)", f"{f(cp)} vs {f(cd)} µs = {rx(r)}",
      None if r is None else r <= 0.05)
t16 = "tag c16"
tp, td = med("manifest", t16, "pc-require", "rps"), med("manifest", t16, "direct", "rps")
r = ratio(tp, td)
check("by tag c=16, revalidated every request: ≥ 0.9× direct", f"{f(tp, 0)} vs {f(td, 0)} req/s = {rx(r)}",
      None if r is None else r >= 0.9)
tt = med("manifest", t16, "pc-require-ttl", "rps")
r = ratio(tt, td)
check("by tag c=16, tagTtl 5s: ≥ 10× direct", f"{f(tt, 0)} vs {f(td, 0)} req/s = {rx(r)}", None if r is None else r >= 10)
fr = med("manifest", c16, "pc-fleet", "rps")
r = ratio(fr, pr)
check("by digest c=16 with Redis (state.redis): within 10% of without (pc-fleet ≥ 0.9× pc-require)",
      f"{f(fr, 0)} vs {f(pr, 0)} req/s = {rx(r)}", None if r is None else r >= 0.9)
c50, d50 = med("cold", cold_case, "pc-require", "p50_ms"), med("cold", cold_case, "direct", "p50_ms")
added = None if c50 is None or d50 is None else c50 - d50
check("cold verification adds ≤ 5 ms at p50", f"+{f(added, 2)} ms ({f(c50, 2)} vs {f(d50, 2)} ms)",
      None if added is None else added <= 5)
k50 = med("cold", cold_case, "pc-keyless", "p50_ms")
added = None if k50 is None or d50 is None else k50 - d50
check("cold keyless verification adds ≤ 10 ms at p50 (issue 15)", f"+{f(added, 2)} ms ({f(k50, 2)} vs {f(d50, 2)} ms)",
      None if added is None else added <= 10)
for streams in ("1 stream(s)", "4 stream(s)"):
    bp, bd, bn = (med("blob", streams, t, "mb_s") for t in ("pc-require", "direct", "nginx"))
    r = ratio(bp, bd)
    check(f"blob, {streams.split()[0]} stream(s): ≥ 0.65× direct MB/s", f"{f(bp, 0)} vs {f(bd, 0)} MB/s = {rx(r)}",
          None if r is None else r >= 0.65)
    check(f"blob, {streams.split()[0]} stream(s): faster than the nginx hop", f"{f(bp, 0)} vs {f(bn, 0)} MB/s",
          None if bp is None or bn is None else bp > bn)
    cpu = med("blob", streams, "pc-require", "cpu_s_per_gib")
    check(f"blob, {streams.split()[0]} stream(s): proxy CPU ≤ 1.0 s/GiB", f"{f(cpu, 2)} CPU-s/GiB",
          None if cpu is None else cpu <= 1.0)
    rw = med("blob", streams, "pc-require", "upstream_per_client")
    check(f"blob, {streams.split()[0]} stream(s): upstream bytes per client byte = 1.0",
          f"{f(rw, 4)} (upstream bytes sent / client body bytes, ss)", None if rw is None else abs(rw - 1) < 0.01)
rss4 = med("blob", "4 stream(s)", "pc-require", "peak_rss_mib")
check("peak RSS ≤ 64 MiB during the 4-stream run", f"{f(rss4, 1)} MiB", None if rss4 is None else rss4 <= 64)
for tool in ("skopeo copy", "ctr pull"):
    wp, wd = med("pull", tool, "pc-require", "wall_s"), med("pull", tool, "direct", "wall_s")
    r = ratio(wp, wd)
    check(f"whole-image pull ({tool}) ≤ 1.1× direct", f"{f(wp, 3)} vs {f(wd, 3)} s = {rx(r)}",
          None if r is None else r <= 1.1)
mpm = med("micro", "verdict cache RSS", "criterion", "mib_per_million")
check("1,000,000 cached verdicts ≤ 300 MiB RSS", f"{f(mpm, 1)} MiB per million", None if mpm is None else mpm <= 300)
pe = [med("micro", c, "criterion", "us") for c in cases("micro") if c.startswith("policy/rule_for_evaluate_10k")]
pe = [x for x in pe if x is not None]
worst = max(pe) if pe else None
check("policy evaluation with 10,000 rules ≤ 5 µs (worst of matched/default)", f"{f(worst, 3)} µs",
      None if worst is None else worst <= 5)
pv = med("micro", "p256/verify_portcullis_p256crate", "criterion", "us")
ov = med("micro", "openssl speed ecdsap256 verify", "openssl", "us")
r = ratio(pv, ov)
check("P-256 verification within 2× of openssl", f"{f(pv, 1)} vs {f(ov, 1)} µs = {rx(r)}", None if r is None else r <= 2)
for m, v, peers, r, tgt, ok in CACHE_ROWS:
    check(f"content cache, {m.rsplit(':', 1)[0]}: {tgt}", f"{v} ({peers})", ok)
p("")
p("Profiles explaining the misses, and what would close each gap: `bench/PROFILE.md`.")
p("")
print("\n".join(out))
