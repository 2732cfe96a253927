//! A docker `config.json` (or containers' `auth.json`, the same shape) as
//! docker and containers/image read it: `auths` entries (`auth` as base64
//! `user:password`, or `username` and `password`, and `identitytoken`),
//! `credHelpers` per registry and `credsStore` as the default helper; and
//! which entry speaks for a registry.
//!
//! Keys are matched as containers/image matches them: a scheme and any
//! path are stripped (`https://index.docker.io/v1/` → `index.docker.io`),
//! case does not matter, and Docker Hub's aliases are `docker.io`. A key
//! written exactly as the registry wins over one that only normalizes to it.
//!
//! Precedence, as docker's: `credHelpers[registry]`, then `credsStore`,
//! then `auths[registry]`. Nothing here runs a helper ([`super::helper`]
//! does) or logs: the parsed file holds secrets, and its types have no
//! `Debug` that would show them.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{CredentialError, Credentials};

/// Largest `config.json` read. Real ones are a few KiB; one with
/// hundreds of registries is still far below this.
pub const MAX_DOCKER_CONFIG_BYTES: u64 = 1024 * 1024;

/// Docker Hub's key in `auths` and the server URL its helpers are asked
/// for (what `docker login` writes).
pub const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";

/// The parts of `config.json` that carry credentials; everything else in
/// the file (`HttpHeaders`, `psFormat`, …) is ignored, as docker does.
#[derive(Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry. No `Debug`: it holds the secret.
#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where a registry's credentials are, according to the file.
pub enum Entry {
    /// In the file itself (`auths`).
    Inline(Credentials),
    /// From `docker-credential-<helper> get`, asked for `server_url`.
    Helper {
        helper: String,
        server_url: String,
        /// `credHelpers["…"]` or `credsStore`, for messages.
        from: String,
    },
}

impl DockerConfig {
    /// Reads and parses `path`, at most [`MAX_DOCKER_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<DockerConfig, CredentialError> {
        let bytes = read_bounded(path, MAX_DOCKER_CONFIG_BYTES)?;
        DockerConfig::parse(&bytes).map_err(|reason| CredentialError::DockerConfig {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a `config.json`; the error says what is wrong without
    /// quoting the file (it holds secrets).
    pub fn parse(bytes: &[u8]) -> Result<DockerConfig, String> {
        let config: DockerConfig = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's message names the position, never the value.
            format!("not a docker config.json: {e}")
        })?;
        for (key, helper) in config
            .cred_helpers
            .iter()
            .map(|(k, h)| (format!("credHelpers[{k:?}]"), h))
            .chain(
                config
                    .creds_store
                    .iter()
                    .map(|h| ("credsStore".to_owned(), h)),
            )
        {
            if !valid_helper_name(helper) {
                return Err(format!(
                    "{key}: {helper:?} is not a credential helper name \
                     (docker-credential-<name> is run from PATH; letters, digits, '.', '_' and '-' only)"
                ));
            }
        }
        Ok(config)
    }

    /// The entry that speaks for `registry` (a canonical host such as
    /// `docker.io` or `127.0.0.1:5000`), if any: `credHelpers`, then
    /// `credsStore`, then `auths`.
    pub fn lookup(&self, registry: &str) -> Result<Option<Entry>, String> {
        let server_url = server_url(registry);
        if let Some((key, helper)) = find(&self.cred_helpers, registry) {
            return Ok(Some(Entry::Helper {
                helper: helper.clone(),
                server_url,
                from: format!("credHelpers[{key:?}]"),
            }));
        }
        if let Some(helper) = self.creds_store.as_ref().filter(|h| !h.is_empty()) {
            return Ok(Some(Entry::Helper {
                helper: helper.clone(),
                server_url,
                from: "credsStore".to_owned(),
            }));
        }
        let found = match find(&self.auths, registry) {
            None => None,
            Some((key, entry)) => entry
                .credentials()
                .map_err(|reason| format!("auths[{key:?}]: {reason}"))?,
        };
        Ok(found.map(Entry::Inline))
    }
}

impl AuthEntry {
    /// `auth` (base64 `user:password`) when present, else `username` and
    /// `password`; an `identitytoken` replaces the password. `None` for an
    /// empty entry (`{}`, what `docker login` leaves with a `credsStore`).
    fn credentials(&self) -> Result<Option<Credentials>, String> {
        let (username, password) = match self.auth.as_deref().filter(|a| !a.is_empty()) {
            Some(auth) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| "\"auth\" is not base64".to_owned())?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| "\"auth\" is not base64 of UTF-8 text".to_owned())?;
                let (user, pass) = text
                    .split_once(':')
                    .ok_or_else(|| "\"auth\" is not base64 of user:password".to_owned())?;
                (user.to_owned(), pass.to_owned())
            }
            None => (
                self.username.clone().unwrap_or_default(),
                self.password.clone().unwrap_or_default(),
            ),
        };
        if let Some(token) = self.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::identity_token(username, token.clone())));
        }
        if username.is_empty() && password.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials::new(username, password)))
    }
}

