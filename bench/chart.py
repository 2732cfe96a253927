#!/usr/bin/env python3
"""Draws the headline figures of a bench/run.sh result file as an SVG bar
chart: the measures the README's Performance table reports, Portcullis
(REQUIRE_ATTESTATION, signed images) next to the direct registry and the
peers measured in the same run.

    python3 bench/chart.py                              # bench/results/latest.md -> docs/images/bench.svg
    python3 bench/chart.py bench/results/2026-12-05-full.md --out /tmp/bench.svg

One panel per measure, each with its own linear axis: warm manifest GETs by
digest and by tag (req/s, concurrency 16), the cold verification of a new
digest (p50 ms), a 256 MiB blob (MB/s, per stream count) and a whole-image
pull (wall s, per client). Every bar is labelled with the value written in
the result file and, for everything but the direct registry, its ratio to
the direct registry in the same run.

Python 3 standard library only. The output depends on the input's content
alone (not its path, the clock or the locale), so the checked-in chart can
be compared byte for byte with a fresh one (tests/docs_images.rs does).
Exits 1, naming what it could not find, when the input is not a result
file it can read; it never writes a chart with a missing panel or bar.
"""

import argparse
import math
import os
import re
import sys
from xml.sax.saxutils import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IN = os.path.join(ROOT, "bench", "results", "latest.md")
DEFAULT_OUT = os.path.join(ROOT, "docs", "images", "bench.svg")


class ChartError(Exception):
    pass


# ---------------------------------------------------------------- parsing


def clean(cell):
    """A table cell without Markdown emphasis or code marks."""
    return re.sub(r"\s+", " ", cell.replace("**", "").replace("`", "")).strip()


def split_row(line):
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|"):
        body = body[:-1]
    return [clean(c) for c in body.split("|")]


SEPARATOR = re.compile(r"^\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?$")


