//! Upstream authentication through the real `portcullis` binary against the
//! in-process fake: HTTP Basic from a password file, the bearer-token
//! challenge flow with per-scope caching and expiry, and secrets kept out of
//! the logs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use common::fake::{proxy_yaml, unique_secret, Fake, FakeConfig, Kind, TokenAuth, Upstream};
use common::http::{self, Response};
use common::Proxy;

const REPO: &str = "team/app";
const ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");

fn get(proxy: &Proxy, target: &str) -> Response {
    http::request("GET", &format!("{}{target}", proxy.url()), &[ACCEPT], &[])
        .unwrap_or_else(|e| panic!("GET {target}: {e}\n--- proxy log ---\n{}", proxy.logs()))
}

fn get_ok(proxy: &Proxy, target: &str) -> Response {
    let r = get(proxy, target);
    assert_eq!(
        r.status,
        200,
        "GET {target}: {}\n--- proxy log ---\n{}",
        r.text(),
        proxy.logs()
    );
    r
}

/// Writes `password` plus a trailing newline (as `echo` would) to a file.
fn password_file(dir: &tempfile::TempDir, password: &str) -> PathBuf {
    let p = dir.path().join("password");
    std::fs::write(&p, format!("{password}\n")).expect("write password file");
    p
}

fn basic_header(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// None of `secrets` occurs in the proxy's log, which must not be empty
/// (else the check proves nothing).
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
            "secret {s:?} appears in the proxy log:\n{logs}"
        );
    }
}

fn token_config(t: TokenAuth) -> FakeConfig {
    FakeConfig {
        require_token: Some(t),
        ..Default::default()
    }
}

/// The proxy authenticates with the username and the password file's
/// content (trailing newline trimmed), on manifests and blobs.
#[test]
fn basic_auth_uses_password_file() {
    let user = "puller";
    let pass = unique_secret("basicpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let fake = Fake::with_config(FakeConfig {
        require_basic: Some((user.into(), pass.clone())),
        ..Default::default()
    });
    let img = fake.put_image(REPO, Some("v1"), 1, 50_000);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);

    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    let r = get_ok(&proxy, &format!("/v2/{REPO}/blobs/{}", img.layer_digest));
    assert!(r.body == img.layer);

    let want = basic_header(user, &pass);
    let reqs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| matches!(r.kind, Kind::Manifest | Kind::Blob))
        .collect();
    assert!(
        reqs.iter()
            .any(|r| r.header("authorization") == Some(want.as_str())),
        "no upstream request carried {want:?}: {:?}",
        reqs.iter()
            .map(|r| r.header("authorization"))
            .collect::<Vec<_>>()
    );
    let b64 = want.strip_prefix("Basic ").unwrap().to_string();
    assert_not_logged(&proxy, &[pass, b64]);
}

/// A bearer challenge whose realm is on another host (another loopback
/// address and port, plain http) gets no credentials: the proxy asks it
/// for an anonymous token, logs a warning once, and the pull still works.
/// Without this, any upstream (or whoever can rewrite its challenge) could
/// collect the configured password.
#[test]
fn a_token_realm_on_another_host_never_receives_the_credentials() {
    let user = "puller";
    let pass = unique_secret("realmpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let fake = Fake::with_config(token_config(TokenAuth {
        foreign_realm: true,
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 11, 20_000);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);
    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    // Another scope: another token request, and no second warning.
    get(&proxy, "/v2/team/other/manifests/v1");
    let tokens = fake.token_requests();
    assert!(!tokens.is_empty(), "the foreign realm was never asked");
    for t in &tokens {
        assert!(
            t.on_storage,
            "token request went to the registry's own host"
        );
        assert_eq!(
            t.header("authorization"),
            None,
            "the realm on another host received the credentials: {:?}",
            t.headers
        );
    }
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("tokenRealms").count(),
        1,
        "expected one warning naming auth.tokenRealms:\n{logs}"
    );
    let b64 = basic_header(user, &pass)
        .strip_prefix("Basic ")
        .unwrap()
        .to_string();
    assert_not_logged(&proxy, &[pass, b64]);
}

