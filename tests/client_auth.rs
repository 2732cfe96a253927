//! Client authentication on the registry port (`clientAuth`) with real
//! clients: `podman login` / `skopeo login` against an htpasswd file made
//! by Apache's `htpasswd -B`, containerd sending a bearer token from its
//! `hosts.toml`, a token used as a pull secret, skopeo presenting a client
//! certificate (`--src-cert-dir`) over mutual TLS, and access rules that
//! keep an identity to its repositories. Every pull goes through the
//! trust policy as well: authentication decides who may ask, the policy
//! what is served.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::certs::Certs;
use common::clients::{self, Containerd, Podman};
use common::content;
use common::http;
use common::registry::Registry;
use common::trust::{self, KeyPair, TrustConfig};
use common::{free_port, Proxy};
use serde_json::Value;

/// A registry with a signed image at `demo/signed:v1` (and `other/app:v1`,
/// signed too), the attestor's key.
struct Env {
    reg: Registry,
    dir: tempfile::TempDir,
    ci: KeyPair,
    digest: String,
}

fn env() -> Env {
    let reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(dir.path(), "ci");
    let mut digest = String::new();
    for (repo, seed) in [("demo/signed", 21), ("other/app", 22)] {
        let img = content::push_image(
            &reg.url(),
            repo,
            Some("v1"),
            common::host_arch(),
            seed,
            &[20_000],
        );
        trust::sign(
            &reg.url(),
            &format!("{}/{repo}:v1", reg.host()),
            repo,
            &img.digest,
            &ci,
            &[],
        );
        if digest.is_empty() {
            digest = img.digest;
        }
    }
    Env {
        reg,
        dir,
        ci,
        digest,
    }
}

impl Env {
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// The trust policy's config plus `extra` (YAML at the top level) and
    /// an admin listener; returns it and the admin URL.
    fn config(&self, extra: &str) -> (String, String) {
        let admin = format!("127.0.0.1:{}", free_port());
        let yaml = TrustConfig::new(&self.reg.host(), &self.reg.url(), &[("ci-2026", &self.ci)])
            .yaml()
            + &format!("admin: {{listen: {admin}}}\n")
            + extra;
        (yaml, format!("http://{admin}"))
    }
}

/// A secret no other test uses, so finding it in a log means this one
/// leaked it.
fn secret(label: &str) -> String {
    format!(
        "{label}-{:x}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    )
}

fn registries_conf(dir: &Path) -> PathBuf {
    let p = dir.join("registries.conf");
    std::fs::write(&p, "unqualified-search-registries = []\n").expect("registries.conf");
    p
}

fn skopeo(dir: &Path) -> Command {
    clients::require_tool(clients::SKOPEO, "skopeo");
    let mut c = Command::new(clients::SKOPEO);
    c.env("CONTAINERS_REGISTRIES_CONF", registries_conf(dir));
    c
}

fn skopeo_copy_with(dir: &Path, args: &[&str], reference: &str) -> std::process::Output {
    let dest = dir.join(format!("img-{}", secret("d")));
    clients::run_unchecked(
        skopeo(dir)
            .args(["--insecure-policy", "copy", "--retry-times=0"])
            .args(args)
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dest.display())),
        &format!("skopeo copy {reference}"),
    )
}

fn decisions(admin: &str) -> Vec<Value> {
    let r = http::get(&format!("{admin}/-/api/decisions?limit=100")).expect("decisions API");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("decisions json");
    v["decisions"].as_array().cloned().unwrap_or_default()
}

fn assert_no_secret_in_logs(proxy: &Proxy, secrets: &[&str]) {
    let logs = proxy.logs();
    for s in secrets {
        assert!(!logs.contains(s), "a secret reached the proxy log\n{logs}");
    }
}

