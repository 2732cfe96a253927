//! The pictures in `docs/images/` stay true to their sources:
//!
//! - `bench.svg` is exactly what `bench/chart.py` draws from
//!   `bench/results/latest.md`, so a new benchmark run without a new chart
//!   (or a hand-edited chart) fails here instead of going stale silently;
//! - every SVG there is well-formed XML with an `<svg>` root and a
//!   `viewBox`, self-contained (no external images, fonts or styles), on a
//!   light background of its own;
//! - `chart.py` refuses an input it cannot chart, naming what is missing,
//!   and writes nothing.
//!
//! Needs only `python3` (its standard library), as CI has it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SVGS: &[&str] = &["request-flow.svg", "only-route.svg", "bench.svg"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python3 bench/chart.py ARGS…`, run from the repository root.
fn chart(args: &[&Path]) -> Output {
    Command::new("python3")
        .arg(root().join("bench/chart.py"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("python3 runs (install Debian's python3)")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bench_chart_is_generated_from_latest_results() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("bench.svg");
    let out = chart(&[
        &root().join("bench/results/latest.md"),
        Path::new("--out"),
        &fresh,
    ]);
    assert!(out.status.success(), "chart.py failed:\n{}", describe(&out));
    let fresh = std::fs::read(&fresh).expect("chart.py wrote --out");
    let checked_in = std::fs::read(root().join("docs/images/bench.svg")).unwrap();
    assert!(
        fresh == checked_in,
        "docs/images/bench.svg is not what bench/chart.py draws from bench/results/latest.md; \
         regenerate it with `python3 bench/chart.py` and commit it (see bench/README.md)"
    );
}

/// Parses each SVG with python3's `xml.etree` and prints one line per
/// file: `ok`, or what is wrong with it.
const CHECK_SVG: &str = r##"
import re, sys
import xml.etree.ElementTree as ET
NS = "{http://www.w3.org/2000/svg}"
for path in sys.argv[1:]:
    problems = []
    text = open(path, encoding="utf-8").read()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        print(f"{path}: not well-formed XML: {e}")
        continue
    if not text.startswith("<svg"):
        problems.append("does not start with <svg")
    if root.tag != NS + "svg":
        problems.append(f"root element is {root.tag}, not an SVG <svg>")
    box = root.get("viewBox", "").split()
    if len(box) != 4:
        problems.append("no viewBox of four numbers")
    else:
        w = float(box[2])
        if not 800 <= w <= 900:
            problems.append(f"viewBox width {w}, not README width (800-900)")
    if "sans-serif" not in (root.get("font-family") or ""):
        problems.append("no font-family sans-serif on the root")
    if root.find(NS + "title") is None:
        problems.append("no <title>")
    if not any(el.tag == NS + "text" and (el.text or "").strip() for el in root.iter()):
        problems.append("no text")
    if re.search(r"<image|<foreignObject|@import|@font-face|url\((?!#)|href=\"(?!#)", text):
        problems.append("refers to something outside the file (image, font, style or link)")
    first = next((el for el in root if el.tag == NS + "rect"), None)
    white = first is not None and first.get("fill", "").lower() in ("#ffffff", "#fff", "white")
    if not (white and len(box) == 4 and first.get("width") == box[2] and first.get("height") == box[3]):
        problems.append("its first <rect> is not a white background the size of the viewBox")
    print(f"{path}: " + ("; ".join(problems) if problems else "ok"))
"##;

#[test]
fn svgs_are_well_formed_and_self_contained() {
    let paths: Vec<PathBuf> = SVGS
        .iter()
        .map(|name| root().join("docs/images").join(name))
        .collect();
    for path in &paths {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK_SVG)
        .args(&paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the SVG check failed:\n{}",
        describe(&out)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), paths.len(), "one line per SVG:\n{report}");
    for line in lines {
        assert!(line.ends_with(": ok"), "{line}");
    }
}

#[test]
fn chart_refuses_a_file_without_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("broken.md");
    std::fs::write(
        &input,
        "# Portcullis benchmark — full run, 2026-01-01 00:00 UTC\n\n\
         Machine: 2 CPUs; Commit 0123abc; 3 repetition(s).\n\n\
         ## 1. Something else\n\nno tables here\n",
    )
    .unwrap();
    let svg = dir.path().join("out.svg");
    let out = chart(&[&input, Path::new("--out"), &svg]);
    assert!(
        !out.status.success(),
        "chart.py accepted a file without tables:\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Manifest GET, warm") && stderr.contains("broken.md"),
        "the message names the file and the missing section:\n{}",
        describe(&out)
    );
    assert!(
        !svg.exists(),
        "nothing is written for a file it cannot chart"
    );

    // Not a result file at all.
    std::fs::write(&input, "hello\n").unwrap();
    let out = chart(&[&input, Path::new("--out"), &svg]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Portcullis benchmark"),
        "{}",
        describe(&out)
    );
    assert!(!svg.exists());
}

#[test]
fn chart_refuses_a_missing_headline_bar() {
    // The real results without Portcullis' warm by-digest row: no chart
    // with that bar silently left out.
    let latest = std::fs::read_to_string(root().join("bench/results/latest.md")).unwrap();
    let row = "| by digest, c=16 | **Portcullis** REQUIRE_ATTESTATION |";
    assert!(
        latest.contains(row),
        "latest.md has the row this test removes"
    );
    let cut: String = latest
        .lines()
        .filter(|l| !l.starts_with(row))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cut.md");
    std::fs::write(&input, cut).unwrap();
    let svg = dir.path().join("out.svg");
    let out = chart(&[&input, Path::new("--out"), &svg]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("by digest, c=16") && stderr.contains("Portcullis"),
        "the message names the case and the server:\n{}",
        describe(&out)
    );
    assert!(!svg.exists());
}

/// Every `](#anchor)` link in the README names a heading of it, and every
/// relative link names a file of the repository: a section renamed or
/// moved cannot leave a dead link behind.
#[test]
fn readme_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let slug = |heading: &str| -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    };
    let mut headings = std::collections::HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            if let Some((_, heading)) = line.split_once(' ') {
                headings.insert(slug(heading));
            }
        }
    }
    let mut broken = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if let Some(anchor) = target.strip_prefix('#') {
            if !headings.contains(anchor) {
                broken.push(target.to_owned());
            }
        } else if !target.contains("://") && !target.starts_with("mailto:") {
            let file = target.split('#').next().unwrap_or(target);
            if !root.join(file).exists() {
                broken.push(target.to_owned());
            }
        }
    }
    assert!(
        broken.is_empty(),
        "README links that lead nowhere: {broken:?}"
    );
}
