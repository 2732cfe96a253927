//! Name patterns are matched on canonical names, however they are written
//! (security review, issue 19 item 4): every spelling of a Docker Hub name
//! in an ALWAYS_DENY rule blocks the pull through the proxy; a pattern
//! with a tag or a digest is refused, naming it, by `portcullis check` and
//! by `serve`; `check` reports patterns whose registry is no upstream.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::clients::run_unchecked;
use common::fake::{Fake, FakeImage};
use common::trust::{get_manifest_via, output_text, PORTCULLIS};
use common::Proxy;

/// A proxy config whose one upstream is `docker.io`, served by `url` (the
/// fake, standing in for Docker Hub); everything is allowed except what
/// `rules` (YAML lines under `repositoryAdmissionRules:`) say.
fn docker_hub_config(url: &str, rules: &str, allowlist: &str) -> String {
    let block = |key: &str, lines: &str, empty: &str| {
        if lines.is_empty() {
            format!("  {key}: {empty}\n")
        } else {
            format!("  {key}:\n{lines}")
        }
    };
    format!(
        "listen: {{listen}}\n\
         upstreams:\n  - registry: docker.io\n    url: {url}\n    default: true\n\
         policy:\n  defaultAdmissionRule: {{evaluationMode: ALWAYS_ALLOW}}\n{}{}",
        block("admissionWhitelistPatterns", allowlist, "[]"),
        block("repositoryAdmissionRules", rules, "{}"),
    )
}

fn deny_rule(pattern: &str) -> String {
    format!("    \"{pattern}\": {{evaluationMode: ALWAYS_DENY}}\n")
}

fn pull(proxy: &Proxy, name: &str, reference: &str) -> u16 {
    get_manifest_via(proxy, name, reference).status
}

fn put_official(fake: &Fake, name: &str, seed: u64) -> FakeImage {
    fake.put_image(&format!("library/{name}"), Some("v1"), seed, 64)
}

#[test]
fn every_docker_hub_spelling_of_a_deny_rule_blocks_the_pull() {
    let fake = Fake::start();
    let nginx = put_official(&fake, "nginx", 1);
    put_official(&fake, "redis", 2);
    for spelling in [
        "docker.io/library/nginx",
        "docker.io/nginx",
        "index.docker.io/library/nginx",
        "index.docker.io/nginx",
        "registry-1.docker.io/library/nginx",
        "Docker.io/library/nginx",
    ] {
        let proxy = Proxy::start(&docker_hub_config(
            &fake.url(),
            &deny_rule(spelling),
            "    - namePattern: docker.io/library/alpine\n",
        ));
        // `docker pull nginx`, `docker pull docker.io/library/nginx`, by
        // tag and by digest: all the same image, all denied.
        for (name, reference) in [
            ("nginx", "v1"),
            ("library/nginx", "v1"),
            ("library/nginx", nginx.manifest_digest.as_str()),
        ] {
            assert_eq!(
                pull(&proxy, name, reference),
                403,
                "rule {spelling:?}: {name}:{reference} was served"
            );
        }
        assert_eq!(pull(&proxy, "redis", "v1"), 200, "rule {spelling:?}");
        let logs = proxy.logs();
        assert!(
            logs.contains("repository admission rule docker.io/library/nginx"),
            "rule {spelling:?}: the denial names the canonical rule:\n{logs}"
        );
    }
}

#[test]
fn allowlist_spellings_are_read_as_canonical_names_with_globs_kept() {
    let fake = Fake::start();
    put_official(&fake, "alpine", 1);
    put_official(&fake, "busybox", 2);
    fake.put_image("bitnami/redis", Some("v1"), 3, 64);
    fake.put_image("other/app", Some("v1"), 4, 64);
    // Everything is denied but what the allowlist exempts.
    let proxy = Proxy::start(
        &docker_hub_config(
            &fake.url(),
            &deny_rule("docker.io/**"),
            "    - namePattern: index.docker.io/alpin*\n    \
             - namePattern: Docker.io/bitnami/**\n",
        )
        .replace(
            "{evaluationMode: ALWAYS_ALLOW}",
            "{evaluationMode: ALWAYS_DENY}",
        ),
    );
    assert_eq!(pull(&proxy, "alpine", "v1"), 200);
    assert_eq!(pull(&proxy, "bitnami/redis", "v1"), 200);
    assert_eq!(pull(&proxy, "busybox", "v1"), 403);
    assert_eq!(pull(&proxy, "other/app", "v1"), 403);
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("portcullis.yaml");
    let listen = format!("127.0.0.1:{}", common::free_port());
    std::fs::write(&path, text.replace("{listen}", &listen)).unwrap();
    path
}

fn check(config: &Path) -> Output {
    run_unchecked(
        Command::new(PORTCULLIS)
            .arg("check")
            .arg("--config")
            .arg(config),
        "portcullis check",
    )
}

/// Runs `portcullis serve`; it must exit (refusing the config) within
/// 20 s, else it is killed and the test fails.
fn serve_must_refuse(config: &Path) -> Output {
    let mut child = Command::new(PORTCULLIS)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve started with {}:\n{}",
                config.display(),
                output_text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn patterns_with_a_tag_or_a_digest_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cases = [
        (
            deny_rule("docker.io/library/nginx:v1"),
            String::new(),
            "docker.io/library/nginx:v1",
            "tag",
        ),
        (
            deny_rule(&format!("docker.io/library/nginx@{digest}")),
            String::new(),
            "docker.io/library/nginx@sha256:abab",
            "digest",
        ),
        (
            String::new(),
            "    - namePattern: docker.io/library/nginx:latest\n".to_owned(),
            "docker.io/library/nginx:latest",
            "tag",
        ),
    ];
    for (rules, allowlist, pattern, what) in cases {
        let config = write_config(
            dir.path(),
            &docker_hub_config("http://127.0.0.1:1", &rules, &allowlist),
        );
        let out = check(&config);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "check of {pattern}:\n{text}");
        assert!(
            text.contains(pattern) && text.contains(what),
            "check must name {pattern} and say it holds a {what}:\n{text}"
        );
        let out = serve_must_refuse(&config);
        let text = output_text(&out);
        assert!(!out.status.success(), "serve with {pattern}:\n{text}");
        assert!(text.contains(pattern), "serve must name {pattern}:\n{text}");
    }
}

#[test]
fn check_reports_patterns_no_upstream_can_match_and_the_names_it_rewrote() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &docker_hub_config(
            "http://127.0.0.1:1",
            &(deny_rule("dockerio/library/nginx") + &deny_rule("docker.io/nginx")),
            "    - namePattern: gcr.io/google_containers/*\n",
        ),
    );
    let out = check(&config);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for pattern in ["dockerio/library/nginx", "gcr.io/google_containers/*"] {
        assert!(
            stderr.lines().any(|l| l.starts_with("warning: ")
                && l.contains(pattern)
                && l.contains("not a configured upstream")),
            "check must warn that {pattern} matches no upstream:\n{text}"
        );
    }
    assert!(
        !stderr.contains("\"docker.io/library/nginx\" is not"),
        "{text}"
    );
    assert!(
        text.contains("\"docker.io/nginx\" is read as \"docker.io/library/nginx\""),
        "check must show the canonical form it reads:\n{text}"
    );

    // An upstream named by a Docker Hub alias would put requests under a
    // name no canonical pattern matches: refused.
    let config = write_config(
        dir.path(),
        "listen: {listen}\nupstreams:\n  - registry: index.docker.io\n",
    );
    let out = check(&config);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("write registry: docker.io"), "{text}");
}
