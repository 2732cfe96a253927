//! Upstream credentials that keep working, against a real CNCF
//! distribution registry in `auth: token:` mode.
//!
//! Why token mode: it is how the registries whose credentials rotate
//! (ECR, GAR, ACR, Docker Hub) work, and it lets a test revoke for real.
//! distribution validates each bearer token (a JWT signed by a key whose
//! certificate is in its `rootcertbundle`) on every request, but never
//! re-reads an htpasswd file or asks anyone whether a password still
//! holds. Here a small token server (below) issues the JWTs: it accepts
//! only the *current* secret, and its tokens die at the registry within
//! about [`REVOKED_AFTER_SECS`] although it tells clients they live 300 s
//! (distribution allows 60 s of clock skew past `exp`, so `exp` is set
//! that far back). To a client that is exactly a token revoked early: the
//! cached token starts to get 401, and only credentials resolved afresh
//! get a new one. After each rotation the test waits until the registry
//! itself refuses the last token issued under the old secret.
//!
//! The proxy is the real binary with `upstreams[].auth.dockerConfig` (an
//! `auths` entry, an identity token, a `credHelpers` script on the
//! proxy's `PATH`) or `passwordFile`; pulls are real `skopeo copy`s.
//! Every test also checks that no secret (passwords, identity tokens,
//! issued tokens) appears in the proxy's log, written at debug level.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::clients::{self, run, skopeo_copy_to_dir, SKOPEO};
use common::content::{self, PushedImage};
use common::fake::unique_secret;
use common::registry::Registry;
use common::{host_arch, Proxy};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;

const REPO: &str = "team/app";
const SERVICE: &str = "portcullis-test-registry";
const ISSUER: &str = "portcullis-test-issuer";
/// distribution accepts a token this long after its `exp`.
const REGISTRY_LEEWAY_SECS: i64 = 60;
/// How long the registry accepts a token issued in the test phase.
const REVOKED_AFTER_SECS: i64 = 2;
/// How long the registry accepts a token issued while the test pushes
/// its image (skopeo does not retry a push whose token dies).
const SETUP_TOKEN_SECS: i64 = 600;
/// The pushing identity; never given to the proxy.
const PUSHER: (&str, &str) = ("pusher", "pusher-password");

// ------------------------------------------------------------ token server

/// What the token server was asked.
#[derive(Clone, Debug)]
struct TokenRequest {
    method: String,
    /// Basic user and password, if any.
    basic: Option<(String, String)>,
    /// The OAuth2 refresh token of a POST, if any.
    refresh_token: Option<String>,
    granted: bool,
}

#[derive(Default)]
struct TokenState {
    /// user → the one password accepted now.
    passwords: HashMap<String, String>,
    /// Identity (refresh) tokens accepted now.
    refresh_tokens: HashSet<String>,
    /// How long the registry will accept the tokens issued now.
    valid_secs: i64,
    issued: Vec<String>,
    requests: Vec<TokenRequest>,
}

/// A minimal docker token server (distribution's token spec): `GET` with
/// Basic auth, or the OAuth2 `POST` form with a refresh token; issues
/// ES256 JWTs with an `x5c` header the registry checks against its
/// `rootcertbundle`.
struct TokenServer {
    port: u16,
    state: Arc<Mutex<TokenState>>,
    stop: Arc<AtomicBool>,
    dir: tempfile::TempDir,
}

