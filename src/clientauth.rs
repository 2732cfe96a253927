//! Client authentication on the registry port (`clientAuth`), the way a
//! distribution registry does it, so that `podman login`, `skopeo login`,
//! containerd's `hosts.toml` headers and kubelet pull secrets work as they
//! do against any registry:
//!
//! - **htpasswd**: HTTP Basic against an Apache htpasswd file of bcrypt
//!   entries (`htpasswd -B`, the only kind distribution accepts);
//! - **tokens**: `Authorization: Bearer <token>`, or Basic with the
//!   token's name as the user and the token as the password (what a pull
//!   secret holds);
//! - **client certificates**: a certificate the TLS handshake verified
//!   against `clientCAFile` names its holder (its subject's common name,
//!   else its first URI, DNS or email subject alternative name).
//!
//! A request that presents nothing is answered `401` with a
//! `WWW-Authenticate: Basic realm="…"` challenge; one that presents
//! credentials that do not check out is answered `401` too, whatever else
//! it holds (a wrong password is never ignored in favour of a
//! certificate). Then the access rules decide which repositories the
//! identity may pull (`403 DENIED` otherwise).
//!
//! Files are re-read when they change (looked at no more than once a
//! second): a user added to the htpasswd file or a rotated token works
//! without a restart; a file that no longer reads is reported and the last
//! good credentials stay in force. bcrypt is deliberately slow (tens of
//! milliseconds at the default cost), and clients send Basic credentials
//! with every request, so a verified `(user, password)` pair is remembered
//! — as a SHA-256 over the pair and the entry's hash, never the password —
//! for [`VERIFIED_TTL`], at most [`MAX_VERIFIED`] of them; verification runs
//! off the async threads, at most [`BCRYPT_SLOTS`] at once, so wrong
//! guesses cannot take the proxy's CPU.
//!
//! May use: `config`, `policy::pattern`. Must never use: verify, serve or
//! anything above them; serve uses it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::config::ClientAuthConfig;
use crate::policy::pattern::{canonical_pattern, Pattern};

/// Shortest token accepted: tokens must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// How long a verified Basic `(user, password)` pair is remembered.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Most verified pairs remembered; past it, the oldest half is forgotten.
pub const MAX_VERIFIED: usize = 4096;
/// bcrypt verifications running at once.
pub const BCRYPT_SLOTS: usize = 2;
/// Longest a request waits for a bcrypt slot before it is refused (503).
pub const BCRYPT_WAIT: Duration = Duration::from_secs(10);
/// Highest bcrypt cost accepted in the htpasswd file: each step doubles
/// the work, and 14 already takes about a second.
pub const MAX_BCRYPT_COST: u32 = 14;
/// Largest htpasswd or token file read.
pub const MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;
/// Files are looked at for changes no more often than this.
const RECHECK: Duration = Duration::from_secs(1);

/// How an identity authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Htpasswd,
    Token,
    Certificate,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Htpasswd => "htpasswd",
            Method::Token => "token",
            Method::Certificate => "certificate",
        })
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub method: Method,
}

/// The name a verified client certificate gives its holder, put in the
/// extensions of every request on its connection by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub Arc<str>);

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Nothing presented.
    #[error("authentication required")]
    Missing,
    /// Credentials presented that do not check out: why, for the log
    /// (never the secret). The client is told only that they were refused.
    #[error("{0}")]
    Rejected(String),
    /// No bcrypt slot came free within [`BCRYPT_WAIT`].
    #[error("too many logins being checked at once; retry")]
    Busy,
}

/// The secrets as read from the files.
#[derive(Default)]
struct Secrets {
    /// htpasswd user → bcrypt hash.
    users: HashMap<String, String>,
    /// token name → SHA-256 of the token.
    tokens: Vec<(String, [u8; 32])>,
}

/// A file's identity and version, to see that it changed.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

