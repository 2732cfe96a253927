//! The monitoring kit (`docker/monitoring/`) against real components:
//! `promtool` checks and unit-tests the shipped alerting rules; every metric
//! the rules and the Grafana dashboard query is one a running Portcullis
//! exports; a real Prometheus, loading the shipped rule file unchanged,
//! scrapes a running Portcullis and fires `PortcullisPullDenied` on a
//! denied pull; and signed webhook alerts, de-duplicated per image and
//! rule, verify with Python's `hmac` (not Portcullis' code) while the
//! secret never shows in the logs.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::registry::Registry;
use common::trust::{self, TrustConfig, MANIFEST_ACCEPT};
use common::webhook::Webhook;
use common::{content, free_port, Proxy};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/monitoring")
}

fn rules_file() -> PathBuf {
    monitoring_dir().join("portcullis.rules.yaml")
}

/// Runs `promtool` with `args` in `docker/monitoring`; its output.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("run promtool (Debian's prometheus package; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_shipped_rules() {
    let rule_files: Vec<String> = std::fs::read_dir(monitoring_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rules.yaml"))
        .collect();
    assert!(
        !rule_files.is_empty(),
        "no *.rules.yaml in docker/monitoring"
    );
    let mut args = vec!["check", "rules"];
    args.extend(rule_files.iter().map(String::as_str));
    let checked = promtool(&args);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "portcullis.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every shipped alert has at least one unit test.
    let tests = std::fs::read_to_string(monitoring_dir().join("portcullis.test.yaml")).unwrap();
    for alert in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test"
        );
    }
}

/// The alerts of the shipped rule file.
fn alert_names() -> Vec<String> {
    let rules: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(rules_file()).unwrap()).unwrap();
    let names: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    names
}

/// Every PromQL expression of the rule files and the dashboard.
fn expressions() -> Vec<String> {
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(monitoring_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".rules.yaml") {
            let rules: Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            collect(&rules, &["expr"], &mut exprs);
        } else if name.ends_with(".json") {
            let dashboard: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            collect(&dashboard, &["expr", "query", "definition"], &mut exprs);
        }
    }
    exprs
}

/// The string values of every `keys` member anywhere in `v`.
fn collect(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if keys.contains(&k.as_str()) => out.push(s.clone()),
                    _ => collect(v, keys, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, keys, out)),
        _ => {}
    }
}

/// The `portcullis_…` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("portcullis_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not the inside of another identifier.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names a `/metrics` exposition can hold: those of its sample
/// lines, and those its `# TYPE` lines promise (a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`), so a family with no series
/// yet (a labelled counter before its first increment) still counts.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let mut parts = typed.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn the_rules_and_dashboard_query_only_metrics_portcullis_exports() {
    let exprs = expressions();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // The extraction found what the files are about (no vacuous pass).
    for name in [
        "portcullis_decisions_total",
        "portcullis_upstream_up",
        "portcullis_rule_info",
        "portcullis_requests_total",
        "portcullis_verification_duration_seconds_bucket",
        "portcullis_audit_records_dropped_total",
        "portcullis_policy_last_reload_success",
        "portcullis_build_info",
    ] {
        assert!(used.contains(name), "{name} not found in {used:?}");
    }
    // A running Portcullis that has denied a pull and served one under a
    // dry-run rule (labelled families have no lines before their first
    // series).
    let dir = tempfile::tempdir().unwrap();
    let (_registry, proxy, admin) = denying_proxy(dir.path(), "", &[]);
    assert_eq!(pull(&proxy, "elsewhere/app"), 403);
    assert_eq!(pull(&proxy, "dry/app"), 200);
    let scrape = common::http::get(&format!("http://{admin}/metrics"))
        .unwrap()
        .text();
    let exported = exported_names(&scrape);
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n--- /metrics ---\n{scrape}"
    );
    // The check itself can fail: a name that is not exported is caught.
    assert!(!exported.contains("portcullis_decision_total"));
}