impl TokenServer {
    fn start() -> TokenServer {
        let dir = tempfile::tempdir().expect("tempdir");
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    "token.key",
                    "-out",
                    "token.crt",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=portcullis-test-token-issuer",
                ])
                .current_dir(dir.path()),
            "openssl req (token signing key)",
        );
        let key_pem = std::fs::read_to_string(dir.path().join("token.key")).expect("key");
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&key_pem).expect("P-256 PKCS#8 key");
        let cert_pem = std::fs::read_to_string(dir.path().join("token.crt")).expect("cert");
        let cert_b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(TokenState {
            valid_secs: SETUP_TOKEN_SECS,
            ..Default::default()
        }));
        state
            .lock()
            .unwrap()
            .passwords
            .insert(PUSHER.0.into(), PUSHER.1.into());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, key, cert) = (Arc::clone(&st), key.clone(), cert_b64.clone());
                std::thread::spawn(move || {
                    let _ = serve_token(conn, &st, &key, &cert);
                });
            }
        });
        TokenServer {
            port,
            state,
            stop,
            dir,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("token.crt")
    }

    /// The `auth:` section of a registry config trusting this server.
    fn registry_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert().display()
        )
    }

    /// From now on `user` gets tokens only with `password`.
    fn set_password(&self, user: &str, password: &str) {
        self.state
            .lock()
            .unwrap()
            .passwords
            .insert(user.into(), password.into());
    }

    fn set_refresh_tokens(&self, tokens: &[&str]) {
        self.state.lock().unwrap().refresh_tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Tokens issued from now on die at the registry within
    /// [`REVOKED_AFTER_SECS`].
    fn revoke_quickly(&self) {
        self.state.lock().unwrap().valid_secs = REVOKED_AFTER_SECS;
    }

    fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Answers one request on `conn`, then closes it.
fn serve_token(
    mut conn: TcpStream,
    state: &Mutex<TokenState>,
    key: &p256::ecdsa::SigningKey,
    cert_b64: &str,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let params: Vec<(String, String)> = if method == "POST" {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    };
    let param = |k: &str| {
        params
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let basic = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let refresh_token = (method == "POST"
        && param("grant_type").first().map(String::as_str) == Some("refresh_token"))
    .then(|| param("refresh_token").into_iter().next())
    .flatten();
    let mut st = state.lock().unwrap();
    let granted = match (&basic, &refresh_token) {
        (Some((user, pass)), None) => st.passwords.get(user) == Some(pass),
        (None, Some(token)) => st.refresh_tokens.contains(token),
        _ => false,
    };
    st.requests.push(TokenRequest {
        method: method.clone(),
        basic: basic.clone(),
        refresh_token: refresh_token.clone(),
        granted,
    });
    let response = if granted && param("service").first().map(String::as_str) == Some(SERVICE) {
        let now = now_secs();
        let access: Vec<serde_json::Value> = param("scope")
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|scope| {
                let mut it = scope.splitn(3, ':');
                let (kind, name, actions) = (it.next()?, it.next()?, it.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>()
                }))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [cert_b64]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": basic.as_ref().map(|(u, _)| u.as_str()).unwrap_or("refresh"),
            "aud": SERVICE,
            "exp": now + st.valid_secs - REGISTRY_LEEWAY_SECS,
            "nbf": now - 2 * REGISTRY_LEEWAY_SECS,
            "iat": now - 2 * REGISTRY_LEEWAY_SECS,
            "jti": format!("jti-{}", st.issued.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
        let jwt = format!("{signing_input}.{}", b64url(&signature.to_bytes()));
        st.issued.push(jwt.clone());
        let body = serde_json::json!({
            "token": jwt, "access_token": jwt, "expires_in": 300,
        })
        .to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    drop(st);
    conn.write_all(response.as_bytes())?;
    conn.flush()
}

// ------------------------------------------------------------------ setup

/// A token-protected registry holding one image at `team/app:v1`.
struct Upstream {
    tokens: TokenServer,
    registry: Registry,
    image: PushedImage,
}

impl Upstream {
    fn start(seed: u64) -> Upstream {
        clients::require_tool(SKOPEO, "skopeo");
        let tokens = TokenServer::start();
        let registry = Registry::start_with_extra(&tokens.registry_yaml());
        // The image is pushed to an anonymous registry, then copied by
        // skopeo (with the pusher's credentials) into the protected one.
        let staging = Registry::start();
        let image = content::push_image(
            &staging.url(),
            REPO,
            Some("v1"),
            host_arch(),
            seed,
            &[30_000],
        );
        let conf = tempfile::tempdir().expect("tempdir");
        let registries_conf = conf.path().join("registries.conf");
        std::fs::write(&registries_conf, "unqualified-search-registries = []\n").expect("write");
        run(
            Command::new(SKOPEO)
                .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
                .env("REGISTRY_AUTH_FILE", conf.path().join("auth.json"))
                .args([
                    "--insecure-policy",
                    "copy",
                    "--retry-times=0",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    // The exact pushed bytes, so pulls can be compared.
                    "--preserve-digests",
                    "--dest-creds",
                    &format!("{}:{}", PUSHER.0, PUSHER.1),
                ])
                .arg(format!("docker://{}/{REPO}:v1", staging.host()))
                .arg(format!("docker://{}/{REPO}:v1", registry.host())),
            "skopeo copy into the token-protected registry",
        );
        tokens.revoke_quickly();
        Upstream {
            tokens,
            registry,
            image,
        }
    }

    /// The proxy config: this registry as the default upstream, its token
    /// endpoint (another port, so another origin) trusted with the
    /// credentials, and `auth` as given (indented YAML lines).
    fn proxy_yaml(&self, auth: &str) -> String {
        format!(
            "listen: {{listen}}\nupstreams:\n  - registry: {host}\n    url: {url}\n    default: true\n    auth:\n{auth}      tokenRealms: [\"{realm}\"]\n",
            host = self.registry.host(),
            url = self.registry.url(),
            realm = self.tokens.realm(),
        )
    }

    /// Waits until the registry itself refuses `token` (the signal that a
    /// cached copy of it is dead), at most 30 s.
    fn wait_refused(&self, token: &str) {
        let url = format!("{}/v2/{REPO}/manifests/v1", self.registry.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = common::http::request(
                "GET",
                &url,
                &[
                    ("Authorization", &format!("Bearer {token}")),
                    ("Accept", "application/vnd.oci.image.manifest.v1+json"),
                ],
                &[],
            )
            .expect("GET the registry");
            if r.status == 401 {
                return;
            }
            assert_eq!(r.status, 200, "registry: {}", r.text());
            assert!(
                Instant::now() < deadline,
                "the registry never refused the old token"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes `user`'s old password useless: the token server takes only
    /// `new` from now on, and every token issued so far is dead at the
    /// registry once this returns.
    fn rotate(&self, user: &str, new: &str) {
        self.tokens.set_password(user, new);
        if let Some(last) = self.tokens.issued().last() {
            self.wait_refused(last);
        }
    }
}

/// A pull of `team/app:v1` through the proxy with skopeo: the manifest
/// and every blob, checked against what was pushed.
fn pull_through(proxy: &Proxy, image: &PushedImage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("pulled");
    skopeo_copy_to_dir(&format!("{}/{REPO}:v1", proxy.host()), &dest, false);
    let manifest = std::fs::read(dest.join("manifest.json")).expect("manifest.json");
    assert_eq!(manifest, image.manifest, "pulled another manifest");
    for (_, blob) in &image.layers {
        let hex = blob.digest.strip_prefix("sha256:").expect("sha256");
        let bytes = std::fs::read(dest.join(hex)).expect("layer pulled");
        assert_eq!(content::sha256_digest(&bytes), blob.digest);
    }
}

/// Writes an executable `docker-credential-<name>` script into `dir`.
fn helper_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )
}

/// Replaces `path` atomically (as a secret mount or `docker login` does).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn docker_config_auths(registry: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!(r#"{{"auths": {{"http://{registry}": {{"auth": "{auth}"}}}}, "psFormat": "table"}}"#)
}

/// None of `secrets` occurs in the proxy's log, which must show the
/// pulls (else the check proves nothing).
fn assert_not_logged(proxy: &Proxy, secrets: &[String]) {
    let logs = proxy.logs();
    assert!(
        logs.contains(REPO),
        "the proxy log does not even mention {REPO}; nothing to check:\n{logs}"
    );
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !logs.contains(s.as_str()),
            "a secret appears in the proxy log: {}…\n{logs}",
            &s[..8.min(s.len())]
        );
    }
}

/// Every password, identity token and issued token the test knows of,
/// and the Basic header values made of them.
fn all_secrets(upstream: &Upstream, extra: &[&str]) -> Vec<String> {
    let mut secrets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    secrets.extend(upstream.tokens.issued());
    for r in upstream.tokens.requests() {
        if let Some((user, pass)) = r.basic {
            secrets
                .push(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
            secrets.push(pass);
        }
        secrets.extend(r.refresh_token);
    }
    secrets
}

/// The proxy's environment: debug logs (the strongest check that no
/// secret is logged) and `PATH` as given.
fn proxy_env(path: &str) -> [(&str, &str); 2] {
    [("RUST_LOG", "debug"), ("PATH", path)]
}

// ------------------------------------------------------------------ tests

/// (a) An `auths` entry (`auth`, base64 user:password): the proxy pulls
/// with it; the config is rewritten with a new password and the old one
/// revoked, and the next pull works with no restart, having asked the
/// token server with the new password only.
#[test]
fn an_auths_entry_is_used_and_a_rewritten_config_is_picked_up_after_revocation() {
    let upstream = Upstream::start(101);
    let user = "auths-user";
    let (old, new) = (unique_secret("authsold"), unique_secret("authsnew"));
    upstream.tokens.set_password(user, &old);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        docker_config_auths(&upstream.registry.host(), user, &old),
    )
    .expect("write");
    let yaml = upstream.proxy_yaml(&format!("      dockerConfig: {}\n", config.display()));
    let proxy = Proxy::start_with_env_vars(&yaml, &proxy_env(&path_with(dir.path())));

    pull_through(&proxy, &upstream.image);
    let before = upstream.tokens.requests().len();

    replace_file(
        &config,
        &docker_config_auths(&upstream.registry.host(), user, &new),
    );
    upstream.rotate(user, &new);
    pull_through(&proxy, &upstream.image);

    let after: Vec<_> = upstream.tokens.requests()[before..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.granted && r.basic.as_ref().map(|b| b.1.as_str()) == Some(new.as_str())),
        "no token was fetched with the new password after the rotation: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|r| r.basic.as_ref().map(|b| b.1.as_str()) != Some(old.as_str())),
        "the old password was sent after the config changed"
    );
    assert_not_logged(&proxy, &all_secrets(&upstream, &[&old, &new]));
}