#[test]
fn htpasswd_logins_pull_with_podman_and_skopeo_and_anyone_else_gets_a_challenge() {
    let env = env();
    let password = secret("alice-pw");
    let htpasswd = env.file("htpasswd", &clients::htpasswd_entry("alice", &password));
    let (yaml, admin) = env.config(&format!(
        "clientAuth:\n  htpasswd: {}\n  realm: acme registry\n",
        htpasswd.display()
    ));
    let proxy = Proxy::start_with_health(&yaml, &format!("{admin}/healthz"));
    let host = proxy.host();
    let reference = format!("{host}/demo/signed:v1");

    // The API base and a manifest, with nothing presented: a challenge.
    for path in ["/v2/", "/v2/demo/signed/manifests/v1"] {
        let r = http::get(&format!("{}{path}", proxy.url())).expect("GET");
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"acme registry\""),
            "{path}"
        );
        let body: Value = serde_json::from_slice(&r.body).expect("OCI error");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{path}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = skopeo_copy_with(dir.path(), &["--src-tls-verify=false"], &reference);
    // (skopeo answers the challenge with an empty Basic pair, and then
    // reports only "unauthorized".)
    trust::assert_failed_saying(&out, &["unauthorized"], "anonymous skopeo");

    // skopeo login: a wrong password is refused, the right one stored and used.
    let authfile = dir.path().join("auth.json");
    let login = |user: &str, pw: &str| {
        clients::run_unchecked(
            skopeo(dir.path())
                .args(["login", "--tls-verify=false", "--authfile"])
                .arg(&authfile)
                .args(["-u", user, "-p", pw, &host]),
            "skopeo login",
        )
    };
    let out = login("alice", "not-the-password");
    assert!(!out.status.success(), "{}", trust::output_text(&out));
    let out = login("alice", &password);
    trust::assert_succeeded(&out, "skopeo login with the htpasswd password");
    let authfile_arg = format!("--src-authfile={}", authfile.display());
    let out = skopeo_copy_with(
        dir.path(),
        &["--src-tls-verify=false", &authfile_arg],
        &reference,
    );
    trust::assert_succeeded(&out, "skopeo copy after login");

    // podman login, then pull with what it stored.
    let podman = Podman::new();
    let podman_auth = dir.path().join("podman-auth.json");
    let out = clients::run_unchecked(
        podman
            .cmd()
            .args(["login", "--tls-verify=false", "--authfile"])
            .arg(&podman_auth)
            .args(["-u", "alice", "--password-stdin", &host])
            .stdin(std::process::Stdio::piped()),
        "podman login (no stdin)",
    );
    // --password-stdin with a closed stdin is an empty password: refused.
    assert!(!out.status.success(), "{}", trust::output_text(&out));
    let mut child = podman
        .cmd()
        .args(["login", "--tls-verify=false", "--authfile"])
        .arg(&podman_auth)
        .args(["-u", "alice", "--password-stdin", &host])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("podman login");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(password.as_bytes()).expect("password");
    }
    let out = child.wait_with_output().expect("podman login");
    trust::assert_succeeded(&out, "podman login");
    let out = clients::run_unchecked(
        podman
            .cmd()
            .args(["pull", "--tls-verify=false", "--authfile"])
            .arg(&podman_auth)
            .arg(&reference),
        "podman pull after login",
    );
    trust::assert_succeeded(&out, "podman pull after login");
    assert_eq!(podman.inspect(&reference).digest, env.digest);

    // Who pulled is on every decision.
    let list = decisions(&admin);
    let mine: Vec<&Value> = list
        .iter()
        .filter(|d| {
            d["reference"]
                .as_str()
                .is_some_and(|r| r.ends_with("/demo/signed"))
        })
        .collect();
    assert!(!mine.is_empty(), "no decision recorded: {list:?}");
    for d in &mine {
        assert_eq!(d["client_identity"], "alice", "{d}");
        assert_eq!(d["verdict"], "allow", "{d}");
    }
    assert_no_secret_in_logs(&proxy, &[&password]);
    assert!(
        proxy.logs().contains("client credentials refused"),
        "the wrong password is logged (without the password)"
    );
}