struct Files {
    htpasswd: Option<PathBuf>,
    tokens: Vec<(String, PathBuf)>,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        self.htpasswd
            .iter()
            .map(PathBuf::as_path)
            .chain(self.tokens.iter().map(|(_, p)| p.as_path()))
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.paths().map(stamp).collect()
    }

    /// Reads every file; the first that does not read is the error, naming
    /// it.
    fn read(&self) -> Result<Secrets, String> {
        let mut secrets = Secrets::default();
        if let Some(path) = &self.htpasswd {
            let text = read_small(path).map_err(|e| format!("clientAuth.htpasswd: {e}"))?;
            secrets.users =
                parse_htpasswd(&text).map_err(|e| format!("clientAuth.htpasswd: {e}"))?;
        }
        for (i, (name, path)) in self.tokens.iter().enumerate() {
            let text =
                read_small(path).map_err(|e| format!("clientAuth.tokens[{i}].tokenFile: {e}"))?;
            let token = text.trim_end_matches(['\n', '\r']);
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "clientAuth.tokens[{i}].tokenFile: the token in {} must be at least \
                     {MIN_TOKEN_LEN} visible ASCII characters (no spaces)",
                    path.display()
                ));
            }
            if secrets.users.contains_key(name) {
                return Err(format!(
                    "clientAuth.tokens[{i}].name: {name:?} is also an htpasswd user; \
                     identities must be unambiguous"
                ));
            }
            secrets
                .tokens
                .push((name.clone(), Sha256::digest(token.as_bytes()).into()));
        }
        Ok(secrets)
    }
}

fn read_small(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(format!(
            "{} is larger than {MAX_FILE_SIZE} bytes",
            path.display()
        ));
    }
    Ok(text)
}

/// Reads an htpasswd file: `user:hash` lines, blank lines and `#`
/// comments skipped; every hash bcrypt (`$2a$`, `$2b$`, `$2y$`) at a cost
/// of at most [`MAX_BCRYPT_COST`]; each user once.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = n + 1;
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {at}: not `user:hash`"));
        };
        if user.is_empty() {
            return Err(format!("line {at}: empty user name"));
        }
        let kind = if hash.starts_with("$apr1$") {
            Some("MD5 ($apr1$)")
        } else if hash.starts_with("{SHA}") {
            Some("SHA-1 ({SHA})")
        } else if !(hash.starts_with("$2a$")
            || hash.starts_with("$2b$")
            || hash.starts_with("$2y$"))
        {
            Some("crypt or plain text")
        } else {
            None
        };
        if let Some(kind) = kind {
            return Err(format!(
                "line {at}: user {user:?} has a {kind} entry; only bcrypt entries are accepted \
                 (create them with `htpasswd -B`)"
            ));
        }
        let cost = hash
            .get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .filter(|_| hash.len() == 60)
            .ok_or_else(|| format!("line {at}: user {user:?} has a malformed bcrypt hash"))?;
        if cost > MAX_BCRYPT_COST {
            return Err(format!(
                "line {at}: user {user:?} has bcrypt cost {cost}; at most {MAX_BCRYPT_COST} is \
                 accepted (each login would take seconds of CPU)"
            ));
        }
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(format!("line {at}: user {user:?} appears twice"));
        }
    }
    Ok(users)
}

/// The secrets in force and when the files were last looked at.
struct Current {
    secrets: Arc<Secrets>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

/// Compiled access rules.
struct Access {
    rules: Vec<(Vec<String>, Vec<Pattern>)>,
}

impl Access {
    fn allows(&self, identity: &str, canonical: &str) -> bool {
        self.rules.iter().any(|(identities, patterns)| {
            identities.iter().any(|i| i == "*" || i == identity)
                && patterns.iter().any(|p| p.matches(canonical))
        })
    }
}

/// Compiled `clientAuth`. `Debug` shows no secret.
pub struct ClientAuth {
    files: Files,
    current: Mutex<Current>,
    certificates: bool,
    challenge: HeaderValue,
    access: Option<Access>,
    /// SHA-256(user, password, hash) → when it was verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    bcrypt: Semaphore,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("htpasswd", &self.files.htpasswd)
            .field(
                "tokens",
                &self.files.tokens.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Reads the files and compiles the rules. Errors name the field.
    pub fn from_config(config: &ClientAuthConfig) -> Result<ClientAuth, String> {
        let files = Files {
            htpasswd: config.htpasswd.clone(),
            tokens: config
                .tokens
                .iter()
                .map(|t| (t.name.clone(), t.token_file.clone()))
                .collect(),
        };
        let stamps = files.stamps();
        let secrets = files.read()?;
        let access = match &config.access {
            None => None,
            Some(rules) => {
                let mut compiled = Vec::new();
                for (i, rule) in rules.iter().enumerate() {
                    let mut patterns = Vec::new();
                    for text in &rule.repositories {
                        let pattern = canonical_pattern(text)
                            .and_then(|canonical| Pattern::new(&canonical))
                            .map_err(|e| format!("clientAuth.access[{i}].repositories: {e}"))?;
                        patterns.push(pattern);
                    }
                    compiled.push((rule.identities.clone(), patterns));
                }
                Some(Access { rules: compiled })
            }
        };
        let challenge = HeaderValue::try_from(format!("Basic realm=\"{}\"", config.realm))
            .map_err(|_| "clientAuth.realm: not a valid header value".to_owned())?;
        Ok(ClientAuth {
            files,
            current: Mutex::new(Current {
                secrets: Arc::new(secrets),
                stamps,
                checked: Instant::now(),
            }),
            certificates: config.client_ca_file.is_some(),
            challenge,
            access,
            verified: Mutex::new(HashMap::new()),
            bcrypt: Semaphore::new(BCRYPT_SLOTS),
        })
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self) -> HeaderValue {
        self.challenge.clone()
    }

    /// The secrets in force, re-read first when a file changed (looked at
    /// at most once per [`RECHECK`]).
    fn secrets(&self) -> Arc<Secrets> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != current.stamps {
                match self.files.read() {
                    Ok(secrets) => {
                        tracing::info!("clientAuth: credentials files changed; re-read");
                        current.secrets = Arc::new(secrets);
                        current.stamps = stamps;
                    }
                    Err(e) => {
                        // Reported once per change; the last good
                        // credentials stay in force.
                        tracing::error!(error = %e, "clientAuth: cannot re-read credentials; keeping the previous ones");
                        current.stamps = stamps;
                    }
                }
            }
        }
        Arc::clone(&current.secrets)
    }