/// (b) A `credHelpers` entry naming a `docker-credential-*` script on the
/// proxy's PATH, whose secret rotates (the old one revoked at the token
/// server, its tokens dead at the registry): pulls keep working with no
/// restart, the helper is asked again (with the registry's host on
/// stdin), and only the new secret is presented after the rotation.
#[test]
fn a_cred_helper_whose_secret_rotates_keeps_pulls_working() {
    let upstream = Upstream::start(102);
    let user = "helper-user";
    let (old, new) = (unique_secret("helperold"), unique_secret("helpernew"));
    upstream.tokens.set_password(user, &old);
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let secret_file = dir.path().join("secret");
    let calls = dir.path().join("calls");
    std::fs::write(&secret_file, &old).expect("write");
    helper_script(
        &bin,
        "rotating",
        &format!(
            "[ \"$1\" = get ] || exit 2\nread -r url\necho \"$url\" >> '{calls}'\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"%s\"}}\\n' \"$url\" \"$(cat '{secret}')\"",
            calls = calls.display(),
            secret = secret_file.display(),
        ),
    );
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"credHelpers": {{"{}": "rotating"}}, "auths": {{}}}}"#,
            upstream.registry.host()
        ),
    )
    .expect("write");
    let yaml = upstream.proxy_yaml(&format!("      dockerConfig: {}\n", config.display()));
    let proxy = Proxy::start_with_env_vars(&yaml, &proxy_env(&path_with(&bin)));

    pull_through(&proxy, &upstream.image);
    let asked = std::fs::read_to_string(&calls).expect("the helper was never run");
    assert!(
        asked.lines().all(|l| l == upstream.registry.host()),
        "the helper was asked for something else than {}: {asked:?}",
        upstream.registry.host()
    );
    let runs_before = asked.lines().count();
    let before = upstream.tokens.requests().len();

    replace_file(&secret_file, &new);
    upstream.rotate(user, &new);
    pull_through(&proxy, &upstream.image);
    // And again, once more tokens have died: still working.
    upstream.rotate(user, &new);
    pull_through(&proxy, &upstream.image);

    let runs_after = std::fs::read_to_string(&calls)
        .expect("calls")
        .lines()
        .count();
    assert!(
        runs_after > runs_before,
        "the helper was not asked again after the rotation"
    );
    let after: Vec<_> = upstream.tokens.requests()[before..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.granted && r.basic.as_ref().map(|b| b.1.as_str()) == Some(new.as_str())),
        "no token was fetched with the rotated secret: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|r| r.basic.as_ref().map(|b| b.1.as_str()) != Some(old.as_str())),
        "the revoked secret was presented after the rotation"
    );
    assert_not_logged(&proxy, &all_secrets(&upstream, &[&old, &new]));
}

