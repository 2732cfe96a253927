//! README "From Binary Authorization and cosign to an enforcing proxy",
//! replayed: the configuration is the README's own block (only its
//! example host names, ports and paths are replaced, and each replacement
//! must find its text, so the README cannot drift from what is tested),
//! the policy is shaped as `gcloud container binauthz policy export`
//! writes it, the attestor as `attestors describe` prints it, and the key
//! is a cosign encrypted key (`cosign generate-key-pair`'s format, written
//! by an independent implementation: PyNaCl and python3-cryptography, see
//! `common::cosign`).
//!
//! Against a real distribution registry that requires a login, with real
//! clients: `portcullis sign` and `verify --key` log in from a docker
//! `config.json`; the proxy logs in to the registry with the same file;
//! podman logs in to the proxy over TLS with an htpasswd user; the signed
//! image is served, an unsigned one is denied naming the rule, and the
//! denial reaches the audit trail (with who pulled), `/metrics` (behind the
//! admin token) and a webhook whose HMAC Python's `hmac` checks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::certs::Certs;
use common::clients::{self, Podman};
use common::content;
use common::registry::Registry;
use common::trust;
use common::webhook::{self, Webhook};
use common::{free_port, http, Proxy};

/// The README's walkthrough configuration block.
fn readme_config() -> String {
    let readme = include_str!("../README.md");
    let marker = "<!-- walkthrough: portcullis.yaml -->\n```yaml\n";
    let start = readme
        .find(marker)
        .expect("README has the walkthrough's configuration block")
        + marker.len();
    let len = readme[start..].find("```\n").expect("the block ends");
    readme[start..start + len].to_owned()
}

/// Replaces each `(from, to)` in `text`, failing when `from` is not there.
fn replace_all(mut text: String, pairs: &[(&str, &str)]) -> String {
    for (from, to) in pairs {
        assert!(
            text.contains(from),
            "the README's walkthrough block no longer contains {from:?}:\n{text}"
        );
        text = text.replace(from, to);
    }
    text
}

