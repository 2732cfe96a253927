//! Where an upstream's credentials come from, and keeping them current:
//! `auth.passwordFile` (re-read when the file changes) or
//! `auth.dockerConfig` (a docker `config.json`: inline `auths`, or a
//! `docker-credential-*` helper, asked again whenever they are needed
//! fresh).
//!
//! [`CredentialSource::fresh`] resolves now: the token flow calls it for
//! every token it fetches (one per scope and token lifetime, not one per
//! request), and [`super::auth`] calls it again after the upstream refused
//! what was sent. [`CredentialSource::current`] is for Basic auth, which
//! sends the credentials with every request: it reuses the last answer
//! while the file it came from is unchanged (a `stat`, no read).
//! Resolutions are single-flight: callers that arrive while one runs take
//! its answer, so a slow helper runs once, not once per waiting request.
//!
//! Secrets never reach a log line or a `Debug` output: [`Credentials`]
//! redacts itself, and errors name files, helpers and keys, never values.

pub mod docker_config;
pub mod helper;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use http::HeaderValue;

use super::auth::Secret;
use docker_config::{DockerConfig, Entry};
use helper::HelperError;

/// Largest password file read: a password or a registry token is at most
/// a few KiB.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// A username and either a password (Basic auth, and the token endpoint
/// as Basic) or an identity token (an OAuth2 refresh token for the token
/// endpoint, as docker's `identitytoken`). Its `Debug` shows the username
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    secret: CredentialSecret,
}

#[derive(Clone, PartialEq, Eq)]
enum CredentialSecret {
    Password(String),
    IdentityToken(String),
}

impl Credentials {
    pub fn new(username: String, password: String) -> Credentials {
        Credentials {
            username,
            secret: CredentialSecret::Password(password),
        }
    }

    /// Credentials whose secret is an identity (refresh) token.
    pub fn identity_token(username: String, token: String) -> Credentials {
        Credentials {
            username,
            secret: CredentialSecret::IdentityToken(token),
        }
    }

    /// The password, unless the secret is an identity token.
    pub fn password(&self) -> Option<&str> {
        match &self.secret {
            CredentialSecret::Password(p) => Some(p),
            CredentialSecret::IdentityToken(_) => None,
        }
    }

    /// The identity token to present as an OAuth2 refresh token.
    pub fn refresh_token(&self) -> Option<&str> {
        match &self.secret {
            CredentialSecret::IdentityToken(t) => Some(t),
            CredentialSecret::Password(_) => None,
        }
    }

    /// `Authorization: Basic …`; `None` for an identity token, which only
    /// a token endpoint takes.
    pub fn basic_header(&self) -> Option<Secret> {
        let password = self.password()?;
        let raw = format!("{}:{password}", self.username);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        // Base64 output is always a valid header value.
        let value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        Some(Secret::new(value))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.secret {
            CredentialSecret::Password(_) => "password",
            CredentialSecret::IdentityToken(_) => "identity token",
        };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field(kind, &"<redacted>")
            .finish()
    }
}

/// Why no credentials could be had. Names files, helpers and keys; never
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    DockerConfig { path: PathBuf, reason: String },
    #[error("{} has no credentials for {registry} (no credHelpers or auths entry for it, and no credsStore)", path.display())]
    NoEntry { path: PathBuf, registry: String },
    #[error("{from} in {}: {source}", path.display())]
    Helper {
        path: PathBuf,
        from: String,
        #[source]
        source: HelperError,
    },
}

/// Where the credentials are configured.
#[derive(Clone)]
enum Kind {
    PasswordFile { username: String, path: PathBuf },
    DockerConfig { path: PathBuf },
}

impl Kind {
    fn file(&self) -> &Path {
        match self {
            Kind::PasswordFile { path, .. } | Kind::DockerConfig { path } => path,
        }
    }
}

/// What identifies a version of a file without reading it: device, inode
/// (a Kubernetes secret update swaps a symlink to a new file), size, and
/// modification and change times to the nanosecond.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp([i64; 7]);

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ]))
    }
}

/// The last resolution and when it started.
struct Resolved {
    started: Instant,
    /// The configured file as it was just before it was read.
    stamp: Option<FileStamp>,
    result: Result<Credentials, CredentialError>,
}

