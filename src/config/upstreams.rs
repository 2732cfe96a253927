//! `upstreams:` as written: the registries this proxy fronts, their URLs,
//! prefixes, credentials and CA files, and the checks of them (host names,
//! URLs, token realms, duplicates, the files they name exist).
//!
//! May use: std, serde, http, `crate::oci` (Docker Hub's aliases, name
//! syntax) and `super` (the error type and its line finder). Must never
//! use: any other module of the crate (in particular not
//! the `upstream` module, which builds clients from these shapes).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Source};

/// One upstream registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// Canonical registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5001`):
    /// what image references, policies and signatures name.
    pub registry: String,
    /// Where to reach it; defaults to `https://<registry>`
    /// (`https://registry-1.docker.io` for `docker.io`).
    #[serde(default)]
    pub url: Option<String>,
    /// Optional first path component routing `/v2/<prefix>/<repo>` here.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Requests that name no prefix and no `?ns=` go to the default upstream.
    #[serde(default)]
    pub default: bool,
    /// `/readyz` fails while this upstream is unreachable. Without any
    /// `required` upstream, one reachable upstream is enough.
    #[serde(default)]
    pub required: bool,
    /// Credentials for Basic auth and for bearer-token endpoints.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Extra CA certificates (PEM) trusted for this upstream, in addition to
    /// the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Upstream credentials: `username` with `passwordFile`, or
/// `dockerConfig`, exactly one of the two. Secrets live in files so they
/// never sit in the config itself; both files are read again while the
/// proxy runs (see `upstream::credentials`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// User name for Basic auth and token endpoints (with `passwordFile`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password or registry token (with `username`);
    /// re-read when it changes.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A docker `config.json`: its `auths` entry, `credHelpers` entry or
    /// `credsStore` for this registry, resolved whenever a token is
    /// fetched.
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
    /// Token endpoints on other hosts that may receive these credentials
    /// (e.g. `https://auth.docker.io/token` for Docker Hub). Credentials
    /// go to a bearer realm only on the upstream's own origin (scheme,
    /// host and port) or on one listed here; any other realm is asked for
    /// an anonymous token. An `https` upstream cannot list `http` realms.
    #[serde(default)]
    pub token_realms: Vec<String>,
}

impl AuthConfig {
    /// Where the credentials come from, for `check`'s summary.
    pub fn describe(&self) -> String {
        match (&self.username, &self.docker_config) {
            (_, Some(path)) => format!("credentials from docker config {}", path.display()),
            (Some(username), None) => format!("auth as {username}"),
            (None, None) => "no credentials".to_owned(),
        }
    }
}

impl UpstreamConfig {
    /// The base URL requests go to.
    pub fn base_url(&self) -> String {
        match &self.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.registry == "docker.io" => "https://registry-1.docker.io".to_owned(),
            None => format!("https://{}", self.registry),
        }
    }
}

/// Checks every upstream: host names, URLs, prefixes, at most one
/// default, token realms, and that the password and CA files exist.
/// Errors name the field (`upstreams[1].prefix`) and, when found, the line.
pub(super) fn validate(upstreams: &[UpstreamConfig], at: &Source) -> Result<(), ConfigError> {
    let mut registries = HashSet::new();
    let mut prefixes = HashSet::new();
    let mut defaults = 0;
    for (i, u) in upstreams.iter().enumerate() {
        let field = |name: &str| format!("upstreams[{i}].{name}");
        check_registry(u, &field("registry"), at)?;
        if !registries.insert(u.registry.as_str()) {
            return Err(at.invalid(
                field("registry"),
                "registry",
                &u.registry,
                format!("registry {:?} is configured twice", u.registry),
            ));
        }
        if let Some(url) = &u.url {
            if let Err(message) = check_upstream_url(url) {
                return Err(at.invalid(field("url"), "url", url, message));
            }
        }
        if let Some(prefix) = &u.prefix {
            if crate::oci::validate_name(prefix).is_err() || prefix.contains('/') {
                return Err(at.invalid(
                    field("prefix"),
                    "prefix",
                    prefix,
                    format!("{prefix:?} must be one lowercase repository path component"),
                ));
            }
            if !prefixes.insert(prefix.as_str()) {
                return Err(at.invalid(
                    field("prefix"),
                    "prefix",
                    prefix,
                    format!("prefix {prefix:?} is used by two upstreams"),
                ));
            }
        }
        if u.default {
            defaults += 1;
            if defaults > 1 {
                return Err(at.invalid(
                    field("default"),
                    "default",
                    "",
                    "only one upstream can be the default",
                ));
            }
        }
        check_files(u, &field, at)?;
    }
    Ok(())
}