#[test]
fn tokens_authenticate_containerd_headers_and_pull_secrets_and_rotate_without_a_restart() {
    let env = env();
    let token = secret("ci-token");
    let token_file = env.file("ci.token", &format!("{token}\n"));
    let (yaml, admin) = env.config(&format!(
        "clientAuth:\n  tokens:\n    - name: ci\n      tokenFile: {}\n",
        token_file.display()
    ));
    let proxy = Proxy::start_with_health(&yaml, &format!("{admin}/healthz"));
    let host = proxy.host();
    let reference = format!("{host}/demo/signed:v1");

    // containerd: the token as a static header in hosts.toml.
    let ctr = Containerd::start();
    let hosts = tempfile::tempdir().expect("tempdir");
    let write_hosts = |header: Option<&str>| {
        let d = hosts.path().join(&host);
        std::fs::create_dir_all(&d).expect("mkdir");
        let mut text = format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        if let Some(h) = header {
            text.push_str(&format!(
                "  [host.\"http://{host}\".header]\n    Authorization = [\"{h}\"]\n"
            ));
        }
        std::fs::write(d.join("hosts.toml"), text).expect("hosts.toml");
    };
    let ctr_pull = || {
        clients::run_unchecked(
            ctr.ctr()
                .args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
                .arg(hosts.path())
                .arg(&reference),
            "ctr pull",
        )
    };
    write_hosts(None);
    let out = ctr_pull();
    assert!(
        !out.status.success(),
        "ctr without a token: {}",
        trust::output_text(&out)
    );
    write_hosts(Some(&format!("Bearer {token}")));
    let out = ctr_pull();
    trust::assert_succeeded(&out, "ctr pull with the token header");
    assert_eq!(ctr.image_target(&reference), env.digest);

    // A pull secret: the token's name as user, the token as password.
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = format!("--src-creds=ci:{token}");
    let out = skopeo_copy_with(dir.path(), &["--src-tls-verify=false", &creds], &reference);
    trust::assert_succeeded(&out, "skopeo with the token as a pull secret");
    let wrong = format!("--src-creds=someone:{token}");
    let out = skopeo_copy_with(dir.path(), &["--src-tls-verify=false", &wrong], &reference);
    assert!(
        !out.status.success(),
        "the token under another name: {}",
        trust::output_text(&out)
    );

    // Rotation: the file is rewritten; the old token stops working, the
    // new one works, no restart.
    let rotated = secret("ci-token-2");
    std::fs::write(&token_file, format!("{rotated}\n")).expect("rotate");
    let manifest = format!("{}/v2/demo/signed/manifests/v1", proxy.url());
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");
    let status = |t: &str| {
        let auth = format!("Bearer {t}");
        http::request("GET", &manifest, &[accept, ("Authorization", &auth)], &[])
            .expect("GET")
            .status
    };
    assert!(
        trust::wait_until(Duration::from_secs(5), || status(&rotated) == 200),
        "the rotated token was not taken up"
    );
    assert_eq!(status(&token), 401, "the old token still works");

    let list = decisions(&admin);
    assert!(
        list.iter().any(|d| d["client_identity"] == "ci"),
        "no decision names the token's identity: {list:?}"
    );
    assert_no_secret_in_logs(&proxy, &[&token, &rotated]);
}