/// One upstream's configured credentials, resolved on demand.
pub struct CredentialSource {
    registry: String,
    kind: Kind,
    last: tokio::sync::Mutex<Option<Resolved>>,
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSource")
            .field("registry", &self.registry)
            .field("from", &self.describe())
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// `username` with the password in `path`, read now (a missing file
    /// stops startup) and again whenever the file changes.
    pub fn password_file(
        registry: &str,
        username: &str,
        path: &Path,
    ) -> Result<CredentialSource, CredentialError> {
        let kind = Kind::PasswordFile {
            username: username.to_owned(),
            path: path.to_owned(),
        };
        let started = Instant::now();
        let (stamp, result) = resolve(registry, &kind);
        let credentials = result?;
        Ok(CredentialSource {
            registry: registry.to_owned(),
            kind,
            last: tokio::sync::Mutex::new(Some(Resolved {
                started,
                stamp,
                result: Ok(credentials),
            })),
        })
    }

    /// The docker `config.json` at `path`, checked now: it parses, it has
    /// an entry for `registry`, and a helper it names is on `PATH` (the
    /// helper itself runs only when credentials are needed).
    pub fn docker_config(registry: &str, path: &Path) -> Result<CredentialSource, CredentialError> {
        let config = DockerConfig::load(path)?;
        let entry = config
            .lookup(registry)
            .map_err(|reason| CredentialError::DockerConfig {
                path: path.to_owned(),
                reason,
            })?
            .ok_or_else(|| CredentialError::NoEntry {
                path: path.to_owned(),
                registry: registry.to_owned(),
            })?;
        if let Entry::Helper { helper, from, .. } = &entry {
            let program = helper::program(helper);
            if helper::find_on_path(&program).is_none() {
                return Err(CredentialError::Helper {
                    path: path.to_owned(),
                    from: from.clone(),
                    source: HelperError::Missing { program },
                });
            }
        }
        Ok(CredentialSource {
            registry: registry.to_owned(),
            kind: Kind::DockerConfig {
                path: path.to_owned(),
            },
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// `passwordFile <path>` or `dockerConfig <path>`, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::PasswordFile { path, .. } => format!("passwordFile {}", path.display()),
            Kind::DockerConfig { path } => format!("dockerConfig {}", path.display()),
        }
    }

    /// The credentials as last resolved while the configured file is
    /// unchanged; resolved afresh otherwise (or after a failure).
    pub async fn current(&self) -> Result<Credentials, CredentialError> {
        let asked = Instant::now();
        {
            let last = self.last.lock().await;
            if let Some(Resolved {
                stamp: Some(stamp),
                result: Ok(credentials),
                ..
            }) = &*last
            {
                if FileStamp::of(self.kind.file()).as_ref() == Some(stamp) {
                    return Ok(credentials.clone());
                }
            }
        }
        self.resolve_after(asked).await
    }

    /// The credentials resolved now: the password file read, the docker
    /// config read and its helper run. A resolution that started after
    /// this call is as fresh, and its answer is shared.
    pub async fn fresh(&self) -> Result<Credentials, CredentialError> {
        self.resolve_after(Instant::now()).await
    }

    async fn resolve_after(&self, asked: Instant) -> Result<Credentials, CredentialError> {
        let mut last = self.last.lock().await;
        if let Some(done) = &*last {
            if done.started > asked {
                return done.result.clone();
            }
        }
        let started = Instant::now();
        let registry = self.registry.clone();
        let kind = self.kind.clone();
        let (stamp, result) = tokio::task::spawn_blocking(move || resolve(&registry, &kind))
            .await
            .unwrap_or_else(|e| {
                (
                    None,
                    Err(CredentialError::File {
                        path: self.kind.file().to_owned(),
                        reason: format!("resolving credentials failed: {e}"),
                    }),
                )
            });
        let changed = match (&*last, &result) {
            (
                Some(Resolved {
                    result: Ok(old), ..
                }),
                Ok(new),
            ) => old != new,
            _ => false,
        };
        if changed {
            tracing::info!(
                upstream = %self.registry,
                from = %self.describe(),
                "upstream credentials changed; using the new ones"
            );
        }
        *last = Some(Resolved {
            started,
            stamp,
            result: result.clone(),
        });
        result
    }
}

/// Resolves `kind` for `registry` now (blocking: reads files, may run a
/// helper), with the stamp of the configured file taken just before.
fn resolve(
    registry: &str,
    kind: &Kind,
) -> (Option<FileStamp>, Result<Credentials, CredentialError>) {
    let stamp = FileStamp::of(kind.file());
    let result = match kind {
        Kind::PasswordFile { username, path } => {
            docker_config::read_bounded(path, MAX_PASSWORD_FILE_BYTES).and_then(|bytes| {
                let text = String::from_utf8(bytes).map_err(|_| CredentialError::File {
                    path: path.clone(),
                    reason: "not UTF-8 text".into(),
                })?;
                let password = text.trim_end_matches(['\n', '\r']).to_owned();
                Ok(Credentials::new(username.clone(), password))
            })
        }
        Kind::DockerConfig { path } => resolve_docker_config(registry, path),
    };
    (stamp, result)
}

fn resolve_docker_config(registry: &str, path: &Path) -> Result<Credentials, CredentialError> {
    let config = DockerConfig::load(path)?;
    let entry = config
        .lookup(registry)
        .map_err(|reason| CredentialError::DockerConfig {
            path: path.to_owned(),
            reason,
        })?;
    match entry {
        None => Err(CredentialError::NoEntry {
            path: path.to_owned(),
            registry: registry.to_owned(),
        }),
        Some(Entry::Inline(credentials)) => Ok(credentials),
        Some(Entry::Helper {
            helper,
            server_url,
            from,
        }) => helper::get(&helper, &server_url).map_err(|source| CredentialError::Helper {
            path: path.to_owned(),
            from,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Credentials::new("user".into(), "hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let header = c.basic_header().unwrap();
        assert!(!format!("{header:?}").contains("aHVudGVy"));
        assert!(header.header().is_sensitive());
        assert_eq!(header.header().to_str().unwrap(), "Basic dXNlcjpodW50ZXIy");
        let t = Credentials::identity_token("".into(), "refresh-hunter2".into());
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(
            t.basic_header().is_none(),
            "an identity token is not a password"
        );
    }

    #[tokio::test]
    async fn a_changed_password_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "first\n").unwrap();
        let source = CredentialSource::password_file("r.example", "u", &pw).unwrap();
        assert_eq!(source.current().await.unwrap().password(), Some("first"));
        // Same length, new content: the stamp (inode, times) still moves.
        let next = dir.path().join("pw.new");
        std::fs::write(&next, "secnd\n").unwrap();
        std::fs::rename(&next, &pw).unwrap();
        assert_eq!(source.current().await.unwrap().password(), Some("secnd"));
        std::fs::write(&pw, "third-and-longer").unwrap();
        assert_eq!(
            source.current().await.unwrap().password(),
            Some("third-and-longer")
        );
        std::fs::remove_file(&pw).unwrap();
        let e = source.current().await.unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("pw"), "{e}");
        let e = CredentialSource::password_file("r.example", "u", &pw).unwrap_err();
        assert!(matches!(e, CredentialError::File { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_docker_config_is_read_when_credentials_are_needed_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let write = |user: &str, pass: &str| {
            std::fs::write(
                &config,
                format!(
                    r#"{{"auths": {{"https://r.example:5000/v1/": {{"auth": "{}"}}}}}}"#,
                    b64(&format!("{user}:{pass}"))
                ),
            )
            .unwrap()
        };
        write("u", "one");
        let source = CredentialSource::docker_config("r.example:5000", &config).unwrap();
        assert_eq!(source.fresh().await.unwrap().password(), Some("one"));
        write("u", "two");
        assert_eq!(source.fresh().await.unwrap().password(), Some("two"));
        assert!(!format!("{source:?}").contains("two"));

        let e = CredentialSource::docker_config("other.example", &config).unwrap_err();
        assert!(
            matches!(&e, CredentialError::NoEntry { registry, .. } if registry == "other.example"),
            "{e:?}"
        );
        std::fs::write(
            &config,
            r#"{"credHelpers": {"r.example:5000": "surely-not-installed-here"}}"#,
        )
        .unwrap();
        let e = CredentialSource::docker_config("r.example:5000", &config)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("docker-credential-surely-not-installed-here is not on PATH")
                && e.contains("credHelpers[\"r.example:5000\"]"),
            "{e}"
        );
        // Removed after startup: the next resolution says so.
        let e = source.fresh().await.unwrap_err().to_string();
        assert!(e.contains("not on PATH"), "{e}");
    }
}