/// A Prometheus server started for one test: its own port, config and
/// storage in a temporary directory; killed and reaped on drop.
struct Prometheus {
    url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`, `/metrics`) every second and
    /// evaluates `rule_file` every second.
    fn start(target: &str, rule_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  \
                   - job_name: portcullis\n    \
                     static_configs: [{{targets: [\"{target}\"]}}]\n",
                rule_file.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run prometheus (Debian's prometheus package)");
        let p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        p.wait("Prometheus ready", Duration::from_secs(30), || {
            common::http::get(&format!("{}/-/ready", p.url)).is_ok_and(|r| r.status == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let r = common::http::get(&format!("{}/api/v1/query?{q}", self.url)).unwrap();
        assert_eq!(r.status, 200, "{promql}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn wait(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\n--- prometheus log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry with unsigned `elsewhere/app:v1` and `dry/app:v1` (under a
/// dry-run rule), and a proxy requiring
/// signatures by a key that signed nothing, with an admin listener and
/// `extra` configuration. Returns the admin address (`host:port`).
fn denying_proxy(dir: &Path, extra: &str, env: &[(&str, &str)]) -> (Registry, Proxy, String) {
    let registry = Registry::start();
    content::push_image(
        &registry.url(),
        "elsewhere/app",
        Some("v1"),
        "amd64",
        7,
        &[64],
    );
    content::push_image(&registry.url(), "dry/app", Some("v1"), "amd64", 8, &[64]);
    let key = trust::keygen(dir, "ci");
    let admin = format!("127.0.0.1:{}", free_port());
    let config = TrustConfig::new(&registry.host(), &registry.url(), &[("ci", &key)]).yaml()
        + &format!("admin: {{listen: {admin}}}\n")
        + extra;
    let proxy = Proxy::start_with_env(&config, &format!("http://{admin}/healthz"), env);
    (registry, proxy, admin)
}

fn pull(proxy: &Proxy, repo: &str) -> u16 {
    common::http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/v1", proxy.url()),
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap()
    .status
}

#[test]
fn prometheus_scrapes_portcullis_and_fires_on_a_denied_pull() {
    let dir = tempfile::tempdir().unwrap();
    let (_registry, proxy, admin) = denying_proxy(dir.path(), "", &[]);
    // The shipped rule file, as it is: PortcullisPullDenied has no `for:`.
    let prometheus = Prometheus::start(&admin, &rules_file());
    prometheus.wait("the target scraped", Duration::from_secs(30), || {
        prometheus
            .query(r#"up{job="portcullis"} == 1"#)
            .iter()
            .any(|s| s["metric"]["instance"] == admin.as_str())
    });
    let rules = common::http::get(&format!("{}/api/v1/rules", prometheus.url)).unwrap();
    assert!(
        rules.text().contains("PortcullisPullDenied"),
        "rules not loaded: {}",
        rules.text()
    );
    let firing = r#"ALERTS{alertname="PortcullisPullDenied",alertstate="firing"}"#;
    // Scraped and evaluated a few times with no denial: not firing.
    prometheus.wait("build info scraped", Duration::from_secs(30), || {
        !prometheus
            .query(r#"portcullis_build_info{job="portcullis"}"#)
            .is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(prometheus.query(firing).is_empty());

    assert_eq!(pull(&proxy, "elsewhere/app"), 403);
    prometheus.wait(
        "PortcullisPullDenied firing",
        Duration::from_secs(60),
        || !prometheus.query(firing).is_empty(),
    );
    let alert = &prometheus.query(firing)[0]["metric"];
    assert_eq!(alert["rule"], "default", "{alert}");
    assert_eq!(alert["instance"], admin.as_str(), "{alert}");
    assert_eq!(alert["severity"], "warning", "{alert}");
    // The request is counted by endpoint and status, as Prometheus saw it.
    let denied = prometheus
        .query(r#"portcullis_requests_total{job="portcullis",endpoint="manifest",status="403"}"#);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["value"][1], "1");
    // And nothing else fires: the upstream is up, reloads are fine.
    let others =
        prometheus.query(r#"ALERTS{alertstate="firing",alertname!="PortcullisPullDenied"}"#);
    assert!(others.is_empty(), "{others:?}");
}

#[test]
fn webhook_alerts_are_signed_deduplicated_and_the_secret_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "pc-webhook-S3CRET-5f1d9e0a7b3c";
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let webhook = Webhook::start();
    let extra = format!(
        "alerts:\n  coalesce: 2s\n  webhooks:\n    - url: {}\n      on: [deny]\n      \
         signingSecretFile: {}\n",
        webhook.url(),
        secret_file.display()
    );
    // Debug logging: the most the proxy ever says.
    let (registry, proxy, admin) = denying_proxy(dir.path(), &extra, &[("RUST_LOG", "debug")]);

    // Three denials of one image by one rule: a verdict computed, then two
    // from the cache.
    for _ in 0..3 {
        assert_eq!(pull(&proxy, "elsewhere/app"), 403);
    }
    let seen = webhook.wait_for(Duration::from_secs(20), "the coalesced alert", |s| {
        s.iter().any(|v| v["count"].is_u64())
    });
    let reference = format!("{}/elsewhere/app", registry.host());
    // One alert at once, then one with the count of the two repeats.
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(seen[0].get("count").is_none(), "{:#}", seen[0]);
    assert_eq!(seen[0]["record"]["cache_hit"], false);
    assert_eq!(seen[1]["count"], 2, "{:#}", seen[1]);
    assert_eq!(seen[1]["record"]["cache_hit"], true);
    for alert in &seen {
        assert_eq!(alert["event"], "deny");
        assert_eq!(alert["record"]["reference"], reference.as_str());
        assert_eq!(alert["record"]["rule"], "default admission rule");
    }
    // Nothing more arrives for those three pulls.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(webhook.seen().len(), 2, "{:#?}", webhook.seen());
    let metrics = common::http::get(&format!("http://{admin}/metrics"))
        .unwrap()
        .text();
    assert!(
        metrics.contains("portcullis_alerts_coalesced_total 2"),
        "{metrics}"
    );

    // Each body verifies with an independent HMAC implementation...
    let raw = webhook.raw();
    assert_eq!(raw.len(), 2);
    for r in &raw {
        let signature = r.header("x-portcullis-signature").unwrap();
        assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
        assert!(common::webhook::python_verifies(&secret_file, r), "{r:?}");
    }
    // ...and that check fails for a changed body, timestamp or secret.
    let mut tampered = raw[0].clone();
    tampered.body[10] ^= 1;
    assert!(!common::webhook::python_verifies(&secret_file, &tampered));
    let mut retimed = raw[0].clone();
    for (name, value) in &mut retimed.headers {
        if name == "x-portcullis-timestamp" {
            *value = (value.parse::<u64>().unwrap() - 1).to_string();
        }
    }
    assert!(!common::webhook::python_verifies(&secret_file, &retimed));
    let other_secret = dir.path().join("other.secret");
    std::fs::write(&other_secret, "another-secret-of-enough-length\n").unwrap();
    assert!(!common::webhook::python_verifies(&other_secret, &raw[0]));

    // The secret is nowhere in the logs (which did log at debug level).
    let logs = proxy.logs();
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "not at debug:\n{logs}"
    );
    assert!(logs.contains("alert delivered"), "{logs}");
    assert!(!logs.contains(secret), "the secret leaked:\n{logs}");
    assert!(
        !logs.contains("S3CRET"),
        "part of the secret leaked:\n{logs}"
    );
    // Nor in what `portcullis check` prints of this configuration.
    let check = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(proxy.config_path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{printed}");
    assert!(!printed.contains("S3CRET"), "{printed}");
}