def parse(text):
    """Sections (## headings) of the file, each with its tables; a table is
    (header, rows), rows as dicts keyed by the header's cells."""
    sections = []
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            current = {"heading": clean(line[3:]), "tables": []}
            sections.append(current)
            i += 1
            continue
        if (current is not None and line.lstrip().startswith("|") and i + 1 < len(lines)
                and SEPARATOR.match(lines[i + 1].strip())):
            header = split_row(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = split_row(lines[i])
                if len(cells) == len(header):
                    rows.append(dict(zip(header, cells)))
                i += 1
            current["tables"].append((header, rows))
            continue
        i += 1
    return sections


def find_section(sections, phrase):
    found = [s for s in sections if phrase.lower() in s["heading"].lower()]
    if not found:
        raise ChartError(f"no section whose heading contains '{phrase}'")
    if len(found) > 1:
        raise ChartError(f"{len(found)} sections whose heading contains '{phrase}', expected one")
    return found[0]


def find_table(section, columns):
    for header, rows in section["tables"]:
        if all(c in header for c in columns):
            return rows
    raise ChartError(f"section '{section['heading']}': no table with the columns "
                     + ", ".join(f"'{c}'" for c in columns))


def number(text):
    """'64,305' -> 64305.0, '1.86' -> 1.86; None for '–' or anything else."""
    m = re.fullmatch(r"[+-]?[0-9][0-9,]*(\.[0-9]+)?", text.strip())
    if not m:
        return None
    return float(text.replace(",", ""))


# Servers as bench/report.py names them (emphasis removed), each matched by
# a pattern that fits exactly one row of a case.
SERVERS = {
    "direct": (r"direct registry \(", "direct registry"),
    "distproxy": (r"distribution proxy mode \(warm\)$", "distribution proxy"),
    "nginx": (r"nginx reverse proxy hop$", "nginx hop"),
    "pc": (r"Portcullis REQUIRE_ATTESTATION$", "Portcullis"),
    "pc-ttl": (r"Portcullis REQUIRE_ATTESTATION, tagTtl", "Portcullis, tagTtl 5s"),
    "pc-keyless": (r"Portcullis REQUIRE_ATTESTATION, keyless", "Portcullis, keyless attestor"),
    "pc-cache": (r"Portcullis REQUIRE_ATTESTATION, cache\.content \(stored", "Portcullis, content cache"),
    "distproxy-cold": (r"distribution proxy mode, empty storage", "distribution proxy, empty"),
    "pc-cache-cold": (r"Portcullis REQUIRE_ATTESTATION, cache\.content, empty store", "Portcullis, empty cache"),
}


def find_row(rows, server, where, context):
    pattern, _ = SERVERS[server]
    hits = [r for r in rows
            if re.match(pattern, r.get("server", ""))
            and all(r.get(k) == v for k, v in where.items())]
    if len(hits) > 1:
        raise ChartError(f"{context}: {len(hits)} rows for server /{pattern}/, expected one")
    return hits[0] if hits else None


def series_name(column, value):
    if column == "streams":
        m = re.match(r"(\d+) stream", value)
        if m:
            n = int(m.group(1))
            return f"{n} stream" if n == 1 else f"{n} streams"
    return value.split()[0] if value else value


# What is charted: one panel per headline measure of the README's
# Performance table. "required" servers must be in the file; "optional"
# ones (peers added to the benchmark later) are drawn when present.
PANELS = [
    {
        "section": "Manifest GET, warm",
        "title": "Manifest by digest, warm (concurrency 16)",
        "note_line": "The image was verified on an earlier pull: Portcullis answers from its verdict cache.",
        "axis": "requests per second (higher is better)",
        "where": {"case": "by digest, c=16"},
        "value": "req/s", "note": "×direct",
        "required": ["direct", "pc"], "optional": ["distproxy", "nginx"],
        "order": ["direct", "distproxy", "nginx", "pc"],
    },
    {
        "section": "Manifest GET, warm",
        "title": "Manifest by tag, warm (concurrency 16)",
        "note_line": "Portcullis asks the upstream what the tag points to on every request (the default), "
                     "or reuses the answer for 5 s (cache.tagTtl: 5s).",
        "axis": "requests per second (higher is better)",
        "where": {"case": "by tag, c=16"},
        "value": "req/s", "note": "×direct",
        "required": ["direct", "pc"], "optional": ["distproxy", "nginx", "pc-ttl"],
        "order": ["direct", "distproxy", "nginx", "pc", "pc-ttl"],
    },
    {
        "section": "Cold verification",
        "title": "Cold verification: first GET of a never-seen signed digest, p50",
        "note_line": "Portcullis fetches the manifest and the evidence for its digest, "
                     "verifies the signature and evaluates the policy before the first byte.",
        "axis": "milliseconds (lower is better); in brackets: added over the direct registry",
        "where": {},
        "value": "p50 ms", "note": "added p50 over direct",
        "required": ["direct", "pc"], "optional": ["distproxy", "pc-keyless"],
        "order": ["direct", "distproxy", "pc", "pc-keyless"],
    },
    {
        "section": "Blob GET",
        "title": "{layer} blob GET, total over concurrent streams",
        "note_line": "Portcullis passes the blob through, hashing every byte; with a content cache "
                     "(cache.content) it serves the stored, verified blob from disk.",
        "axis": "MB/s (higher is better)",
        "series": "streams",
        "value": "MB/s (total)", "note": "×direct",
        "required": ["direct", "pc"], "optional": ["distproxy", "nginx", "pc-cache"],
        "order": ["direct", "distproxy", "nginx", "pc", "pc-cache"],
    },
    {
        "section": "Whole-image pull",
        "title": "Whole-image pull ({layer} layer): wall time, skopeo copy and ctr pull",
        "note_line": "content cache: the image already stored. empty: the first pull through an empty "
                     "content cache (distribution: empty storage).",
        "axis": "seconds (lower is better)",
        "series": "client",
        "value": "wall s", "note": "×direct",
        "required": ["direct", "pc"],
        "optional": ["distproxy", "nginx", "pc-cache", "distproxy-cold", "pc-cache-cold"],
        "order": ["direct", "distproxy", "nginx", "pc", "pc-cache", "distproxy-cold", "pc-cache-cold"],
    },
]


def extract(text):
    """The run's identity and the panels' bars; ChartError naming what is
    missing."""
    first = next((l for l in text.splitlines() if l.strip()), "")
    m = re.match(r"#\s+Portcullis benchmark\s+—\s+(\w+) run,\s+(.+?)\s*$", first)
    if not m:
        raise ChartError("the first line is not '# Portcullis benchmark — <mode> run, <date>' "
                         "(is this a bench/run.sh result file?)")
    mode, date = m.group(1), m.group(2)
    m = re.search(r"\bCommit ([0-9a-f]{7,40})\b", text)
    if not m:
        raise ChartError("no 'Commit <hash>' in the run's description")
    commit = m.group(1)
    m = re.search(r"^Machine: (.+?);", text, re.M)
    machine = m.group(1) if m else None
    m = re.search(r"\b(\d+) repetition\(s\)", text)
    reps = int(m.group(1)) if m else None

    sections = parse(text)
    panels = []
    warnings = []
    for spec in PANELS:
        section = find_section(sections, spec["section"])
        layer = re.search(r"(\d+ [KMG]iB)", section["heading"])
        title = spec["title"].format(layer=layer.group(1) if layer else "the big")
        series_col = spec.get("series")
        columns = ["server", spec["value"], spec["note"]] + ([series_col] if series_col else []) \
            + list(spec.get("where", {}))
        rows = find_table(section, columns)
        if series_col:
            series = []
            for r in rows:
                if r[series_col] not in series:
                    series.append(r[series_col])
        else:
            series = [None]
        bars = []  # (server, [(series label, value, value text, note text)])
        for server in spec["order"]:
            values = []
            for s in series:
                where = dict(spec.get("where", {}))
                if s is not None:
                    where[series_col] = s
                context = f"section '{section['heading']}'" + "".join(
                    f", {k} '{v}'" for k, v in where.items())
                row = find_row(rows, server, where, context)
                value = number(row[spec["value"]]) if row else None
                if value is None:
                    what = (f"{context}: no row for {SERVERS[server][1]} (server /{SERVERS[server][0]}/)"
                            if row is None else
                            f"{context}: {SERVERS[server][1]}'s '{spec['value']}' is "
                            f"'{row[spec['value']]}', not a number")
                    if server in spec["required"]:
                        raise ChartError(what)
                    warnings.append(what + "; bar left out")
                    continue
                note = row[spec["note"]]
                if server == "direct" or number(note.rstrip("×").replace(" ms", "")) is None:
                    note = ""
                values.append((series_name(series_col, s) if s is not None else None,
                               value, row[spec["value"]], note))
            if values:
                bars.append((server, values))
        panels.append({"title": title, "note": spec.get("note_line"), "axis": spec["axis"], "bars": bars})
    return {"mode": mode, "date": date, "commit": commit, "machine": machine,
            "reps": reps, "panels": panels}, warnings


# ---------------------------------------------------------------- drawing

WIDTH = 880
MARGIN = 16
LABEL_RIGHT = 200      # right edge of the row labels
BAR_LEFT = 208         # where bars start
VALUE_ROOM = 170       # room kept right of the longest bar for its label
BAR_RIGHT = WIDTH - MARGIN - VALUE_ROOM

INK = "#1f2328"
MUTED = "#57606a"
GRID = "#d8dee4"
# (one series or the first of two, the second of two)
PEER = ("#8c959f", "#57606a")
OURS = ("#54aeff", "#0969da")


def fmt(x):
    """A coordinate: at most one decimal, no trailing '.0'."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def ticks(top):
    """Axis maximum and tick values for a maximum value `top`: steps of
    1, 2, 2.5 or 5 times a power of ten, about five of them."""
    if top <= 0:
        top = 1.0
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    count = math.ceil(top / step - 1e-9)
    decimals = next(d for d in range(0, 8) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6)
    values = [i * step for i in range(count + 1)]
    return count * step, [(v, f"{v:,.{decimals}f}") for v in values]


def text(x, y, s, size=12, anchor="start", weight=None, fill=INK):
    attrs = f'x="{fmt(x)}" y="{fmt(y)}" font-size="{size}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    if fill != INK:
        attrs += f' fill="{fill}"'
    return f"<text {attrs}>{escape(s)}</text>"


def draw(run, source_name):
    out = []
    y = 30
    title = f"Portcullis benchmark — {run['mode']} run, {run['date']} · commit {run['commit']}"
    head = [text(MARGIN, y, title, size=17, weight="bold")]
    y += 20
    facts = []
    if run["machine"]:
        facts.append(run["machine"])
    if run["reps"]:
        facts.append(f"{run['reps']} repetition{'s' if run['reps'] != 1 else ''}, medians")
    facts.append("everything on loopback, HTTP/1.1")
    head.append(text(MARGIN, y, " · ".join(facts), size=12, fill=MUTED))
    y += 18
    head.append(text(MARGIN, y, "Blue: Portcullis (REQUIRE_ATTESTATION, signed images). Grey: its peers. "
                     "(n×): ratio to the direct registry in the same run.", size=12, fill=MUTED))
    y += 14
    out.extend(head)

    for panel in run["panels"]:
        y += 30
        out.append(text(MARGIN, y, panel["title"], size=14, weight="bold"))
        if panel["note"]:
            y += 17
            out.append(text(MARGIN, y, panel["note"], size=11, fill=MUTED))
        y += 10
        top = max(v for _, values in panel["bars"] for _, v, _, _ in values)
        axis_max, tick_list = ticks(top)
        scale = (BAR_RIGHT - BAR_LEFT) / axis_max
        rows_top = y
        n_series = max(len(values) for _, values in panel["bars"])
        bar_h = 14 if n_series == 1 else 12
        gap = 2
        pad = 5
        body = []
        for server, values in panel["bars"]:
            ours = server.startswith("pc")
            row_h = pad * 2 + len(values) * bar_h + (len(values) - 1) * gap
            label = SERVERS[server][1]
            body.append(text(LABEL_RIGHT, y + row_h / 2 + 4, label, size=12, anchor="end",
                             weight="bold" if ours else None))
            by = y + pad
            for i, (series, value, shown, note) in enumerate(values):
                shade = (OURS if ours else PEER)[0 if len(values) == 1 else min(i, 1)]
                if len(values) == 1 and n_series == 1:
                    shade = (OURS if ours else PEER)[1]
                width = max(value * scale, 1.0)
                body.append(f'<rect x="{BAR_LEFT}" y="{fmt(by)}" width="{fmt(width)}" '
                            f'height="{bar_h}" fill="{shade}"/>')
                words = (f"{series}: " if series else "") + shown
                if note:
                    words += f" ({note})"
                body.append(text(BAR_LEFT + width + 5, by + bar_h - 2.5, words, size=11))
                by += bar_h + gap
            y += row_h
        rows_bottom = y
        # grid and ticks under the bars
        for value, label in tick_list:
            x = BAR_LEFT + value * scale
            out.append(f'<line x1="{fmt(x)}" y1="{fmt(rows_top)}" x2="{fmt(x)}" y2="{fmt(rows_bottom)}" '
                       f'stroke="{GRID}" stroke-width="1"/>')
            out.append(text(x, rows_bottom + 13, label, size=10, anchor="middle", fill=MUTED))
        out.append(f'<line x1="{BAR_LEFT}" y1="{fmt(rows_top)}" x2="{BAR_LEFT}" y2="{fmt(rows_bottom)}" '
                   f'stroke="{MUTED}" stroke-width="1"/>')
        out.extend(body)
        y = rows_bottom + 27
        out.append(text((BAR_LEFT + BAR_RIGHT) / 2, y, panel["axis"], size=11, anchor="middle", fill=MUTED))

    y += 26
    out.append(text(WIDTH - MARGIN, y, f"bench/chart.py from {source_name}", size=10, anchor="end",
                    fill=MUTED))
    height = math.ceil(y + 12)
    alt = (f"Bar charts of the Portcullis benchmark, {run['mode']} run of {run['date']}, commit "
           f"{run['commit']}: " + "; ".join(p["title"] for p in run["panels"]))
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(alt, {chr(34): "&quot;"})}" '
        f'font-family="sans-serif">',
        f"<title>{escape(alt)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" rx="8" fill="#ffffff"/>',
    ]
    svg.extend(out)
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(
        prog="chart.py",
        description="Draw a bench/run.sh result file's headline figures as an SVG bar chart.")
    ap.add_argument("results", nargs="?", default=DEFAULT_IN,
                    help="a result file of bench/run.sh (default: bench/results/latest.md)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="the SVG to write (default: docs/images/bench.svg)")
    args = ap.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        print(f"chart.py: cannot read {args.results}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        run, warnings = extract(content)
    except ChartError as e:
        print(f"chart.py: {args.results}: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"chart.py: {args.results}: note: {w}", file=sys.stderr)
    svg = draw(run, os.path.basename(args.results))
    directory = os.path.dirname(args.out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(svg)
    bars = sum(len(values) for p in run["panels"] for _, values in p["bars"])
    print(f"chart.py: wrote {args.out}: {len(run['panels'])} panels, {bars} bars "
          f"({run['mode']} run, {run['date']}, commit {run['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
