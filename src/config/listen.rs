//! The listeners as written: `tls:` (the certificate and key the registry
//! listener serves HTTPS with) and `admin:` (the operators' listener and
//! its token file), and the checks of them. The admin token file is read,
//! and its token checked, by the composition root
//! (`admin::AdminToken::from_file`).
//!
//! May use: std, serde, `super` (the error type and its line finder).
//! Must never use: any other module of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Source};

/// PEM files for serving HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file holding a bearer token (one line, at least 16 visible ASCII
    /// characters) that every admin endpoint except `/healthz`, `/readyz`
    /// and the dashboard page itself then requires. Read at start.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The certificate and key files exist.
pub(super) fn validate_tls(tls: &TlsConfig, at: &Source) -> Result<(), ConfigError> {
    for (name, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        if let Err(e) = std::fs::metadata(path) {
            return Err(at.invalid(
                name,
                name.trim_start_matches("tls."),
                "",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    Ok(())
}

/// The admin listener has an address of its own.
pub(super) fn validate_admin(
    admin: &AdminConfig,
    registry: SocketAddr,
    at: &Source,
) -> Result<(), ConfigError> {
    if admin.listen == registry {
        return Err(at.invalid(
            "admin.listen",
            "listen",
            "",
            "the admin listener needs its own address",
        ));
    }
    Ok(())
}
