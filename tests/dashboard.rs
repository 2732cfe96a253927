//! The live dashboard (`GET /-/ui` on the admin listener) in a real headless
//! Chromium (Debian's `chromium` package, driven by `playwright-core` from
//! `tests/ui/`) against a real proxy in front of a real registry.
//!
//! The page is loaded first; only then is an unsigned image pulled with
//! skopeo, and the denial must show up on the open page (no reload) within
//! three seconds, with its explanation one click away. The screenshot is
//! left at `target/test-artifacts/dashboard.png`; with
//! `PORTCULLIS_UPDATE_DOCS=1` it is also copied to `docs/dashboard.png`
//! (the README's picture).
//!
//! Needs `apt-get install -y chromium nodejs` and `npm ci --prefix tests/ui`
//! (both done by scripts/test.sh). Never skipped: it fails saying what to
//! install.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::trust::{self, Case, TrustConfig};
use common::{content, free_port, Proxy};

const CHROMIUM: &str = "/usr/bin/chromium";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with install instructions unless node, Chromium and the
/// `tests/ui` node modules are present.
fn require_browser_tooling() -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` is not on PATH ({node:?}): install Node.js >= 20 \
         (`apt-get install -y nodejs npm`), then `npm ci --prefix tests/ui`"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is not installed: run `apt-get install -y chromium` \
         (this test drives the dashboard in a real headless browser and is never skipped)"
    );
    let ui = manifest_dir().join("tests/ui");
    assert!(
        ui.join("node_modules/playwright-core/package.json")
            .exists(),
        "{}/node_modules/playwright-core is missing: run `npm ci --prefix tests/ui` \
         (scripts/test.sh does)",
        ui.display()
    );
    ui
}

/// skopeo-copies `repo:v1` through the proxy; returns whether it succeeded
/// and the client's output.
fn pull(proxy: &Proxy, repo: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = trust::skopeo_copy(
        &format!("{}/{repo}:v1", proxy.host()),
        &dir.path().join("img"),
    );
    (out.status.success(), trust::output_text(&out))
}

#[test]
fn denied_pull_appears_live_on_the_dashboard_in_headless_chromium() {
    let ui = require_browser_tooling();

    // A registry with: a signed image, an allowlisted one, one under a
    // dry-run rule, one signed by a key the attestor does not hold, and the
    // unsigned image whose denial the page must show live.
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    let other = trust::keygen(keys.path(), "other");
    let arch = common::host_arch();
    let signed = content::push_image(&reg.url(), "demo/signed", Some("v1"), arch, 71, &[4096]);
    trust::sign(
        &reg.url(),
        &format!("{}/demo/signed:v1", reg.host()),
        "demo/signed",
        &signed.digest,
        &ci,
        &["build=42"],
    );
    content::push_image(&reg.url(), "base/os", Some("v1"), arch, 72, &[4096]);
    content::push_image(&reg.url(), "dry/app", Some("v1"), arch, 73, &[4096]);
    let wrong_key = trust::prepare_case(Case::WrongKey, &reg.host(), &ci, &other, 74);
    let unsigned = trust::prepare_case(Case::Unsigned, &reg.host(), &ci, &other, 75);

    let admin = format!("127.0.0.1:{}", free_port());
    let config = TrustConfig::new(&reg.host(), &reg.url(), &[("ci-2026", &ci)]).yaml()
        + &format!("admin: {{listen: {admin}}}\n");
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));

    // History the page shows when it loads.
    for (repo, should_succeed) in [
        ("demo/signed", true),
        ("base/os", true),
        ("dry/app", true),
        (wrong_key.repo.as_str(), false),
    ] {
        let (ok, out) = pull(&proxy, repo);
        assert_eq!(
            ok, should_succeed,
            "skopeo copy of {repo} through the proxy: expected success={should_succeed}\n{out}"
        );
    }

    // Open the page, and only then pull the unsigned image.
    let artifacts = manifest_dir().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let denied_reference = format!("{}/{}", reg.host(), unsigned.repo);
    let mut child = Command::new("node")
        .current_dir(&ui)
        .arg(ui.join("dashboard.mjs"))
        .args(["--url", &format!("http://{admin}/-/ui")])
        .args(["--reference", &denied_reference])
        .args(["--attestor", trust::ATTESTOR])
        .args(["--expect", unsigned.failure])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(["--timeout-ms", "3000", "--absent-first", "--wait-go"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node tests/ui/dashboard.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let finish = |mut child: std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for node") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            out_reader.join().unwrap_or_default(),
            err_reader.join().unwrap_or_default(),
        )
    };

    // 1. The page is up with live data (and no row for the unsigned image).
    let ready = lines_rx
        .recv_timeout(Duration::from_secs(40))
        .ok()
        .filter(|l| l.starts_with("READY"));
    if ready.is_none() {
        let (status, out, err) = finish(child);
        panic!(
            "the dashboard script did not report READY (exit: {status:?})\n\
             --- stdout ---\n{out}\n--- stderr ---\n{err}"
        );
    }
    eprintln!("dashboard: {}", ready.unwrap_or_default());

    // 2. The denied pull, while the page is open.
    let (ok, out) = pull(&proxy, &unsigned.repo);
    assert!(!ok, "skopeo copy of the unsigned image succeeded:\n{out}");
    assert!(
        out.contains(unsigned.failure),
        "skopeo's error does not say {:?}:\n{out}",
        unsigned.failure
    );
    let _ = writeln!(stdin, "GO");
    let _ = stdin.flush();
    drop(stdin);

    // 3. The row appeared, its explanation is right, the screenshot is taken.
    let (status, out, err) = finish(child);
    assert!(
        status.is_some_and(|s| s.success()),
        "the dashboard check failed (exit: {status:?}; None = timed out after 60 s)\n\
         --- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("OK ")),
        "no OK line:\n{out}\n{err}"
    );
    eprintln!("dashboard: {}", out.trim());
    let png = std::fs::read(&screenshot).expect("read the screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a plausible PNG ({} bytes)",
        screenshot.display(),
        png.len()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());

    if std::env::var("PORTCULLIS_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        let docs = manifest_dir().join("docs");
        std::fs::create_dir_all(&docs).expect("create docs/");
        std::fs::copy(&screenshot, docs.join("dashboard.png")).expect("copy to docs/dashboard.png");
        eprintln!("updated {}", docs.join("dashboard.png").display());
    }
}

/// With `admin.tokenFile`, the dashboard asks for the token (calling the
/// API for nothing before it has one), refuses a wrong one, works with the
/// right one (sent as `Authorization: Bearer` on every API call) and keeps
/// it for the tab across a reload, without a cookie.
#[test]
fn the_dashboard_asks_for_the_admin_token_and_works_with_it() {
    let ui = require_browser_tooling();
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    let token = format!("dash-{}", common::fake::unique_secret("admintoken"));
    let token_file = keys.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
    let admin = format!("127.0.0.1:{}", free_port());
    let config = TrustConfig::new(&reg.host(), &reg.url(), &[("ci-2026", &ci)]).yaml()
        + &format!(
            "admin: {{listen: {admin}, tokenFile: {}}}\n",
            token_file.display()
        );
    let _proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));

    let mut child = Command::new("node")
        .current_dir(&ui)
        .arg(ui.join("login.mjs"))
        .args(["--url", &format!("http://{admin}/-/ui")])
        .args(["--token", &token])
        .args(["--wrong-token", &format!("{token}-wrong")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node tests/ui/login.mjs");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()) && out.lines().any(|l| l.starts_with("OK ")),
        "the token sign-in check failed (exit: {status:?}; None = timed out after 90 s)\n\
         --- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    eprintln!("dashboard with token: {}", out.trim());
}
