//! The runtime configuration guides in README.md ("Pointing runtimes at
//! Portcullis"), tested with the real runtimes: a real distribution
//! registry, Portcullis enforcing a policy in front of it, and podman or
//! containerd configured with the very files the README shows
//! (`docker/runtimes/…`, with the placeholder host names replaced by the
//! test's addresses).
//!
//! - podman (and cri-o, which reads the same `containers-registries.conf`):
//!   `location` = Portcullis, so a refusal is final even though the real
//!   registry is reachable; a `[[registry.mirror]]` is enforcing only when
//!   the registry's own `location` cannot be reached, and falls back to the
//!   registry when it can.
//! - containerd: `server` = Portcullis in `hosts.toml`, with `?ns=` routing;
//!   a mirror in front of a reachable `server` falls back the same way. (The
//!   plain `hosts.toml` mirror is tested in tests/pull_containerd.rs.)
//!
//! Every pull that must have gone through Portcullis is checked in its
//! audit trail: one line per decision, with the canonical reference, the
//! verdict and the client's User-Agent. Each test has its own registry,
//! proxy and runtime, so they run in parallel.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::clients::{self, Containerd, Podman};
use common::content::{self, PushedImage};
use common::registry::Registry;
use common::trust::{self, KeyPair};
use common::Proxy;

/// The proxy's address in the documented configs.
const PROXY_PLACEHOLDER: &str = "portcullis.example.com:5000";
/// The upstream registry's name in the documented configs.
const REGISTRY_PLACEHOLDER: &str = "registry.example.com";
/// The `prefix` the documented podman config uses for that registry.
const PREFIX: &str = "example";
/// Nothing listens on port 1.
const CLOSED: &str = "127.0.0.1:1";

/// A registry holding a signed and an unsigned image, and Portcullis in
/// front of it requiring the `built-by-ci` signature.
struct Env {
    reg: Registry,
    proxy: Proxy,
    signed: PushedImage,
    unsigned: PushedImage,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start(seed: u64) -> Env {
        let reg = Registry::start();
        let dir = tempfile::tempdir().unwrap();
        let ci = trust::keygen(dir.path(), "ci");
        let push = |repo: &str, seed: u64| {
            content::push_image(
                &reg.url(),
                repo,
                Some("v1"),
                common::host_arch(),
                seed,
                &[20_000, 2000],
            )
        };
        let signed = push("demo/signed", seed);
        trust::sign(
            &reg.url(),
            &format!("{}/demo/signed:v1", reg.host()),
            "demo/signed",
            &signed.digest,
            &ci,
            &[],
        );
        let unsigned = push("demo/unsigned", seed + 10);
        // Control: the registry itself serves the unsigned image to anyone
        // who reaches it.
        assert!(trust::get_manifest(&reg.url(), "demo/unsigned", "v1").is_ok());
        let audit = dir.path().join("audit.jsonl");
        let proxy = Proxy::start(&proxy_yaml(&reg.host(), &ci, &audit));
        Env {
            reg,
            proxy,
            signed,
            unsigned,
            audit,
            _dir: dir,
        }
    }

    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.reg.host())
    }

    /// Audit records for `<registry>/<repo>` manifests:
    /// `(verdict, user agent)`.
    fn decisions(&self, repo: &str) -> Vec<(String, String)> {
        let want = format!("{}/{repo}", self.reg.host());
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["subject"] == "manifest" && v["reference"] == want.as_str())
            .map(|v| {
                (
                    v["verdict"].as_str().unwrap_or_default().to_owned(),
                    v["user_agent"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Waits (audit lines are written off the request path) until the
    /// audit trail holds a `verdict` decision on `repo` made for a client
    /// whose User-Agent contains `agent`.
    fn assert_decided(&self, repo: &str, verdict: &str, agent: &str) {
        let found = trust::wait_until(Duration::from_secs(10), || {
            self.decisions(repo)
                .iter()
                .any(|(v, ua)| v == verdict && ua.contains(agent))
        });
        assert!(
            found,
            "no `{verdict}` audit record for {repo} from a {agent} client: {:?}\n--- audit ---\n{}",
            self.decisions(repo),
            std::fs::read_to_string(&self.audit).unwrap_or_default()
        );
    }
}

/// Upstreams shaped like the documented ones: a default upstream
/// (`docker.io`, unreachable here: no network) and the test registry under
/// the `example` prefix, so only prefix or `?ns=` routing reaches it.
fn proxy_yaml(registry: &str, ci: &KeyPair, audit: &Path) -> String {
    let mut y = format!(
        "listen: {{listen}}\n\
         upstreams:\n\
         \x20 - registry: docker.io\n\
         \x20   url: http://{CLOSED}\n\
         \x20   default: true\n\
         \x20 - registry: {registry}\n\
         \x20   url: http://{registry}\n\
         \x20   prefix: {PREFIX}\n\
         audit: {{path: {audit}, fsync: always}}\n\
         policy:\n\
         \x20 defaultAdmissionRule:\n\
         \x20   evaluationMode: REQUIRE_ATTESTATION\n\
         \x20   enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n\
         \x20   requireAttestationsBy: [{attestor}]\n\
         attestors:\n\
         \x20 - name: {attestor}\n\
         \x20   publicKeys:\n\
         \x20     - id: ci\n\
         \x20       pkixPublicKey:\n\
         \x20         signatureAlgorithm: ECDSA_P256_SHA256\n\
         \x20         publicKeyPem: |\n",
        audit = audit.display(),
        attestor = trust::ATTESTOR,
    );
    for line in ci.pem.lines() {
        y.push_str(&format!("            {line}\n"));
    }
    y
}

/// A documented runtime config from docker/runtimes/, with the placeholder
/// proxy and registry replaced by the test's.
fn documented(rel: &str, registry: &str, proxy: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/runtimes")
        .join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        text.contains(PROXY_PLACEHOLDER) && text.contains(REGISTRY_PLACEHOLDER),
        "{rel} no longer names {PROXY_PLACEHOLDER} and {REGISTRY_PLACEHOLDER}"
    );
    text.replace(PROXY_PLACEHOLDER, proxy)
        .replace(REGISTRY_PLACEHOLDER, registry)
}

// ---------------------------------------------------------------- podman

/// `podman pull REF` with `conf` as its registries.conf. No
/// `--tls-verify=false`: plain HTTP must come from `insecure = true` in the
/// config, as on a real host.
fn podman_pull(podman: &Podman, conf: &Path, reference: &str) -> Output {
    clients::run_unchecked(
        podman
            .cmd()
            .env("CONTAINERS_REGISTRIES_CONF", conf)
            .arg("pull")
            .arg(reference),
        &format!("podman pull {reference}"),
    )
}

fn write_conf(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A `[[registry]]` whose `location` is `location`, with an optional
/// insecure mirror.
fn mirror_conf(registry: &str, location: &str, mirror: Option<&str>) -> String {
    let mut s = format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\nprefix = \"{registry}\"\nlocation = \"{location}\"\ninsecure = true\n"
    );
    if let Some(m) = mirror {
        s.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n"
        ));
    }
    s
}