/// The registry is a host name, and not one of Docker Hub's aliases.
fn check_registry(u: &UpstreamConfig, field: &str, at: &Source) -> Result<(), ConfigError> {
    if !valid_registry_host(&u.registry) {
        return Err(at.invalid(
            field,
            "registry",
            &u.registry,
            format!(
                "{:?} is not a registry host name (expected e.g. ghcr.io or 127.0.0.1:5001)",
                u.registry
            ),
        ));
    }
    if crate::oci::DOCKER_HUB_ALIASES.contains(&u.registry.as_str()) {
        return Err(at.invalid(
            field,
            "registry",
            &u.registry,
            format!(
                "{:?} is Docker Hub, which Portcullis names docker.io (as image \
                 references, policies and signatures do): write registry: docker.io \
                 (its default url is https://registry-1.docker.io)",
                u.registry
            ),
        ));
    }
    Ok(())
}

/// Token realms are URLs the credentials may go to; the password and CA
/// files exist.
fn check_files(
    u: &UpstreamConfig,
    field: &dyn Fn(&str) -> String,
    at: &Source,
) -> Result<(), ConfigError> {
    if let Some(auth) = &u.auth {
        let https = u.base_url().starts_with("https://");
        for (j, realm) in auth.token_realms.iter().enumerate() {
            if let Err(message) = check_token_realm(realm, https) {
                return Err(at.invalid(
                    field(&format!("auth.tokenRealms[{j}]")),
                    "tokenRealms",
                    "",
                    message,
                ));
            }
        }
        check_auth_source(auth, field, at)?;
    }
    if let Some(ca) = &u.ca_file {
        if let Err(e) = std::fs::metadata(ca) {
            return Err(at.invalid(
                field("caFile"),
                "caFile",
                "",
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
    }
    Ok(())
}

/// Exactly one of `username` + `passwordFile` or `dockerConfig`, and the
/// file it names exists.
fn check_auth_source(
    auth: &AuthConfig,
    field: &dyn Fn(&str) -> String,
    at: &Source,
) -> Result<(), ConfigError> {
    let missing = |name: &str, key: &str, message: &str| {
        Err(at.invalid(field(&format!("auth.{name}")), key, "", message))
    };
    let file = match (&auth.username, &auth.password_file, &auth.docker_config) {
        (Some(_), Some(path), None) => ("passwordFile", path),
        (None, None, Some(path)) => ("dockerConfig", path),
        (Some(_) | None, Some(_) | None, Some(_)) => {
            return missing(
                "dockerConfig",
                "dockerConfig",
                "give either username and passwordFile, or dockerConfig, not both",
            )
        }
        (Some(_), None, None) => {
            return missing(
                "passwordFile",
                "username",
                "username needs passwordFile (the file holding the password)",
            )
        }
        (None, Some(_), None) => {
            return missing("username", "passwordFile", "passwordFile needs username")
        }
        (None, None, None) => {
            return missing(
                "dockerConfig",
                "auth",
                "give username and passwordFile, or dockerConfig (a docker config.json)",
            )
        }
    };
    let (name, path) = file;
    if let Err(e) = std::fs::metadata(path) {
        return Err(at.invalid(
            field(&format!("auth.{name}")),
            name,
            "",
            format!("cannot read {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// `host`, `host:port`, IPv4 or `[v6]:port`; lowercase, no scheme or path.
fn valid_registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains("://")
        && !s.contains('/')
        && s.parse::<http::uri::Authority>().is_ok()
        && !s.contains('@')
        && s == s.to_ascii_lowercase()
}

fn check_upstream_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} must be a bare scheme://host[:port]; registries serve /v2/ at the root"
        ));
    }
    Ok(())
}

/// A configured token realm: an absolute `http(s)` URL without query;
/// `https` only when the upstream is `https`.
fn check_token_realm(realm: &str, upstream_https: bool) -> Result<(), String> {
    let uri: http::Uri = realm
        .parse()
        .map_err(|e| format!("{realm:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if !upstream_https => {}
        Some("http") => {
            return Err(format!(
                "{realm:?}: credentials for an https upstream are never sent over plain http"
            ))
        }
        _ => return Err(format!("{realm:?} must start with https:// (or http://)")),
    }
    if uri.authority().is_none() {
        return Err(format!("{realm:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{realm:?}: give the token endpoint without a query"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("/"))
    }

    #[test]
    fn semantic_errors_name_field_and_line() {
        let text = "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    prefix: x\n  - registry: b.io\n    prefix: x\n";
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains("upstreams[1].prefix"), "{e}");
        assert!(e.contains("line 4") || e.contains("line 6"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    url: ftp://x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams[0].url") && e.contains("line 4"),
            "{e}"
        );

        let e = load("listen: 127.0.0.1:1\nupstreams: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one upstream"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    default: true\n  - registry: b.io\n    default: true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstreams[1].default"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: A.io\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstreams[0].registry"), "{e}");

        for alias in crate::oci::DOCKER_HUB_ALIASES {
            let e = load(&format!(
                "listen: 127.0.0.1:1\nupstreams:\n  - registry: {alias}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("upstreams[0].registry") && e.contains("write registry: docker.io"),
                "{e}"
            );
        }

        let e = load("listen: nope\nupstreams:\n  - registry: a.io\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");

        let e = load(
            "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    auth: {username: u, passwordFile: /nonexistent/pw}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstreams[0].auth.passwordFile"), "{e}");
    }

    #[test]
    fn token_realms_are_urls_and_never_plain_http_for_https() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let config = |url: &str, realms: &str| {
            format!(
                "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    url: {url}\n    auth: {{username: u, passwordFile: {}, tokenRealms: {realms}}}\n",
                pw.display()
            )
        };
        let c = load(&config("https://a.io", "[https://auth.a.io/token]")).unwrap();
        let auth = c.upstreams[0].auth.as_ref().unwrap();
        assert_eq!(auth.token_realms, ["https://auth.a.io/token"]);
        assert!(load(&config("http://a.io", "[http://auth.a.io/token]")).is_ok());
        for (url, realms, want) in [
            ("https://a.io", "[http://auth.a.io/token]", "plain http"),
            ("https://a.io", "[auth.a.io/token]", "not a URL"),
            ("https://a.io", "[\"https://auth.a.io/token?x=1\"]", "query"),
            ("https://a.io", "[ftp://auth.a.io/token]", "https://"),
        ] {
            let e = load(&config(url, realms)).unwrap_err().to_string();
            assert!(
                e.contains("upstreams[0].auth.tokenRealms[0]") && e.contains(want),
                "{realms}: {e}"
            );
        }
    }

    #[test]
    fn auth_is_a_password_file_or_a_docker_config_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        let docker = dir.path().join("config.json");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::write(&docker, "{}").unwrap();
        let config = |auth: &str| {
            format!("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    auth:\n{auth}")
        };
        let c = load(&config(&format!(
            "      dockerConfig: {}\n",
            docker.display()
        )))
        .unwrap();
        let auth = c.upstreams[0].auth.as_ref().unwrap();
        assert_eq!(auth.docker_config.as_deref(), Some(docker.as_path()));
        assert!(auth.username.is_none() && auth.password_file.is_none());
        assert!(auth.describe().contains("docker config"));
        let c = load(&config(&format!(
            "      username: u\n      passwordFile: {}\n      tokenRealms: [https://auth.a.io/token]\n",
            pw.display()
        )))
        .unwrap();
        assert_eq!(
            c.upstreams[0].auth.as_ref().unwrap().describe(),
            "auth as u"
        );
        // Relative paths are relative to the config file.
        let c =
            Config::from_yaml(&config("      dockerConfig: config.json\n"), dir.path()).unwrap();
        assert_eq!(
            c.upstreams[0]
                .auth
                .as_ref()
                .unwrap()
                .docker_config
                .as_deref(),
            Some(docker.as_path())
        );

        for (auth, field, line) in [
            (
                format!(
                    "      username: u\n      passwordFile: {}\n      dockerConfig: {}\n",
                    pw.display(),
                    docker.display()
                ),
                "upstreams[0].auth.dockerConfig",
                "line 7",
            ),
            (
                "      dockerConfig: /nonexistent/config.json\n".to_owned(),
                "upstreams[0].auth.dockerConfig",
                "line 5",
            ),
            (
                "      username: u\n".to_owned(),
                "upstreams[0].auth.passwordFile",
                "line 5",
            ),
            (
                format!("      passwordFile: {}\n", pw.display()),
                "upstreams[0].auth.username",
                "line 5",
            ),
            (
                "      tokenRealms: []\n".to_owned(),
                "upstreams[0].auth.dockerConfig",
                "line 4",
            ),
        ] {
            let e = load(&config(&auth)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(line), "{auth}: {e}");
        }
        let e = load(&config("      dockerconfig: x\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dockerconfig"), "{e}");
    }

    #[test]
    fn base_urls() {
        let c = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: docker.io\n  - registry: ghcr.io\n  - registry: r.local:5000\n    url: http://127.0.0.1:5001/\n").unwrap();
        assert_eq!(c.upstreams[0].base_url(), "https://registry-1.docker.io");
        assert_eq!(c.upstreams[1].base_url(), "https://ghcr.io");
        assert_eq!(c.upstreams[2].base_url(), "http://127.0.0.1:5001");
        assert_eq!(c.default_upstream(), None);
    }
}
