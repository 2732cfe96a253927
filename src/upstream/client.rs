//! The one HTTP(S) client builder: rustls with the webpki roots (plus any
//! extra CA certificates), HTTP/1.1 and HTTP/2 by ALPN, plain `http://`
//! allowed, pooled keep-alive connections. Registries ([`super::Upstream`])
//! and alert webhooks ([`crate::alerts`]) get their clients here, so TLS
//! is set up one way.
//!
//! May use: std, hyper, rustls. Must never use: any module of the crate
//! (callers turn [`ClientError`] into their own errors).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// A pooled HTTP/1.1 + HTTP/2 client over TLS or plain TCP.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How a client connects and pools.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// CA certificates (PEM) trusted in addition to the webpki roots.
    pub ca_file: Option<&'a Path>,
    /// Establishing a TCP connection; unbounded when `None` (the caller
    /// bounds the whole exchange).
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive on pooled connections.
    pub tcp_keepalive: Option<Duration>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub max_idle_per_host: usize,
}

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read, held no certificate, or held one
    /// rustls refuses.
    #[error("{0}")]
    CaFile(String),
    /// rustls refused the TLS configuration.
    #[error("{0}")]
    Tls(String),
}

/// Builds a client; it must be used on a tokio runtime.
pub fn build(options: &Options<'_>) -> Result<HttpClient, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = options.ca_file {
        for cert in ca_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| ClientError::CaFile(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(options.connect_timeout);
    http.set_nodelay(true);
    http.set_keepalive(options.tcp_keepalive);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_max_idle_per_host(options.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// The PEM certificates in `path`: at least one.
fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let ca_error = |e: String| ClientError::CaFile(e);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificates in file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ca_file: Option<&Path>) -> Options<'_> {
        Options {
            ca_file,
            connect_timeout: None,
            tcp_keepalive: None,
            pool_idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 1,
        }
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(
            build(&options(Some(&empty))).err(),
            Some(ClientError::CaFile("no PEM certificates in file".into()))
        );
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            build(&options(Some(&missing))),
            Err(ClientError::CaFile(_))
        ));
        assert!(build(&options(None)).is_ok());
    }
}
