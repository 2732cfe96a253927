//! `clientAuth:` as written: who may pull through the registry port. Each
//! way of authenticating is optional; with the section absent, every
//! client is anonymous (as a plain registry mirror is). The files are read,
//! and the rules compiled, by `clientauth::ClientAuth::from_config` (called
//! once, by the composition root).
//!
//! May use: std, serde, `super` (the error type and its line finder).
//! Must never use: any other module of the crate.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Source};

/// `clientAuth:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientAuthConfig {
    /// An Apache htpasswd file of bcrypt entries (`htpasswd -B`), as
    /// distribution's `auth.htpasswd` reads: HTTP Basic auth.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    /// Named bearer tokens, each in its own file (one line).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A PEM file of CA certificates: a client certificate issued by one
    /// of them authenticates its holder (needs `tls:`).
    #[serde(default, rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
    /// The realm of the `WWW-Authenticate: Basic` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Which identities may pull which repositories. Absent: every
    /// authenticated identity may pull everything the policy admits.
    #[serde(default)]
    pub access: Option<Vec<AccessRule>>,
}

fn default_realm() -> String {
    "portcullis".to_owned()
}

/// One named bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenConfig {
    /// The identity the token authenticates (recorded in the audit trail).
    pub name: String,
    pub token_file: PathBuf,
}

/// One access rule: these identities may pull repositories matching these
/// patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    /// Identity names (htpasswd users, token names, certificate names);
    /// `*` is every authenticated identity.
    pub identities: Vec<String>,
    /// Name patterns over `<registry>/<repository>`, as in the policy's
    /// `clusterAdmissionRules`/`admissionRules` keys: `*` within a path
    /// segment, `**` across segments.
    pub repositories: Vec<String>,
}

impl ClientAuthConfig {
    /// Whether any way of authenticating is configured.
    pub fn any_method(&self) -> bool {
        self.htpasswd.is_some() || !self.tokens.is_empty() || self.client_ca_file.is_some()
    }

    /// Paths relative to the configuration file, made absolute.
    pub(super) fn resolve_paths(&mut self, fix: impl Fn(&mut PathBuf)) {
        if let Some(path) = &mut self.htpasswd {
            fix(path);
        }
        for token in &mut self.tokens {
            fix(&mut token.token_file);
        }
        if let Some(path) = &mut self.client_ca_file {
            fix(path);
        }
    }
}

/// What can be checked without reading the files: at least one method,
/// the files exist, a client CA only with `tls:`, token names unique,
/// access rules that name someone and something.
pub(super) fn validate(auth: &ClientAuthConfig, tls: bool, at: &Source) -> Result<(), ConfigError> {
    if !auth.any_method() {
        return Err(at.invalid(
            "clientAuth",
            "clientAuth",
            "",
            "no way to authenticate: set htpasswd, tokens or clientCAFile (or remove clientAuth \
             to serve anonymous clients)",
        ));
    }
    if auth.client_ca_file.is_some() && !tls {
        return Err(at.invalid(
            "clientAuth.clientCAFile",
            "clientCAFile",
            "",
            "client certificates need HTTPS on the registry port: configure tls",
        ));
    }
    let files = auth
        .htpasswd
        .iter()
        .map(|p| ("clientAuth.htpasswd", "htpasswd", p))
        .chain(
            auth.tokens
                .iter()
                .map(|t| ("clientAuth.tokens.tokenFile", "tokenFile", &t.token_file)),
        )
        .chain(
            auth.client_ca_file
                .iter()
                .map(|p| ("clientAuth.clientCAFile", "clientCAFile", p)),
        );
    for (field, key, path) in files {
        if let Err(e) = std::fs::metadata(path) {
            return Err(at.invalid(
                field,
                key,
                "",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for token in &auth.tokens {
        if token.name.trim().is_empty() || token.name.contains(':') {
            return Err(at.invalid(
                "clientAuth.tokens.name",
                "name",
                &token.name,
                format!(
                    "{:?}: a token's name is an identity: not empty, no ':'",
                    token.name
                ),
            ));
        }
        if !names.insert(token.name.as_str()) {
            return Err(at.invalid(
                "clientAuth.tokens.name",
                "name",
                &token.name,
                format!("{:?} is named twice", token.name),
            ));
        }
    }
    if auth.realm.contains('"') || auth.realm.chars().any(char::is_control) {
        return Err(at.invalid(
            "clientAuth.realm",
            "realm",
            "",
            "a realm may not hold quotes or control characters",
        ));
    }
    for rule in auth.access.iter().flatten() {
        if rule.identities.is_empty() || rule.repositories.is_empty() {
            return Err(at.invalid(
                "clientAuth.access",
                "identities",
                "",
                "each access rule names identities and repositories",
            ));
        }
    }
    Ok(())
}