/// The documented podman / cri-o drop-in: `location` = Portcullis. The
/// signed image pulls (through Portcullis: its audit trail has podman's
/// request); the unsigned one is refused with the policy's reason although
/// the registry, which would serve it, is up and reachable.
#[test]
fn podman_documented_registries_conf_makes_portcullis_the_only_route() {
    let env = Env::start(301);
    let conf_dir = tempfile::tempdir().unwrap();
    let text = documented(
        "containers/registries.conf.d/portcullis.conf",
        &env.reg.host(),
        &env.proxy.host(),
    );
    assert!(text.contains(&format!("{}/{PREFIX}", env.proxy.host())));
    let conf = write_conf(
        conf_dir.path(),
        "registries.conf",
        &format!("unqualified-search-registries = []\n\n{text}"),
    );

    let podman = Podman::new();
    let out = podman_pull(&podman, &conf, &env.reference("demo/signed"));
    trust::assert_succeeded(&out, "podman pull of the signed image (documented conf)");
    assert_eq!(
        podman.inspect(&env.reference("demo/signed")).digest,
        env.signed.digest
    );
    env.assert_decided("demo/signed", "allow", "containers/");

    let out = podman_pull(&podman, &conf, &env.reference("demo/unsigned"));
    trust::assert_failed_saying(
        &out,
        &trust::DENIAL_WORDS,
        "podman pull of the unsigned image (documented conf)",
    );
    env.assert_decided("demo/unsigned", "deny", "containers/");
}