/// The policy as `gcloud container binauthz policy export` writes it: this
/// proxy's cluster requires the CI attestor, another cluster is frozen.
const POLICY_EXPORT: &str = r#"admissionWhitelistPatterns:
- namePattern: gcr.io/google_containers/*
clusterAdmissionRules:
  us-central1-a.prod:
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    evaluationMode: REQUIRE_ATTESTATION
    requireAttestationsBy:
    - projects/acme/attestors/built-by-ci
  us-east1-b.frozen:
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    evaluationMode: ALWAYS_DENY
defaultAdmissionRule:
  enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
  evaluationMode: ALWAYS_DENY
etag: '"B1bQd0mn1k1i"'
globalPolicyEvaluationMode: ENABLE
name: projects/acme/policy
updateTime: '2026-11-30T10:00:00.123456Z'
"#;

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    clients::run_unchecked(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .envs(env.iter().copied()),
        &format!("portcullis {}", args.join(" ")),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

#[test]
fn the_readme_walkthrough_ends_enforcing_authenticated_and_monitored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let secret = common::fake::unique_secret;

    // A private registry: pulls and pushes need a login.
    let (user, password) = ("ci", secret("registry-password"));
    let upstream_htpasswd = write(
        d,
        "upstream.htpasswd",
        &clients::htpasswd_entry(user, &password),
    );
    let reg = Registry::start_with_extra(&format!(
        "auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
        upstream_htpasswd.display()
    ));
    // The images, built elsewhere and copied in with the registry login.
    let build = Registry::start();
    let signed = content::push_image(
        &build.url(),
        "acme/app",
        Some("v1"),
        common::host_arch(),
        71,
        &[9000],
    );
    content::push_image(
        &build.url(),
        "acme/unsigned",
        Some("v1"),
        common::host_arch(),
        72,
        &[9000],
    );
    for repo in ["acme/app", "acme/unsigned"] {
        clients::run(
            Command::new(clients::SKOPEO)
                .args(["--insecure-policy", "copy", "--preserve-digests"])
                .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("--dest-creds={user}:{password}"))
                .arg(format!("docker://{}/{repo}:v1", build.host()))
                .arg(format!("docker://{}/{repo}:v1", reg.host())),
            "skopeo copy into the private registry",
        );
    }
    let docker_dir = d.join("docker");
    std::fs::create_dir(&docker_dir).expect("mkdir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let docker_config = write(
        &docker_dir,
        "config.json",
        &format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host()),
    );
    let docker_env = docker_dir.display().to_string();

    // Steps 1 and 2: the export, and a cosign key pair.
    let cosign_password = secret("cosign-password");
    let cosign = common::cosign::cosign_key(d, "cosign", &cosign_password);
    let cosign_pub = std::fs::read_to_string(&cosign.public).expect("cosign.pub");
    let policy = write(d, "policy.yaml", POLICY_EXPORT);

    // Step 3: sign in CI by tag, with the cosign key, logged in from the
    // docker config; verify with the public key alone.
    let app = format!("{}/acme/app:v1", reg.host());
    let unsigned = format!("{}/acme/unsigned:v1", reg.host());
    let key = cosign.key.display().to_string();
    let env = [
        ("COSIGN_PASSWORD", cosign_password.as_str()),
        ("DOCKER_CONFIG", docker_env.as_str()),
    ];
    let out = portcullis(
        &["sign", &app, "--key", &key, "--allow-insecure-registry"],
        &env,
    );
    trust::assert_succeeded(&out, "portcullis sign with cosign.key");
    let public = cosign.public.display().to_string();
    let verify = |image: &str| {
        portcullis(
            &[
                "verify",
                image,
                "--key",
                &public,
                "--allow-insecure-registry",
            ],
            &[("DOCKER_CONFIG", docker_env.as_str())],
        )
    };
    let out = verify(&app);
    trust::assert_succeeded(&out, "verify --key of the signed image");
    let out = verify(&unsigned);
    assert_eq!(out.status.code(), Some(1), "{}", trust::output_text(&out));

    // Step 4: the README's configuration, with this machine's names.
    let certs = Certs::new();
    let admin = format!("127.0.0.1:{}", free_port());
    let admin_token = secret("admin-token");
    let hook = Webhook::start();
    let webhook_secret = write(d, "webhook-secret", &secret("webhook-secret"));
    let pull_password = secret("kubelet-password");
    let clients_htpasswd = write(
        d,
        "htpasswd",
        &clients::htpasswd_entry("kubelet", &pull_password),
    );
    let audit = d.join("audit.jsonl");
    let pem_block = cosign_pub
        .lines()
        .map(|l| format!("              {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = |p: &Path| p.display().to_string();
    let config = replace_all(
        readme_config(),
        &[
            ("listen: 0.0.0.0:5000", "listen: \"{listen}\""),
            ("tls.crt", &text(&certs.path("cert.pem"))),
            ("tls.key", &text(&certs.path("key.pem"))),
            ("127.0.0.1:9090", &admin),
            ("tokenFile: admin-token", &format!("tokenFile: {}", text(&write(d, "admin-token", &admin_token)))),
            (
                "  - registry: registry.example.com\n",
                &format!("  - registry: {}\n    url: {}\n", reg.host(), reg.url()),
            ),
            ("dockerConfig: docker-config.json", &format!("dockerConfig: {}", text(&docker_config))),
            ("policyFile: policy.yaml", &format!("policyFile: {}", text(&policy))),
            (
                "              -----BEGIN PUBLIC KEY-----\n              …the contents of cosign.pub…\n              -----END PUBLIC KEY-----",
                &pem_block,
            ),
            ("htpasswd: htpasswd", &format!("htpasswd: {}", text(&clients_htpasswd))),
            ("/var/lib/portcullis/audit.jsonl", &text(&audit)),
            ("https://alerts.example.com/portcullis", &hook.url()),
            ("signingSecretFile: webhook-secret", &format!("signingSecretFile: {}", text(&webhook_secret))),
        ],
    );

    // Step 5: check. Valid; what the export holds that means nothing at
    // pull time is listed, the frozen cluster's rule among it.
    let config_file = write(
        d,
        "portcullis.yaml",
        &config.replace("{listen}", "127.0.0.1:5999"),
    );
    let out = portcullis(&["check", "--config", &text(&config_file)], &[]);
    trust::assert_succeeded(&out, "portcullis check of the walkthrough");
    let said = trust::output_text(&out);
    for word in ["noteReference", "us-east1-b.frozen", "built-by-ci"] {
        assert!(
            said.contains(word),
            "check does not mention {word}:\n{said}"
        );
    }

    // Step 6: run it; a runtime logs in and pulls.
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    let host = proxy.host();
    let podman = Podman::new();
    let auth_file = d.join("podman-auth.json");
    let mut login = podman
        .cmd()
        .args(["login", "--tls-verify=false", "--authfile"])
        .arg(&auth_file)
        .args(["-u", "kubelet", "--password-stdin", &host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman login");
    {
        use std::io::Write as _;
        let mut stdin = login.stdin.take().expect("stdin");
        stdin.write_all(pull_password.as_bytes()).expect("password");
    }
    let out = login.wait_with_output().expect("podman login");
    trust::assert_succeeded(&out, "podman login to Portcullis");
    let pull = |repo: &str| {
        clients::run_unchecked(
            podman
                .cmd()
                .args(["pull", "--tls-verify=false", "--authfile"])
                .arg(&auth_file)
                .arg(format!("{host}/{repo}:v1")),
            &format!("podman pull {repo}"),
        )
    };
    let out = pull("acme/app");
    trust::assert_succeeded(&out, "podman pull of the CI-signed image");
    assert_eq!(
        podman.inspect(&format!("{host}/acme/app:v1")).digest,
        signed.digest
    );
    let out = pull("acme/unsigned");
    trust::assert_failed_saying(
        &out,
        &["us-central1-a.prod"],
        "podman pull of an unsigned image",
    );

    // Step 7: the denial in the audit trail, /metrics and a signed alert.
    let alerts = hook.wait_for(Duration::from_secs(20), "the deny alert", |seen| {
        seen.iter().any(|a| a.to_string().contains("acme/unsigned"))
    });
    let raw = hook.raw();
    let at = alerts
        .iter()
        .position(|a| a.to_string().contains("acme/unsigned"))
        .expect("alert");
    assert!(
        webhook::python_verifies(&webhook_secret, &raw[at]),
        "the alert's X-Portcullis-Signature checks out with the shared secret: {:?}",
        raw[at]
    );
    let metrics_url = format!("http://{admin}/metrics");
    let r = http::get(&metrics_url).expect("metrics");
    assert_eq!(r.status, 401, "/metrics needs the admin token");
    let bearer = format!("Bearer {admin_token}");
    let r =
        http::request("GET", &metrics_url, &[("Authorization", &bearer)], b"").expect("metrics");
    assert_eq!(r.status, 200);
    let metrics = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("portcullis_decisions_total{verdict=\"deny\"") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    let trail = std::fs::read_to_string(&audit).expect("audit trail");
    let denial = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line is JSON"))
        .find(|r| {
            r["verdict"] == "deny"
                && r["reference"]
                    .as_str()
                    .is_some_and(|s| s.contains("acme/unsigned"))
        })
        .unwrap_or_else(|| panic!("no denial of acme/unsigned in the audit trail:\n{trail}"));
    assert_eq!(denial["client_identity"], "kubelet", "{denial}");

    // No secret reached a log line.
    let logs = proxy.logs();
    for s in [&password, &pull_password, &admin_token, &cosign_password] {
        assert!(!logs.contains(s.as_str()), "a secret is in the proxy's log");
    }
}