/// What a helper is asked for: the registry host, or for Docker Hub the
/// URL `docker login` stores it under.
pub fn server_url(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_SERVER_URL.to_owned()
    } else {
        registry.to_owned()
    }
}

/// A key as containers/image compares it: no scheme, no path, lower case,
/// Docker Hub's aliases as `docker.io`.
pub fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| {
            key.get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| &key[scheme.len()..])
        })
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    if crate::oci::DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        "docker.io".to_owned()
    } else {
        host
    }
}

/// The entry for `registry`: a key written exactly as the registry, else
/// the first (in key order) that normalizes to it.
fn find<'a, V>(map: &'a BTreeMap<String, V>, registry: &str) -> Option<(&'a str, &'a V)> {
    if let Some((k, v)) = map.get_key_value(registry) {
        return Some((k.as_str(), v));
    }
    let wanted = normalize_key(registry);
    map.iter()
        .find(|(k, _)| normalize_key(k) == wanted)
        .map(|(k, v)| (k.as_str(), v))
}

/// `docker-credential-<name>` with a name that cannot leave `PATH`: no
/// `/`, no `..`, nothing a shell or a path would read specially.
pub fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads at most `limit` bytes of `path`; a longer file is an error (a
/// credentials file is small, and a huge one is a mistake or an attack).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, CredentialError> {
    let file_error = |reason: String| CredentialError::File {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(file_error(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// The files `portcullis sign|attest|verify` look in for registry
/// credentials when `--username` is not given, in order (as podman and
/// docker look): `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`,
/// `~/.docker/config.json`. `env` reads a variable (the process
/// environment, or a test's).
pub fn cli_search_paths(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut paths = Vec::new();
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        paths.push(PathBuf::from(file));
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        paths.push(Path::new(&dir).join("containers").join("auth.json"));
    }
    if let Some(dir) = var("DOCKER_CONFIG") {
        paths.push(Path::new(&dir).join("config.json"));
    }
    if let Some(home) = var("HOME") {
        paths.push(Path::new(&home).join(".docker").join("config.json"));
    }
    paths
}

/// The first of `paths` that exists and has an entry for `registry`;
/// `None` when none has (the registry is then asked anonymously, as
/// docker and podman do). A file that exists but cannot be read or parsed
/// is an error naming it.
pub fn first_with_entry(paths: &[PathBuf], registry: &str) -> Result<Option<PathBuf>, String> {
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            Ok(_) => {}
        }
        let config = DockerConfig::load(path).map_err(|e| e.to_string())?;
        if config
            .lookup(registry)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .is_some()
        {
            return Ok(Some(path.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn inline(config: &DockerConfig, registry: &str) -> Option<Credentials> {
        match config.lookup(registry).unwrap() {
            Some(Entry::Inline(c)) => Some(c),
            Some(Entry::Helper { helper, .. }) => panic!("helper {helper}, not inline"),
            None => None,
        }
    }

    #[test]
    fn keys_normalize_as_containers_image_does() {
        for (key, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://GHCR.io/v2/", "ghcr.io"),
            ("HTTPS://quay.io", "quay.io"),
            ("  r.example:8443/some/path ", "r.example:8443"),
        ] {
            assert_eq!(normalize_key(key), want, "{key}");
        }
    }

    #[test]
    fn auths_auth_and_username_password_and_identity_token() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "r.example:5000": {{"username": "bob", "password": "pw:with:colons"}},
                "https://id.example/v2/": {{"auth": "{}", "identitytoken": "refresh-me"}},
                "empty.example": {{}}
            }}, "HttpHeaders": {{"User-Agent": "x"}}, "psFormat": "table"}}"#,
            b64("alice:s3cr:et"),
            b64("<token>:")
        );
        let c = DockerConfig::parse(text.as_bytes()).unwrap();
        let hub = inline(&c, "docker.io").unwrap();
        assert_eq!(hub.username, "alice");
        assert_eq!(hub.password(), Some("s3cr:et"));
        let r = inline(&c, "r.example:5000").unwrap();
        assert_eq!(
            (r.username.as_str(), r.password()),
            ("bob", Some("pw:with:colons"))
        );
        let id = inline(&c, "id.example").unwrap();
        assert_eq!(id.refresh_token(), Some("refresh-me"));
        assert_eq!(id.password(), None);
        assert!(
            inline(&c, "empty.example").is_none(),
            "{{}} is no credentials"
        );
        assert!(inline(&c, "other.example").is_none());
        // Another port is another registry.
        assert!(inline(&c, "r.example:5001").is_none());
        assert!(inline(&c, "r.example").is_none());
    }

    #[test]
    fn an_exact_key_wins_over_a_normalized_one() {
        let text = format!(
            r#"{{"auths": {{"https://r.example": {{"auth": "{}"}}, "r.example": {{"auth": "{}"}}}}}}"#,
            b64("scheme:a"),
            b64("exact:b")
        );
        let c = DockerConfig::parse(text.as_bytes()).unwrap();
        assert_eq!(inline(&c, "r.example").unwrap().username, "exact");
    }

    #[test]
    fn cred_helpers_then_creds_store_then_auths() {
        let text = format!(
            r#"{{"auths": {{"a.example": {{"auth": "{}"}}, "b.example": {{"auth": "{}"}}}},
                "credHelpers": {{"https://a.example": "ecr-login", "index.docker.io": "gcloud"}},
                "credsStore": "pass"}}"#,
            b64("u:p"),
            b64("u:p")
        );
        let c = DockerConfig::parse(text.as_bytes()).unwrap();
        let helper = |registry: &str| match c.lookup(registry).unwrap() {
            Some(Entry::Helper {
                helper,
                server_url,
                from,
            }) => (helper, server_url, from),
            _ => panic!("{registry}: no helper"),
        };
        assert_eq!(
            helper("a.example"),
            (
                "ecr-login".into(),
                "a.example".into(),
                "credHelpers[\"https://a.example\"]".into()
            )
        );
        assert_eq!(helper("b.example").0, "pass", "credsStore before auths");
        assert_eq!(helper("docker.io").0, "gcloud");
        assert_eq!(helper("docker.io").1, DOCKER_HUB_SERVER_URL);
        let no_store = DockerConfig::parse(
            format!(
                r#"{{"auths": {{"b.example": {{"auth": "{}"}}}}}}"#,
                b64("u:p")
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(inline(&no_store, "b.example").unwrap().username, "u");
    }

    #[test]
    fn bad_files_are_refused_without_quoting_secrets() {
        for (text, want) in [
            (
                r#"{"credHelpers": {"r": "x/../../bin/sh"}}"#,
                "credHelpers[\"r\"]",
            ),
            (r#"{"credsStore": "a b"}"#, "credsStore"),
            (r#"{"credsStore": "x/y"}"#, "credsStore"),
            (r#"{"auths": []}"#, "not a docker config.json"),
            ("not json", "not a docker config.json"),
        ] {
            let e = DockerConfig::parse(text.as_bytes()).err().expect(text);
            assert!(e.contains(want), "{text}: {e}");
        }
        let c = DockerConfig::parse(br#"{"auths": {"r": {"auth": "!!hunter2!!"}}}"#).unwrap();
        let e = c.lookup("r").err().expect("bad base64");
        assert!(e.contains("auths[\"r\"]") && !e.contains("hunter2"), "{e}");
        let c = DockerConfig::parse(
            format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("hunter2")).as_bytes(),
        )
        .unwrap();
        let e = c.lookup("r").err().expect("no colon");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn helper_names_stay_on_path() {
        for ok in ["ecr-login", "gcloud", "osxkeychain", "desktop.exe", "a_b"] {
            assert!(valid_helper_name(ok), "{ok}");
        }
        for no in [
            "",
            ".",
            "..",
            "a/b",
            "/bin/sh",
            "a b",
            "x;rm",
            &"a".repeat(65),
        ] {
            assert!(!valid_helper_name(no), "{no}");
        }
    }

    #[test]
    fn cli_search_order_and_first_file_with_an_entry() {
        let env = |name: &str| {
            Some(match name {
                "REGISTRY_AUTH_FILE" => "/a/auth.json".to_owned(),
                "XDG_RUNTIME_DIR" => "/run/user/1".to_owned(),
                "DOCKER_CONFIG" => "/d".to_owned(),
                "HOME" => "/users/u".to_owned(),
                _ => return None,
            })
        };
        assert_eq!(
            cli_search_paths(&env),
            [
                "/a/auth.json",
                "/run/user/1/containers/auth.json",
                "/d/config.json",
                "/users/u/.docker/config.json"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            cli_search_paths(&|n| (n == "HOME").then(|| "/h".to_owned())),
            [PathBuf::from("/h/.docker/config.json")]
        );

        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        let second = dir.path().join("second.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths": {{"a.example": {{"auth": "{}"}}}}}}"#,
                b64("u:p")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths": {{"b.example": {{"auth": "{}"}}}}}}"#,
                b64("u:p")
            ),
        )
        .unwrap();
        let paths = [
            dir.path().join("missing.json"),
            first.clone(),
            second.clone(),
        ];
        assert_eq!(first_with_entry(&paths, "a.example").unwrap(), Some(first));
        assert_eq!(
            first_with_entry(&paths, "b.example").unwrap(),
            Some(second.clone())
        );
        assert_eq!(first_with_entry(&paths, "c.example").unwrap(), None);
        std::fs::write(&second, "{").unwrap();
        let e = first_with_entry(&paths, "c.example").unwrap_err();
        assert!(e.contains("second.json"), "{e}");
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("config.json");
        std::fs::write(&big, vec![b' '; (MAX_DOCKER_CONFIG_BYTES + 1) as usize]).unwrap();
        let e = DockerConfig::load(&big).err().expect("too big").to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