/// The same foreign realm listed in `auth.tokenRealms` gets the
/// credentials (and demands them here), and the pull works.
#[test]
fn a_configured_token_realm_receives_the_credentials() {
    let user = "puller";
    let pass = unique_secret("realmpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let fake = Fake::with_config(token_config(TokenAuth {
        foreign_realm: true,
        basic: Some((user.into(), pass.clone())),
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 12, 20_000);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)
            .token_realm(&format!("{}/token", fake.storage_url()))],
        None,
    );
    let proxy = Proxy::start(&cfg);
    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    let want = basic_header(user, &pass);
    let tokens = fake.token_requests();
    assert!(
        !tokens.is_empty()
            && tokens
                .iter()
                .all(|t| t.on_storage && t.header("authorization") == Some(want.as_str())),
        "the configured realm did not get the credentials: {:?}",
        tokens.iter().map(|t| &t.headers).collect::<Vec<_>>()
    );
}

/// A realm on the upstream's own origin still gets the credentials without
/// any configuration (the token endpoint demands them), and the pull works.
#[test]
fn the_upstreams_own_token_realm_receives_the_credentials() {
    let user = "puller";
    let pass = unique_secret("realmpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let fake = Fake::with_config(token_config(TokenAuth {
        basic: Some((user.into(), pass.clone())),
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 13, 20_000);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);
    let r = get_ok(&proxy, &format!("/v2/{REPO}/blobs/{}", img.layer_digest));
    assert!(r.body == img.layer);
    let want = basic_header(user, &pass);
    let tokens = fake.token_requests();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert!(!t.on_storage);
        assert_eq!(t.header("authorization"), Some(want.as_str()));
    }
}

/// Bearer flow: 401 challenge → token endpoint (service + scope) → retry
/// with the token. The token is cached per scope: more requests for the same
/// repository fetch no new token; another repository gets its own.
#[test]
fn bearer_token_flow_is_cached_per_scope() {
    let fake = Fake::with_config(token_config(TokenAuth::default()));
    let img = fake.put_image(REPO, Some("v1"), 2, 50_000);
    fake.put_image("team/other", Some("v1"), 3, 10);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    assert_eq!(
        fake.token_hits(),
        1,
        "token fetches after the first request"
    );
    let t = &fake.token_requests()[0];
    assert_eq!(t.method, "GET");
    assert_eq!(t.query_param("service").as_deref(), Some("fake-registry"));
    assert_eq!(
        t.query_param("scope").as_deref(),
        Some("repository:team/app:pull"),
        "token request: {}",
        t.target()
    );
    let tokens = fake.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let bearer = format!("Bearer {}", tokens[0]);
    assert!(
        fake.requests().iter().any(|r| r.kind == Kind::Manifest
            && r.header("authorization") == Some(bearer.as_str())),
        "the manifest was never requested with the issued token"
    );

    // Same repository: manifest again, by digest, and a blob. No new token.
    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    get_ok(
        &proxy,
        &format!("/v2/{REPO}/manifests/{}", img.manifest_digest),
    );
    let r = get_ok(&proxy, &format!("/v2/{REPO}/blobs/{}", img.layer_digest));
    assert!(r.body == img.layer);
    assert_eq!(
        fake.token_hits(),
        1,
        "the cached token was not reused for the same repository: {:?}",
        fake.token_requests()
            .iter()
            .map(|r| r.target())
            .collect::<Vec<_>>()
    );

    // Another repository: its own scope, its own token.
    get_ok(&proxy, "/v2/team/other/manifests/v1");
    assert_eq!(fake.token_hits(), 2, "a new scope needs a new token");
    assert_eq!(
        fake.token_requests()[1].query_param("scope").as_deref(),
        Some("repository:team/other:pull")
    );
    get_ok(&proxy, "/v2/team/other/manifests/v1");
    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(
        fake.token_hits(),
        2,
        "tokens of both scopes should stay cached"
    );

    assert_not_logged(&proxy, &fake.issued_tokens());
}

/// With credentials configured, the token endpoint gets them as Basic auth;
/// the registry itself gets only the bearer token.
#[test]
fn bearer_token_endpoint_receives_basic_credentials() {
    let user = "tokuser";
    let pass = unique_secret("tokpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let fake = Fake::with_config(token_config(TokenAuth {
        basic: Some((user.into(), pass.clone())),
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 4, 10);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);

    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    let want = basic_header(user, &pass);
    let toks = fake.token_requests();
    assert!(!toks.is_empty(), "no token request");
    assert!(
        toks.iter()
            .all(|t| t.header("authorization") == Some(want.as_str())),
        "token endpoint did not get the configured Basic credentials"
    );
    assert_eq!(fake.token_hits(), 1);

    let mut secrets = fake.issued_tokens();
    secrets.push(pass);
    secrets.push(want.strip_prefix("Basic ").unwrap().to_string());
    assert_not_logged(&proxy, &secrets);
}