/// A `[[registry.mirror]]` pointing at Portcullis: enforcing only when the
/// registry's own `location` is unreachable. With `location` on a closed
/// port (control: without the mirror nothing pulls), the signed image pulls
/// through the mirror and the unsigned one is refused. With `location` =
/// the real, reachable registry, podman falls back to it after
/// Portcullis' refusal and the unsigned image pulls: the reason the guide
/// uses `location` = Portcullis instead.
#[test]
fn podman_mirror_enforces_only_when_it_is_the_only_route() {
    let env = Env::start(311);
    let conf_dir = tempfile::tempdir().unwrap();
    let reg = env.reg.host();
    let mirror = format!("{}/{PREFIX}", env.proxy.host());

    // Control: the registry's location is closed and there is no mirror.
    let closed = write_conf(
        conf_dir.path(),
        "closed.conf",
        &mirror_conf(&reg, CLOSED, None),
    );
    let out = podman_pull(&Podman::new(), &closed, &env.reference("demo/signed"));
    assert!(
        !out.status.success(),
        "pull with a closed location and no mirror succeeded:\n{}",
        trust::output_text(&out)
    );

    // The mirror is the only route.
    let only = write_conf(
        conf_dir.path(),
        "mirror-only.conf",
        &mirror_conf(&reg, CLOSED, Some(&mirror)),
    );
    let podman = Podman::new();
    let out = podman_pull(&podman, &only, &env.reference("demo/signed"));
    trust::assert_succeeded(&out, "podman pull of the signed image via the mirror");
    assert_eq!(
        podman.inspect(&env.reference("demo/signed")).digest,
        env.signed.digest
    );
    env.assert_decided("demo/signed", "allow", "containers/");
    let out = podman_pull(&podman, &only, &env.reference("demo/unsigned"));
    trust::assert_failed_saying(
        &out,
        &trust::DENIAL_WORDS,
        "podman pull of the unsigned image, mirror as the only route",
    );
    env.assert_decided("demo/unsigned", "deny", "containers/");

    // The registry is reachable too: the refusal is bypassed.
    let fallback = write_conf(
        conf_dir.path(),
        "mirror-fallback.conf",
        &mirror_conf(&reg, &reg, Some(&mirror)),
    );
    let podman = Podman::new();
    let before = env.decisions("demo/unsigned").len();
    let out = podman_pull(&podman, &fallback, &env.reference("demo/unsigned"));
    trust::assert_succeeded(
        &out,
        "podman pull of the unsigned image with a reachable location (falls back)",
    );
    assert_eq!(
        podman.inspect(&env.reference("demo/unsigned")).digest,
        env.unsigned.digest
    );
    // …after Portcullis refused it.
    assert!(
        trust::wait_until(Duration::from_secs(10), || env
            .decisions("demo/unsigned")
            .len()
            > before),
        "the fallback pull never asked Portcullis: {:?}",
        env.decisions("demo/unsigned")
    );
    assert!(env
        .decisions("demo/unsigned")
        .iter()
        .all(|(v, _)| v == "deny"));
}

// ------------------------------------------------------------ containerd

/// `ctr images pull --hosts-dir DIR --snapshotter native REF`, whatever the
/// outcome.
fn ctr_pull_hosts(ctr: &Containerd, hosts: &Path, reference: &str) -> Output {
    clients::run_unchecked(
        ctr.ctr()
            .args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(hosts)
            .arg(reference),
        &format!("ctr images pull (hosts-dir) {reference}"),
    )
}

fn write_hosts_toml(hosts: &Path, registry: &str, text: &str) {
    let d = hosts.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), text).unwrap();
}

/// The documented `hosts.toml`: Portcullis is the `[host]` and the
/// `server`. containerd adds
/// `?ns=<registry>`, which is the only way to reach the registry here (the
/// proxy's default upstream is closed and the pull names no prefix). The
/// signed image pulls; the unsigned one is refused, with the registry up.
#[test]
fn containerd_documented_hosts_toml_makes_portcullis_the_only_route() {
    let env = Env::start(321);
    let hosts = tempfile::tempdir().unwrap();
    let text = documented(
        "containerd/certs.d/registry.example.com/hosts.toml",
        &env.reg.host(),
        &env.proxy.host(),
    );
    write_hosts_toml(hosts.path(), &env.reg.host(), &text);

    let ctr = Containerd::start();
    let signed = env.reference("demo/signed");
    let out = ctr_pull_hosts(&ctr, hosts.path(), &signed);
    trust::assert_succeeded(&out, "ctr pull of the signed image (documented hosts.toml)");
    // containerd 1.6 ignores a hosts.toml it cannot decode (one with only
    // `server`, for instance) and pulls from the registry directly.
    assert!(
        !trust::output_text(&out).contains("failed to decode hosts.toml"),
        "containerd could not decode the documented hosts.toml:\n{}",
        trust::output_text(&out)
    );
    assert_eq!(ctr.image_target(&signed), env.signed.digest);
    env.assert_decided("demo/signed", "allow", "containerd");

    let out = ctr_pull_hosts(&ctr, hosts.path(), &env.reference("demo/unsigned"));
    trust::assert_failed_saying(
        &out,
        &["denied by policy"],
        "ctr pull of the unsigned image (documented hosts.toml)",
    );
    env.assert_decided("demo/unsigned", "deny", "containerd");
}

/// A `[host]` mirror = Portcullis in front of the real, reachable `server`:
/// containerd falls back to `server` after the refusal and the unsigned
/// image pulls. The reason the guide makes Portcullis the `server`.
#[test]
fn containerd_mirror_in_front_of_reachable_server_falls_back() {
    let env = Env::start(331);
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &env.reg.host(),
        &format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            env.reg.url(),
            env.proxy.url()
        ),
    );
    let ctr = Containerd::start();
    let unsigned = env.reference("demo/unsigned");
    let out = ctr_pull_hosts(&ctr, hosts.path(), &unsigned);
    trust::assert_succeeded(
        &out,
        "ctr pull of the unsigned image (falls back to server)",
    );
    assert_eq!(ctr.image_target(&unsigned), env.unsigned.digest);
    env.assert_decided("demo/unsigned", "deny", "containerd");
}