/// An `identitytoken` is presented as an OAuth2 refresh token (a `POST`
/// with `grant_type=refresh_token`), never as a password, and the pull
/// works.
#[test]
fn an_identity_token_is_exchanged_as_an_oauth2_refresh_token() {
    let upstream = Upstream::start(103);
    let identity = unique_secret("identity");
    upstream.tokens.set_refresh_tokens(&[&identity]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("<token>:");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}", "identitytoken": "{identity}"}}}}}}"#,
            upstream.registry.host()
        ),
    )
    .expect("write");
    let yaml = upstream.proxy_yaml(&format!("      dockerConfig: {}\n", config.display()));
    let proxy = Proxy::start_with_env_vars(&yaml, &proxy_env(&path_with(dir.path())));
    pull_through(&proxy, &upstream.image);
    let proxy_requests: Vec<_> = upstream
        .tokens
        .requests()
        .into_iter()
        .filter(|r| r.basic.as_ref().map(|b| b.0.as_str()) != Some(PUSHER.0))
        .collect();
    assert!(!proxy_requests.is_empty());
    for r in &proxy_requests {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(r.refresh_token.as_deref(), Some(identity.as_str()));
        assert!(
            r.basic.is_none(),
            "the identity token went out as Basic auth"
        );
    }
    assert_not_logged(&proxy, &all_secrets(&upstream, &[&identity]));
}