/// A token response carrying only `access_token`, and a challenge with
/// reordered parameters, spaces and an `error=` parameter, still work.
#[test]
fn bearer_access_token_field_and_unusual_challenge() {
    let fake = Fake::with_config(token_config(TokenAuth {
        access_token_only: true,
        quirky_challenge: true,
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 5, 10);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    assert_eq!(fake.token_hits(), 1);
    let t = &fake.token_requests()[0];
    assert_eq!(t.query_param("service").as_deref(), Some("fake-registry"));
    assert_eq!(
        t.query_param("scope").as_deref(),
        Some("repository:team/app:pull")
    );
    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(fake.token_hits(), 1, "access_token was not cached");
}

/// A token without `expires_in` is good for 60 s by the spec, so it is
/// reused right away.
#[test]
fn bearer_token_without_expires_in_is_cached() {
    let fake = Fake::with_config(token_config(TokenAuth {
        expires_in: None,
        ..Default::default()
    }));
    fake.put_image(REPO, Some("v1"), 6, 10);
    let proxy = Proxy::start(&fake.proxy_config());
    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(fake.token_hits(), 1);
}

/// `expires_in: 1`: once it has passed, the proxy fetches a new token before
/// using the old one (the fake counts expired tokens presented to it, and
/// there must be none), and the request succeeds.
#[test]
fn bearer_token_expiry_is_honoured() {
    let fake = Fake::with_config(token_config(TokenAuth {
        expires_in: Some(1),
        ..Default::default()
    }));
    let img = fake.put_image(REPO, Some("v1"), 7, 10);
    let proxy = Proxy::start(&fake.proxy_config());

    get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(fake.token_hits(), 1);
    // Unavoidable real wait: the token must actually expire (1 s lifetime,
    // margin for the proxy's and the fake's clocks starting apart).
    std::thread::sleep(Duration::from_millis(2500));
    let r = get_ok(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_eq!(r.body, img.manifest);
    assert_eq!(
        fake.token_hits(),
        2,
        "no new token was fetched after the first one expired"
    );
    assert_eq!(
        fake.expired_token_uses(),
        0,
        "the proxy sent an expired token upstream instead of honouring expires_in"
    );
    assert_not_logged(&proxy, &fake.issued_tokens());
}

/// A wrong password: the request fails (any status but 200), and neither
/// the wrong password nor its Basic encoding is logged on the error path.
#[test]
fn rejected_credentials_are_not_logged() {
    let user = "puller";
    let wrong = unique_secret("wrongpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &wrong);
    let fake = Fake::with_config(FakeConfig {
        require_basic: Some((user.into(), "the-right-one".into())),
        ..Default::default()
    });
    fake.put_image(REPO, Some("v1"), 8, 10);
    let cfg = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth(user, &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);
    let r = get(&proxy, &format!("/v2/{REPO}/manifests/v1"));
    assert_ne!(r.status, 200, "wrong credentials were accepted?");
    assert!(
        fake.count(Kind::Manifest) >= 1,
        "the request never reached the upstream"
    );
    let b64 = basic_header(user, &wrong)
        .strip_prefix("Basic ")
        .unwrap()
        .to_string();
    assert!(
        !r.text().contains(&wrong) && !r.text().contains(&b64),
        "the client-facing error leaks the password: {}",
        r.text()
    );
    assert_not_logged(&proxy, &[wrong, b64]);
}

/// `portcullis check` summarises a config with credentials without
/// printing the password.
#[test]
fn check_summary_does_not_print_password() {
    let pass = unique_secret("checkpw");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, &pass);
    let cfg = proxy_yaml(
        &[Upstream::new("127.0.0.1:5999", "http://127.0.0.1:5999")
            .with_default()
            .auth("someone", &pw)],
        None,
    )
    .replace("{listen}", "127.0.0.1:0");
    let cfg_path = dir.path().join("portcullis.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .expect("run portcullis check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "portcullis check failed:\n{text}");
    assert!(!text.contains(&pass), "check printed the password:\n{text}");
}