    /// Who `headers` (and the connection's verified certificate, if any)
    /// say the client is.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&PeerCertificate>,
    ) -> Result<Identity, AuthError> {
        let by_certificate = || match certificate {
            Some(PeerCertificate(name)) if self.certificates => Ok(Identity {
                name: name.to_string(),
                method: Method::Certificate,
            }),
            _ => Err(AuthError::Missing),
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return by_certificate();
        };
        let bytes = value.as_bytes();
        let scheme_is = |scheme: &[u8]| {
            bytes
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        if scheme_is(b"bearer ") {
            let token = bytes[7..].trim_ascii();
            return self
                .token_named(None, token)
                .ok_or_else(|| AuthError::Rejected("unknown bearer token".into()));
        }
        if !scheme_is(b"basic ") {
            return Err(AuthError::Rejected(
                "unsupported Authorization scheme (Basic or Bearer)".into(),
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bytes[6..].trim_ascii())
            .map_err(|_| AuthError::Rejected("Basic credentials are not base64".into()))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| AuthError::Rejected("Basic credentials are not UTF-8".into()))?;
        let Some((user, password)) = text.split_once(':') else {
            return Err(AuthError::Rejected("Basic credentials without ':'".into()));
        };
        if user.is_empty() && password.is_empty() {
            // containers/image answers a Basic challenge it has no
            // credentials for with an empty pair: nothing presented.
            return by_certificate();
        }
        let secrets = self.secrets();
        if let Some(hash) = secrets.users.get(user) {
            return self.check_password(user, password, hash).await;
        }
        if let Some(identity) = self.token_named(Some(user), password.as_bytes()) {
            return Ok(identity);
        }
        Err(AuthError::Rejected(format!("unknown user {user:?}")))
    }

    /// The token identity `token` belongs to (named `name`, when given).
    fn token_named(&self, name: Option<&str>, token: &[u8]) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let secrets = self.secrets();
        // Every token is compared, in constant time, whichever matches.
        let mut found = None;
        for (token_name, expected) in &secrets.tokens {
            let same = expected
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same && name.is_none_or(|n| n == token_name) {
                found = Some(token_name.clone());
            }
        }
        found.map(|name| Identity {
            name,
            method: Method::Token,
        })
    }

    async fn check_password(
        &self,
        user: &str,
        password: &str,
        hash: &str,
    ) -> Result<Identity, AuthError> {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            for part in [user, password, hash] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.finalize().into()
        };
        let identity = Identity {
            name: user.to_owned(),
            method: Method::Htpasswd,
        };
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified
                .get(&key)
                .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
            {
                return Ok(identity);
            }
        }
        let _slot = tokio::time::timeout(BCRYPT_WAIT, self.bcrypt.acquire())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let (password, hash) = (password.to_owned(), hash.to_owned());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|_| AuthError::Busy)?
            .unwrap_or(false);
        if !ok {
            return Err(AuthError::Rejected(format!(
                "wrong password for user {user:?}"
            )));
        }
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, at| at.elapsed() < VERIFIED_TTL);
            if verified.len() >= MAX_VERIFIED {
                let mut times: Vec<Instant> = verified.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                verified.retain(|_, at| *at > cut);
            }
        }
        verified.insert(key, Instant::now());
        Ok(identity)
    }

    /// Whether `identity` may pull from `canonical` (`<registry>/<repo>`).
    pub fn may_pull(&self, identity: &Identity, canonical: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|access| access.allows(&identity.name, canonical))
    }
}

