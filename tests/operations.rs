//! Operating Portcullis: the audit trail (content, durability under
//! `kill -9`, rotation), `/metrics`, and the admin listener keeping the
//! registry port to `/v2/` only.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::run;
use common::content;
use common::registry::Registry;
use common::trust::{self, TrustConfig, MANIFEST_ACCEPT};
use common::{free_port, Proxy};

struct Setup {
    registry: Registry,
    proxy: Proxy,
    admin: String,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
    signed_digest: String,
}

/// A registry with `demo/app:v1` signed and `elsewhere/app:v1` unsigned,
/// and a proxy enforcing signatures, with an admin listener and an audit
/// file configured by `audit_yaml` (`{path}` is replaced).
fn setup(audit_yaml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let signed = content::push_image(&registry.url(), "demo/app", Some("v1"), "amd64", 1, &[64]);
    content::push_image(
        &registry.url(),
        "elsewhere/app",
        Some("v1"),
        "amd64",
        2,
        &[64],
    );
    let key = trust::keygen(dir.path(), "ci");
    trust::sign(
        &registry.url(),
        &format!("{}/demo/app:v1", registry.host()),
        "demo/app",
        &signed.digest,
        &key,
        &[],
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let audit = dir.path().join("audit").join("audit.jsonl");
    let config = TrustConfig::new(&registry.host(), &registry.url(), &[("ci-2026", &key)]).yaml()
        + &format!("admin: {{listen: {admin}}}\n")
        + &audit_yaml.replace("{path}", &audit.display().to_string());
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    Setup {
        registry,
        proxy,
        admin: format!("http://{admin}"),
        audit,
        _dir: dir,
        signed_digest: signed.digest,
    }
}

fn get_manifest(proxy: &Proxy, repo: &str) -> u16 {
    common::http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/v1", proxy.url()),
        &[("Accept", MANIFEST_ACCEPT), ("User-Agent", "ops-test/1.0")],
        &[],
    )
    .unwrap()
    .status
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

fn metric(admin: &str, series: &str) -> f64 {
    let text = common::http::get(&format!("{admin}/metrics"))
        .unwrap()
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn a_denied_pull_is_audited_counted_and_explained() {
    let s = setup("audit: {path: {path}, fsync: always}\n");
    let deny_series =
        r#"portcullis_decisions_total{verdict="deny",rule="default",reason="no-signatures"}"#;
    assert_eq!(metric(&s.admin, deny_series), 0.0);
    assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
    assert_eq!(get_manifest(&s.proxy, "demo/app"), 200);

    assert!(
        trust::wait_until(Duration::from_secs(5), || lines(&s.audit).len() == 2),
        "expected 2 audit lines, got {:?}",
        lines(&s.audit)
    );
    let records = lines(&s.audit);
    let deny = records.iter().find(|r| r["verdict"] == "deny").unwrap();
    let canonical = format!("{}/elsewhere/app", s.registry.host());
    assert_eq!(deny["reference"], canonical.as_str());
    assert_eq!(deny["tag"], "v1");
    assert!(deny["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(deny["rule"], "default admission rule");
    assert_eq!(deny["enforcement_mode"], "ENFORCED_BLOCK_AND_AUDIT_LOG");
    assert_eq!(deny["user_agent"], "ops-test/1.0");
    assert!(deny["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(deny["request_id"].as_u64().is_some());
    assert!(deny["time"].as_str().unwrap().ends_with('Z'));
    assert!(deny["latency_ms"].as_f64().is_some());
    assert_eq!(deny["cache_hit"], false);
    assert_eq!(deny["attestors"][0]["name"], "built-by-ci");
    assert_eq!(deny["attestors"][0]["satisfied"], false);
    assert!(deny["reason"]
        .as_str()
        .unwrap()
        .contains("attestor built-by-ci: no valid signature"));
    let allow = records.iter().find(|r| r["verdict"] == "allow").unwrap();
    assert_eq!(allow["digest"], s.signed_digest.as_str());
    assert_eq!(allow["attestors"][0]["evidence"][0]["result"], "valid");
    assert_eq!(allow["attestors"][0]["evidence"][0]["key_id"], "ci-2026");

    // The deny counter moved, and the API lists the denial.
    assert_eq!(metric(&s.admin, deny_series), 1.0);
    let api = common::http::get(&format!("{}/-/api/decisions?verdict=deny", s.admin))
        .unwrap()
        .text();
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(api["decisions"][0]["reference"], canonical.as_str());

    // A cache hit is recorded as one.
    assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
    assert!(trust::wait_until(Duration::from_secs(5), || lines(
        &s.audit
    )
    .len()
        == 3));
    assert_eq!(lines(&s.audit)[2]["cache_hit"], true);
    assert!(metric(&s.admin, "portcullis_verdict_cache_hits_total") >= 1.0);
}

#[test]
fn the_registry_port_serves_only_the_registry_api_when_admin_is_separate() {
    let s = setup("");
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/-/ui",
        "/-/api/decisions",
    ] {
        let r = common::http::get(&format!("{}{path}", s.proxy.url())).unwrap();
        assert_eq!(r.status, 404, "registry port answered {path}");
    }
    for path in ["/metrics", "/healthz", "/readyz", "/-/ui", "/-/api/policy"] {
        let r = common::http::get(&format!("{}{path}", s.admin)).unwrap();
        assert_eq!(r.status, 200, "admin port did not answer {path}");
    }
    let r = common::http::get(&format!("{}/v2/", s.admin)).unwrap();
    assert_eq!(r.status, 404, "admin port must not serve the registry API");
    let policy: serde_json::Value = serde_json::from_str(
        &common::http::get(&format!("{}/-/api/policy", s.admin))
            .unwrap()
            .text(),
    )
    .unwrap();
    assert_eq!(policy["attestors"][0]["keys"][0]["id"], "ci-2026");
}

#[test]
fn kill_9_loses_at_most_the_fsync_interval() {
    let interval = Duration::from_millis(200);
    let s = setup("audit: {path: {path}, fsync: interval, fsyncInterval: 200ms}\n");
    // Decisions at a steady pace; remember when each response completed.
    let mut completed = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let repo = if completed.len() % 2 == 0 {
            "elsewhere/app"
        } else {
            "demo/app"
        };
        let status = get_manifest(&s.proxy, repo);
        assert!(status == 403 || status == 200);
        completed.push(Instant::now());
    }
    run(
        Command::new("kill").args(["-9", &s.proxy.pid().to_string()]),
        "kill -9",
    );
    let killed = Instant::now();
    let written = lines(&s.audit).len();
    // Every decision answered more than one fsync interval (plus scheduling
    // slack) before the kill must be on disk.
    let slack = Duration::from_millis(100);
    let must_have = completed
        .iter()
        .filter(|t| killed.duration_since(**t) > interval + slack)
        .count();
    assert!(
        written >= must_have,
        "audit trail lost records older than the fsync interval: {written} lines, \
         {must_have} decisions answered more than {:?} before kill -9 ({} in all)",
        interval + slack,
        completed.len()
    );
    assert!(written <= completed.len(), "more lines than decisions");
    assert!(must_have > 10, "the load was too small to show anything");
}

#[test]
fn the_audit_file_rotates_by_size() {
    let s = setup("audit: {path: {path}, fsync: always, maxSizeBytes: 2000, maxFiles: 3}\n");
    for _ in 0..8 {
        assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
    }
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", s.audit.display()));
    let total = || lines(&s.audit).len() + (1..=3).map(|n| lines(&rotated(n)).len()).sum::<usize>();
    assert!(
        trust::wait_until(Duration::from_secs(5), || total() == 8),
        "expected 8 records across the rotated files, found {}",
        total()
    );
    assert!(rotated(1).exists(), "no rotation happened");
    for n in 1..=3 {
        if let Ok(meta) = std::fs::metadata(rotated(n)) {
            assert!(meta.len() < 2000 + 4096, "rotated file {n} is too large");
        }
    }
}

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The audit trail (client addresses, user agents, justifications) is
/// never world-readable: `0600` by default, `0640` with `groupReadable`,
/// for the live file and the rotated ones alike.
#[test]
fn audit_files_are_private_before_and_after_rotation() {
    for (options, want) in [("", 0o600), (", groupReadable: true", 0o640)] {
        let s = setup(&format!(
            "audit: {{path: {{path}}, fsync: always, maxSizeBytes: 2000, maxFiles: 2{options}}}\n"
        ));
        assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
        assert!(
            trust::wait_until(Duration::from_secs(5), || !lines(&s.audit).is_empty()),
            "nothing was audited"
        );
        assert_eq!(
            mode_of(&s.audit),
            want,
            "audit file mode with options {options:?}: {:o}",
            mode_of(&s.audit)
        );
        let rotated = std::path::PathBuf::from(format!("{}.1", s.audit.display()));
        for _ in 0..8 {
            assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
        }
        assert!(
            trust::wait_until(Duration::from_secs(5), || rotated.exists()),
            "no rotation happened"
        );
        assert_eq!(mode_of(&rotated), want, "rotated file, options {options:?}");
        assert_eq!(
            mode_of(&s.audit),
            want,
            "new file after rotation, options {options:?}"
        );
    }
}

/// With `admin.tokenFile`, every admin endpoint but the health endpoints,
/// the dashboard page and its redirect requires the bearer token: nothing
/// or a wrong token gets `401` with `WWW-Authenticate: Bearer`, the token
/// gets the data. The token never reaches the log.
#[test]
fn the_admin_token_guards_everything_but_health_and_the_page() {
    let fake = common::fake::Fake::start();
    fake.put_image("team/app", Some("v1"), 1, 100);
    let dir = tempfile::tempdir().unwrap();
    let token = common::fake::unique_secret("admintoken");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = fake.proxy_config()
        + &format!(
            "admin: {{listen: {admin}, tokenFile: {}}}\n",
            token_file.display()
        );
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    // A decision, so the API has something to withhold.
    assert_eq!(get_manifest(&proxy, "team/app"), 200);

    let request = |method: &str, path: &str, authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        common::http::request(method, &format!("http://{admin}{path}"), &headers, &[]).unwrap()
    };
    let right = format!("Bearer {token}");
    let wrong = format!("Bearer {token}x");
    for path in [
        "/metrics",
        "/-/api/decisions",
        "/-/api/decisions?verdict=allow",
        "/-/api/summary",
        "/-/api/policy",
        "/no-such-page",
    ] {
        for (what, authorization) in [
            ("no token", None),
            ("a wrong token", Some(wrong.as_str())),
            ("a Basic header", Some("Basic YWRtaW46YWRtaW4=")),
            ("a bare token", Some(token.as_str())),
        ] {
            let r = request("GET", path, authorization);
            assert_eq!(r.status, 401, "GET {path} with {what}: {}", r.text());
            let challenge = r.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Bearer "),
                "GET {path} with {what}: challenge {challenge:?}"
            );
            assert!(
                !r.text().contains("team/app") && !r.text().contains("portcullis_"),
                "GET {path} with {what} leaked data: {}",
                r.text()
            );
        }
        let r = request("GET", path, Some(&right));
        let want = if path == "/no-such-page" { 404 } else { 200 };
        assert_eq!(r.status, want, "GET {path} with the token: {}", r.text());
    }
    let r = request("GET", "/-/api/decisions", Some(&right));
    assert!(r.text().contains("team/app"), "{}", r.text());
    let r = request("GET", "/-/api/policy", Some(&format!("bearer {token}")));
    assert_eq!(r.status, 200, "the scheme is case-insensitive");
    let r = request("POST", "/-/api/policy", Some(&right));
    assert_eq!(r.status, 405);
    let r = request("POST", "/-/api/policy", None);
    assert_eq!(r.status, 401);

    // Open without the token: health, the page (which then asks for the
    // token) and the redirect to it.
    for (path, want) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/-/ui", 200),
        ("/", 302),
    ] {
        let r = request("GET", path, None);
        assert_eq!(r.status, want, "GET {path} without a token: {}", r.text());
    }
    let page = request("GET", "/-/ui", None).text();
    assert!(page.contains(r#"<meta name="portcullis-admin-auth" content="token">"#));
    assert!(!page.contains(&token));

    let logs = proxy.logs();
    assert!(
        logs.contains("/-/api/policy"),
        "nothing logged to check:\n{logs}"
    );
    assert!(
        !logs.contains(&token),
        "the admin token reached the log:\n{logs}"
    );
}

/// A webhook receiver: records each request body, answers 200.
fn receiver() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send((request_line, body)).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_denied_pull_reaches_the_webhook() {
    let (url, deliveries) = receiver();
    let s = setup(&format!(
        "alerts: {{webhooks: [{{url: \"{url}\", format: json, on: [deny]}}]}}\n"
    ));
    assert_eq!(get_manifest(&s.proxy, "demo/app"), 200);
    assert_eq!(get_manifest(&s.proxy, "elsewhere/app"), 403);
    let (line, body) = deliveries
        .recv_timeout(Duration::from_secs(10))
        .expect("no webhook delivery");
    assert!(line.starts_with("POST /hook"), "{line}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["event"], "deny");
    assert_eq!(
        body["record"]["reference"],
        format!("{}/elsewhere/app", s.registry.host()).as_str()
    );
    // The allowed pull sent nothing.
    assert!(deliveries.recv_timeout(Duration::from_millis(500)).is_err());
    assert!(trust::wait_until(Duration::from_secs(5), || {
        metric(&s.admin, "portcullis_alerts_sent_total") >= 1.0
    }));
}

#[test]
fn break_glass_serves_a_denied_image_and_is_audited_and_alerted() {
    let (url, deliveries) = receiver();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("oncall.token");
    std::fs::write(&token_file, "glass-7d1c9e5b2a4f8e60\n").unwrap();
    let s = setup(&format!(
        "audit: {{path: {{path}}, fsync: always}}\n\
         alerts: {{webhooks: [{{url: \"{url}\", on: [breakglass]}}]}}\n\
         breakGlass:\n  enabled: true\n  credentials:\n    - name: oncall\n      tokenFile: {}\n",
        token_file.display()
    ));
    let pull = |header: Option<&str>| {
        let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
        if let Some(h) = header {
            headers.push(("X-Portcullis-Break-Glass", h));
        }
        common::http::request(
            "GET",
            &format!("{}/v2/elsewhere/app/manifests/v1", s.proxy.url()),
            &headers,
            &[],
        )
        .unwrap()
    };
    assert_eq!(pull(None).status, 403);
    assert_eq!(pull(Some("not-the-token-at-all INC-1")).status, 403);
    assert_eq!(
        pull(Some("glass-7d1c9e5b2a4f8e60")).status,
        403,
        "a justification is required"
    );
    let served = pull(Some("glass-7d1c9e5b2a4f8e60 INC-42 prod is down"));
    assert_eq!(served.status, 200, "{}", served.text());
    // The image's blobs are served to break-glass requests only: the
    // admission is its user's, not everyone's.
    let manifest: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob_url = format!("{}/v2/elsewhere/app/blobs/{layer}", s.proxy.url());
    let anonymous = common::http::get(&blob_url).unwrap();
    assert_eq!(
        anonymous.status, 403,
        "an anonymous client got a break-glass blob"
    );
    let blob = common::http::request(
        "GET",
        &blob_url,
        &[(
            "X-Portcullis-Break-Glass",
            "glass-7d1c9e5b2a4f8e60 INC-42 prod is down",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(
        pull(None).status,
        403,
        "the denial still holds for everyone else"
    );

    // The audit writer is asynchronous: wait for the last record expected
    // (the blob served by break-glass, and the denial after it).
    let denials = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|r| r["verdict"] == "deny" && r["subject"] == "manifest")
            .count()
    };
    assert!(trust::wait_until(Duration::from_secs(5), || {
        let records = lines(&s.audit);
        records
            .iter()
            .any(|r| r["verdict"] == "breakglass" && r["subject"] == "blob")
            && denials(&records) >= 4
    }));
    let records = lines(&s.audit);
    let glass = records
        .iter()
        .find(|r| r["verdict"] == "breakglass")
        .unwrap();
    assert_eq!(glass["identity"], "oncall");
    assert_eq!(glass["break_glass_justification"], "INC-42 prod is down");
    assert_eq!(
        denials(&records),
        4,
        "the refused attempts are audited as denials"
    );
    let blob_glass = records
        .iter()
        .find(|r| r["verdict"] == "breakglass" && r["subject"] == "blob")
        .expect("the break-glass blob serve is audited");
    assert_eq!(blob_glass["identity"], "oncall");
    assert_eq!(blob_glass["digest"], layer);
    assert!(
        records
            .iter()
            .any(|r| r["verdict"] == "deny" && r["subject"] == "blob" && r["digest"] == layer),
        "the anonymous blob request is audited as a denial"
    );
    let text = std::fs::read_to_string(&s.audit).unwrap();
    assert!(
        !text.contains("glass-7d1c9e5b2a4f8e60"),
        "the token leaked into the audit trail"
    );
    assert!(
        !s.proxy.logs().contains("glass-7d1c9e5b2a4f8e60"),
        "the token leaked into the log"
    );
    let (_, body) = deliveries
        .recv_timeout(Duration::from_secs(10))
        .expect("no break-glass alert");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["event"], "breakglass");
    assert_eq!(body["record"]["identity"], "oncall");
}