/// A client CA and a certificate it issued to `name`, in skopeo's
/// `--cert-dir` layout (`client.cert`, `client.key`) plus the server's CA
/// as `ca.crt`.
fn client_cert_dir(server: &Certs, ca_name: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let openssl = |args: &[&str]| {
        clients::run(Command::new("openssl").args(args).current_dir(d), "openssl");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "clientca.key",
        "-out",
        "clientca.pem",
        "-days",
        "1",
        "-subj",
        &format!("/CN={ca_name}"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        &format!("/O=acme/CN={name}"),
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext.cnf");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "clientca.pem",
        "-CAkey",
        "clientca.key",
        "-CAcreateserial",
        "-out",
        "client.cert",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let certs = d.join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    for (from, to) in [("client.cert", "client.cert"), ("client.key", "client.key")] {
        std::fs::copy(d.join(from), certs.join(to)).expect("copy");
    }
    std::fs::copy(server.path("ca.pem"), certs.join("ca.crt")).expect("copy ca");
    let ca = d.join("clientca.pem");
    (dir, ca)
}

#[test]
fn client_certificates_authenticate_over_mutual_tls() {
    let env = env();
    let server = Certs::new();
    let (trusted, client_ca) = client_cert_dir(&server, "acme-clients", "build-bot");
    let (untrusted, _) = client_cert_dir(&server, "someone-else", "intruder");
    let (yaml, admin) = env.config(&format!(
        "tls: {{cert: {}, key: {}}}\nclientAuth:\n  clientCAFile: {}\n",
        server.path("cert.pem").display(),
        server.path("key.pem").display(),
        client_ca.display()
    ));
    let proxy = Proxy::start_with_health(&yaml, &format!("{admin}/healthz"));
    let reference = format!("{}/demo/signed:v1", proxy.host());
    let cert_dir =
        |d: &tempfile::TempDir| format!("--src-cert-dir={}", d.path().join("certs").display());

    let out = skopeo_copy_with(trusted.path(), &[&cert_dir(&trusted)], &reference);
    trust::assert_succeeded(&out, "skopeo with a client certificate");

    // No certificate (only the server's CA): the request is refused.
    let no_cert = tempfile::tempdir().expect("tempdir");
    std::fs::copy(server.path("ca.pem"), no_cert.path().join("ca.crt")).expect("copy");
    let arg = format!("--src-cert-dir={}", no_cert.path().display());
    let out = skopeo_copy_with(no_cert.path(), &[&arg], &reference);
    trust::assert_failed_saying(&out, &["unauthorized"], "skopeo without a certificate");

    // A certificate from a CA the proxy does not trust: the handshake fails.
    let out = skopeo_copy_with(untrusted.path(), &[&cert_dir(&untrusted)], &reference);
    assert!(
        !out.status.success(),
        "an untrusted client certificate: {}",
        trust::output_text(&out)
    );

    let list = decisions(&admin);
    assert!(
        list.iter()
            .any(|d| d["client_identity"] == "build-bot" && d["verdict"] == "allow"),
        "no decision names the certificate's holder: {list:?}"
    );
    assert!(
        !list.iter().any(|d| d["client_identity"] == "intruder"),
        "{list:?}"
    );
}

#[test]
fn access_rules_keep_each_identity_to_its_repositories() {
    let env = env();
    let alice_pw = secret("alice");
    let bob_pw = secret("bob");
    let htpasswd = env.file(
        "htpasswd",
        &(clients::htpasswd_entry("alice", &alice_pw) + &clients::htpasswd_entry("bob", &bob_pw)),
    );
    let r = env.reg.host();
    let (yaml, admin) = env.config(&format!(
        "clientAuth:\n  htpasswd: {}\n  access:\n    - identities: [alice]\n      repositories: [\"{r}/demo/**\"]\n    - identities: [\"*\"]\n      repositories: [\"{r}/other/*\"]\n",
        htpasswd.display()
    ));
    let proxy = Proxy::start_with_health(&yaml, &format!("{admin}/healthz"));
    let host = proxy.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let pull = |user: &str, pw: &str, repo: &str| {
        let creds = format!("--src-creds={user}:{pw}");
        skopeo_copy_with(
            dir.path(),
            &["--src-tls-verify=false", &creds],
            &format!("{host}/{repo}:v1"),
        )
    };
    trust::assert_succeeded(&pull("alice", &alice_pw, "demo/signed"), "alice, demo");
    trust::assert_succeeded(&pull("alice", &alice_pw, "other/app"), "alice, other");
    trust::assert_succeeded(&pull("bob", &bob_pw, "other/app"), "bob, other");
    trust::assert_failed_saying(
        &pull("bob", &bob_pw, "demo/signed"),
        &["may not pull"],
        "bob, demo",
    );

    // Blobs too: bob cannot fetch demo's layers by digest.
    let basic = |user: &str, pw: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let (_, manifest) = trust::get_manifest(&env.reg.url(), "demo/signed", "v1").expect("manifest");
    let layer = &trust::manifest_blobs(&manifest)[0];
    let get = |user: &str, pw: &str| {
        let auth = basic(user, pw);
        http::request(
            "GET",
            &format!("{}/v2/demo/signed/blobs/{layer}", proxy.url()),
            &[("Authorization", &auth)],
            &[],
        )
        .expect("GET blob")
    };
    let r = get("bob", &bob_pw);
    assert_eq!(r.status, 403, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).expect("OCI error");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bob may not pull") && m.contains("clientAuth.access")),
        "{body}"
    );
    assert_eq!(get("alice", &alice_pw).status, 200);
    assert_no_secret_in_logs(&proxy, &[&alice_pw, &bob_pw]);
}

#[test]
fn bad_client_auth_configuration_is_refused_naming_the_field() {
    let env = env();
    let check = |extra: &str| {
        let (yaml, _) = env.config(extra);
        let path = env.file("bad.yaml", &yaml.replace("{listen}", "127.0.0.1:5999"));
        clients::run_unchecked(
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["check", "--config"])
                .arg(&path),
            "portcullis check",
        )
    };
    let md5 = env.file(
        "md5.htpasswd",
        "alice:$apr1$Vh3jS0sE$XPhU3v0Xs2HkG1qZrX9p51\n",
    );
    let out = check(&format!("clientAuth:\n  htpasswd: {}\n", md5.display()));
    trust::assert_failed_saying(
        &out,
        &["clientAuth.htpasswd", "line 1", "htpasswd -B"],
        "an MD5 htpasswd entry",
    );
    let ca = env.file("ca.pem", "not used");
    let out = check(&format!("clientAuth:\n  clientCAFile: {}\n", ca.display()));
    trust::assert_failed_saying(
        &out,
        &["clientAuth.clientCAFile", "tls"],
        "a client CA without tls",
    );
    let short = env.file("short.token", "abc\n");
    let out = check(&format!(
        "clientAuth:\n  tokens:\n    - name: ci\n      tokenFile: {}\n",
        short.display()
    ));
    trust::assert_failed_saying(
        &out,
        &["clientAuth.tokens[0].tokenFile", "at least 16"],
        "a short token",
    );
    let out = check("clientAuth: {}\n");
    trust::assert_failed_saying(&out, &["clientAuth", "no way to authenticate"], "no method");
}