/// The name a client certificate (DER) gives its holder: the subject's
/// common name, else its first URI, DNS name or email subject alternative
/// name. `None` when it names nothing or does not parse.
pub fn certificate_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Decode as _, Tagged as _};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != COMMON_NAME {
                continue;
            }
            let value = &atv.value;
            let text = match value.tag() {
                x509_cert::der::Tag::Utf8String => value
                    .decode_as::<Utf8StringRef<'_>>()
                    .ok()
                    .map(|s| s.to_string()),
                x509_cert::der::Tag::PrintableString => value
                    .decode_as::<PrintableStringRef<'_>>()
                    .ok()
                    .map(|s| s.to_string()),
                x509_cert::der::Tag::Ia5String => value
                    .decode_as::<Ia5StringRef<'_>>()
                    .ok()
                    .map(|s| s.to_string()),
                _ => None,
            };
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                return Some(text);
            }
        }
    }
    let (_, san) = tbs.get::<SubjectAltName>().ok()??;
    let names = san.0;
    for want in 0..3 {
        for name in &names {
            match (want, name) {
                (0, GeneralName::UniformResourceIdentifier(s))
                | (1, GeneralName::DnsName(s))
                | (2, GeneralName::Rfc822Name(s)) => return Some(s.to_string()),
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::clientauth::{AccessRule, TokenConfig};

    const ALICE_HASH: &str = "$2y$05$Jm4QZ8l0cJr3P6b0nUe5oeu5pTn0d6wq4Qm8u7s2X8Sx0nJZ3q7yW";

    fn config(dir: &Path, htpasswd: &str, token: Option<&str>) -> ClientAuthConfig {
        let path = dir.join("htpasswd");
        std::fs::write(&path, htpasswd).expect("write htpasswd");
        let tokens = match token {
            Some(t) => {
                let p = dir.join("ci.token");
                std::fs::write(&p, format!("{t}\n")).expect("write token");
                vec![TokenConfig {
                    name: "ci".into(),
                    token_file: p,
                }]
            }
            None => Vec::new(),
        };
        ClientAuthConfig {
            htpasswd: Some(path),
            tokens,
            client_ca_file: None,
            realm: "portcullis".into(),
            access: None,
        }
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::try_from(format!("Basic {v}")).expect("header"),
        );
        h
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {token}")).expect("header"),
        );
        h
    }

    fn entry(user: &str, password: &str) -> String {
        format!("{user}:{}\n", bcrypt::hash(password, 4).expect("hash"))
    }

    #[tokio::test]
    async fn basic_bearer_and_pull_secret_forms_authenticate_and_wrong_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = "ci-token-0123456789abcdef";
        let auth =
            ClientAuth::from_config(&config(dir.path(), &entry("alice", "s3cret"), Some(token)))
                .expect("compile");
        let alice = auth.authenticate(&basic("alice", "s3cret"), None).await;
        assert_eq!(
            alice.map(|i| (i.name, i.method)),
            Ok(("alice".into(), Method::Htpasswd))
        );
        // Remembered: the second time needs no bcrypt (and still answers).
        assert!(auth
            .authenticate(&basic("alice", "s3cret"), None)
            .await
            .is_ok());
        assert!(matches!(
            auth.authenticate(&basic("alice", "S3cret"), None).await,
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            auth.authenticate(&basic("mallory", "s3cret"), None).await,
            Err(AuthError::Rejected(_))
        ));
        let ci = auth.authenticate(&bearer(token), None).await;
        assert_eq!(
            ci.map(|i| (i.name, i.method)),
            Ok(("ci".into(), Method::Token))
        );
        let secret = auth.authenticate(&basic("ci", token), None).await;
        assert_eq!(secret.map(|i| i.name), Ok("ci".into()));
        // A token under another name is not that identity.
        assert!(auth
            .authenticate(&basic("alice", token), None)
            .await
            .is_err());
        assert!(auth
            .authenticate(&bearer("ci-token-0123456789abcdeX"), None)
            .await
            .is_err());
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&basic("", ""), None).await,
            Err(AuthError::Missing),
            "an empty pair (what skopeo sends without credentials) is nothing presented"
        );
    }

    #[tokio::test]
    async fn a_certificate_counts_only_when_nothing_else_is_presented_and_certificates_are_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path(), &entry("alice", "pw"), None);
        let cert = PeerCertificate(Arc::from("build-bot"));
        let auth = ClientAuth::from_config(&cfg).expect("compile");
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), Some(&cert)).await,
            Err(AuthError::Missing),
            "certificates are not a method unless clientCAFile is set"
        );
        cfg.client_ca_file = Some(dir.path().join("ca.pem"));
        let auth = ClientAuth::from_config(&cfg).expect("compile");
        let who = auth.authenticate(&HeaderMap::new(), Some(&cert)).await;
        assert_eq!(
            who.map(|i| (i.name, i.method)),
            Ok(("build-bot".into(), Method::Certificate))
        );
        assert!(
            matches!(
                auth.authenticate(&basic("alice", "wrong"), Some(&cert))
                    .await,
                Err(AuthError::Rejected(_))
            ),
            "wrong credentials are refused even with a good certificate"
        );
    }

    #[tokio::test]
    async fn files_are_re_read_when_they_change_and_a_broken_file_keeps_the_last_good_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), &entry("alice", "one"), None);
        let auth = ClientAuth::from_config(&cfg).expect("compile");
        assert!(auth
            .authenticate(&basic("alice", "one"), None)
            .await
            .is_ok());
        let path = cfg.htpasswd.clone().expect("path");
        std::fs::write(&path, entry("bob", "two")).expect("rewrite");
        auth.current.lock().expect("lock").checked -= RECHECK;
        assert!(auth.authenticate(&basic("bob", "two"), None).await.is_ok());
        assert!(
            auth.authenticate(&basic("alice", "one"), None)
                .await
                .is_err(),
            "a removed user is refused, even one verified a moment ago"
        );
        std::fs::write(&path, "bob:{SHA}abc\n").expect("break");
        auth.current.lock().expect("lock").checked -= RECHECK;
        assert!(auth.authenticate(&basic("bob", "two"), None).await.is_ok());
    }

    #[test]
    fn htpasswd_entries_other_than_bcrypt_or_too_costly_are_refused_by_line() {
        let md5 = parse_htpasswd("# users\n\nalice:$apr1$abc$def\n").unwrap_err();
        assert!(
            md5.contains("line 3") && md5.contains("htpasswd -B"),
            "{md5}"
        );
        assert!(parse_htpasswd("bob:{SHA}xyz")
            .unwrap_err()
            .contains("SHA-1"));
        assert!(parse_htpasswd("bob:plain")
            .unwrap_err()
            .contains("crypt or plain"));
        let costly = ALICE_HASH.replacen("$05$", "$15$", 1);
        assert!(parse_htpasswd(&format!("alice:{costly}"))
            .unwrap_err()
            .contains("cost 15"));
        let twice = format!("alice:{ALICE_HASH}\nalice:{ALICE_HASH}\n");
        assert!(parse_htpasswd(&twice).unwrap_err().contains("line 2"));
        assert_eq!(
            parse_htpasswd(&format!("alice:{ALICE_HASH}")).map(|u| u.len()),
            Ok(1)
        );
    }

    #[test]
    fn access_rules_match_identities_and_repository_patterns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path(), &entry("alice", "pw"), None);
        cfg.access = Some(vec![
            AccessRule {
                identities: vec!["alice".into()],
                repositories: vec!["ghcr.io/acme/**".into()],
            },
            AccessRule {
                identities: vec!["*".into()],
                repositories: vec!["docker.io/library/*".into()],
            },
        ]);
        let auth = ClientAuth::from_config(&cfg).expect("compile");
        let who = |name: &str| Identity {
            name: name.into(),
            method: Method::Htpasswd,
        };
        assert!(auth.may_pull(&who("alice"), "ghcr.io/acme/team/app"));
        assert!(!auth.may_pull(&who("bob"), "ghcr.io/acme/team/app"));
        assert!(auth.may_pull(&who("bob"), "docker.io/library/alpine"));
        assert!(!auth.may_pull(&who("alice"), "ghcr.io/other/app"));
        cfg.access = Some(vec![AccessRule {
            identities: vec!["alice".into()],
            repositories: vec!["ghcr.io/acme/app:latest".into()],
        }]);
        let e = ClientAuth::from_config(&cfg).unwrap_err();
        assert!(
            e.starts_with("clientAuth.access[0].repositories") && e.contains("tag"),
            "{e}"
        );
    }
}