/// `passwordFile` rewritten on disk (the old password revoked) is picked
/// up by the running proxy.
#[test]
fn a_changed_password_file_is_picked_up() {
    let upstream = Upstream::start(104);
    let user = "file-user";
    let (old, new) = (unique_secret("fileold"), unique_secret("filenew"));
    upstream.tokens.set_password(user, &old);
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{old}\n")).expect("write");
    let yaml = upstream.proxy_yaml(&format!(
        "      username: {user}\n      passwordFile: {}\n",
        pw.display()
    ));
    let proxy = Proxy::start_with_env_vars(&yaml, &proxy_env(&path_with(dir.path())));
    pull_through(&proxy, &upstream.image);
    let before = upstream.tokens.requests().len();

    replace_file(&pw, &format!("{new}\n"));
    upstream.rotate(user, &new);
    pull_through(&proxy, &upstream.image);
    let after: Vec<_> = upstream.tokens.requests()[before..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.granted && r.basic.as_ref().map(|b| b.1.as_str()) == Some(new.as_str())),
        "the new password was never used: {after:?}"
    );
    assert!(after
        .iter()
        .all(|r| r.basic.as_ref().map(|b| b.1.as_str()) != Some(old.as_str())));
    assert_not_logged(&proxy, &all_secrets(&upstream, &[&old, &new]));
}

