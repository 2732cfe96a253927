//! The soak (issue 17), in CI: `scripts/soak.sh 60` runs 64 clients for
//! 60 seconds against a real registry and this build's proxy, switching
//! between two policies every 3 s, and must pass: no 5xx, no wrong verdict,
//! as many audit lines as decisions, RSS and descriptors flat. The full
//! 10-minute run and its figures are in docs/reliability.md.
//!
//! A second, short run flips one image's expected verdict
//! (`PORTCULLIS_SOAK_FLIP`) and must fail on exactly that: the checks can
//! fail.
//!
//! Each run has its own temporary directory and free loopback ports, and
//! runs in its own process group, killed when the test ends however it
//! ends.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/soak.sh` in its own process group, killed with the group on drop.
struct Soak {
    child: Child,
    log: PathBuf,
}

impl Soak {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Soak {
        let log = dir.join("soak.log");
        let out = std::fs::File::create(&log).expect("create the soak's log");
        let err = out.try_clone().expect("clone the log's descriptor");
        let child = Command::new("bash")
            .arg(root().join("scripts/soak.sh"))
            .args(args)
            .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
            .env("TMPDIR", dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("run scripts/soak.sh");
        Soak { child, log }
    }

    /// Waits for the exit code (the script stops by itself; this bounds a
    /// hang at `limit`).
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for soak.sh") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "soak.sh still running after {limit:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Runs the soak to its end; a start that lost a free port to another
/// test (exit 2, "address already in use") is tried again.
fn run_soak(dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    for attempt in 1.. {
        let mut soak = Soak::start(dir, args, env);
        let code = soak.wait(limit);
        let output = soak.output();
        if code == 2 && output.contains("in use") && attempt < 3 {
            continue;
        }
        return (code, output);
    }
    unreachable!()
}

fn report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the soak's JSON report");
    serde_json::from_str(&text).expect("the soak's JSON report parses")
}

fn n(v: &serde_json::Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path} in the report: {v}"))
}

#[test]
fn sixty_seconds_of_load_with_policy_reloads_every_three_seconds_pass_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("soak.json");
    let started = Instant::now();
    let (code, output) = run_soak(
        dir.path(),
        &["60", "--json", json.to_str().expect("utf-8 path")],
        &[],
        Duration::from_secs(300),
    );
    eprintln!("{output}\nsoak.sh took {:?}", started.elapsed());
    assert_eq!(code, 0, "the 60-second soak failed:\n{output}");

    let r = report(&json);
    assert_eq!(r["passed"], true);
    assert_eq!(n(&r, "clients"), 64.0);
    assert!(n(&r, "load_seconds") >= 60.0);
    for zero in [
        "responses_5xx",
        "proxy_5xx",
        "connection_errors",
        "wrong_verdicts",
        "wrong_verdicts_in_transitions",
        "proxy_reloads.failure",
    ] {
        assert_eq!(n(&r, zero), 0.0, "{zero} in {r}");
    }
    // Load that means something: thousands of judged requests, every kind
    // of operation, both verdicts, and the policy switched ~19 times.
    assert!(n(&r, "judged") >= 5_000.0, "{r}");
    assert!(n(&r, "served_and_checked") >= 1_000.0, "{r}");
    assert!(n(&r, "refused_and_checked") >= 1_000.0, "{r}");
    for op in ["get-tag", "get-digest", "head", "blob"] {
        assert!(n(&r, &format!("operations.{op}")) > 0.0, "no {op} in {r}");
    }
    assert!(n(&r, "transitions") >= 15.0, "{r}");
    assert!(
        n(&r, "proxy_reloads.success") >= n(&r, "transitions"),
        "{r}"
    );
    // Every decision is an audit line (and the clients saw each one).
    let lines = n(&r, "audit.lines");
    assert!(lines > 0.0);
    assert_eq!(lines, n(&r, "audit.decisions"), "{r}");
    assert_eq!(lines, n(&r, "audit.records_written"), "{r}");
    assert_eq!(lines, n(&r, "audit.decisions_seen_by_clients"), "{r}");
    // Flat: the script's own tolerances, checked again here.
    assert!(
        n(&r, "rss_kib.end") <= n(&r, "rss_kib.start") + n(&r, "rss_tolerance_mib") * 1024.0,
        "{r}"
    );
    assert!(
        n(&r, "fds.end") <= n(&r, "fds.start") + n(&r, "fd_tolerance"),
        "{r}"
    );
}

#[test]
fn the_soak_fails_when_one_image_is_expected_to_get_the_other_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("soak.json");
    // soak/a is allowed under both policies; the run is told it is denied.
    let (code, output) = run_soak(
        dir.path(),
        &[
            "8",
            "--clients",
            "8",
            "--reload-every",
            "2",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
        &[("PORTCULLIS_SOAK_FLIP", "soak/a")],
        Duration::from_secs(120),
    );
    assert_eq!(
        code, 1,
        "a flipped expectation did not fail the soak:\n{output}"
    );
    let r = report(&json);
    assert_eq!(r["passed"], false);
    assert!(n(&r, "wrong_verdicts") > 0.0, "{r}");
    // Only the flipped expectation failed: the proxy itself was fine.
    let failures = r["failures"].as_array().expect("failures");
    assert!(
        failures.iter().all(|f| f
            .as_str()
            .is_some_and(|f| f.contains("wrong verdicts") || f.contains("match neither policy"))),
        "{r}"
    );
    assert_eq!(n(&r, "responses_5xx"), 0.0, "{r}");
}