/// A helper that fails: the pull is refused (nothing served, no token
/// fetched with anything), and the error names the helper and what it
/// said. A helper missing from PATH stops startup with an error naming
/// it and the field.
#[test]
fn a_failing_or_missing_helper_is_a_clear_error_and_nothing_is_served() {
    let upstream = Upstream::start(105);
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    helper_script(
        &bin,
        "failing",
        "echo 'credentials not found in native keychain'\nexit 1",
    );
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"credHelpers": {{"{}": "failing"}}}}"#,
            upstream.registry.host()
        ),
    )
    .expect("write");
    let yaml = upstream.proxy_yaml(&format!("      dockerConfig: {}\n", config.display()));
    let proxy = Proxy::start_with_env_vars(&yaml, &proxy_env(&path_with(&bin)));
    let requests_before = upstream.tokens.requests().len();
    let r = common::http::request(
        "GET",
        &format!("{}/v2/{REPO}/manifests/v1", proxy.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .expect("GET through the proxy");
    assert_eq!(r.status, 502, "served without credentials? {}", r.text());
    assert!(r.body != upstream.image.manifest);
    assert!(
        r.text().contains("credentials") && !r.text().contains("native keychain"),
        "the client learns the credentials are unavailable, not the helper's output: {}",
        r.text()
    );
    assert_eq!(
        upstream.tokens.requests().len(),
        requests_before,
        "a token was asked for although the helper failed"
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("docker-credential-failing")
            && logs.contains("credentials not found in native keychain"),
        "the log does not name the failing helper and its message:\n{logs}"
    );
    drop(proxy);

    // Missing: `serve` refuses to start.
    std::fs::write(
        &config,
        format!(
            r#"{{"credHelpers": {{"{}": "nothere"}}}}"#,
            upstream.registry.host()
        ),
    )
    .expect("write");
    let cfg = dir.path().join("portcullis.yaml");
    std::fs::write(
        &cfg,
        yaml.replace("{listen}", &format!("127.0.0.1:{}", common::free_port())),
    )
    .expect("write");
    let out = clients::run_unchecked(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PATH", path_with(&bin))
            .stdin(Stdio::null()),
        "portcullis serve with a missing helper",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started without its helper:\n{text}");
    assert!(
        text.contains("docker-credential-nothere is not on PATH") && text.contains("dockerConfig"),
        "the error does not name the helper and the field:\n{text}"
    );
}

/// `portcullis sign` without `--username` logs in with the docker config
/// found through `$DOCKER_CONFIG`, as docker would, and pushes the
/// signature with a token fetched with those credentials.
#[test]
fn cli_sign_logs_in_from_the_docker_config() {
    let upstream = Upstream::start(106);
    let user = "signer";
    let password = unique_secret("signerpw");
    upstream.tokens.set_password(user, &password);
    let dir = tempfile::tempdir().expect("tempdir");
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir(&docker_dir).expect("mkdir");
    std::fs::write(
        docker_dir.join("config.json"),
        docker_config_auths(&upstream.registry.host(), user, &password),
    )
    .expect("write");
    let key = dir.path().join("cosign.key");
    let public = dir.path().join("cosign.pub");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    run(
        Command::new(bin)
            .args(["keygen", "--key"])
            .arg(&key)
            .arg("--pub")
            .arg(&public),
        "portcullis keygen",
    );
    let sign = |docker_config: &Path| {
        clients::run_unchecked(
            Command::new(bin)
                .args(["sign", &format!("{}/{REPO}:v1", upstream.registry.host())])
                .arg("--key")
                .arg(&key)
                .args(["--insecure", "--token-realm", &upstream.tokens.realm()])
                .env_remove("REGISTRY_AUTH_FILE")
                .env_remove("XDG_RUNTIME_DIR")
                .env("HOME", dir.path())
                .env("DOCKER_CONFIG", docker_config),
            "portcullis sign",
        )
    };
    // Without credentials the registry refuses the push.
    let out = sign(&dir.path().join("nowhere"));
    assert!(!out.status.success(), "signed anonymously");
    let out = sign(&docker_dir);
    assert!(
        out.status.success(),
        "sign failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        upstream
            .tokens
            .requests()
            .iter()
            .any(|r| r.granted && r.basic.as_ref() == Some(&(user.to_owned(), password.clone()))),
        "no token was fetched with the docker config's credentials"
    );
}
