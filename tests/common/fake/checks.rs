//! Checks tests make against the proxy: OCI error envelopes, unique secrets,
//! and a raw exchange for what the line-level client cannot see.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::http::Response;

/// Sends `request` verbatim on a fresh connection and returns every byte the
/// server sends until it closes the connection (or `timeout` passes), plus
/// whether the read ended by timeout.
pub fn raw_exchange(addr: SocketAddr, request: &str, timeout: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    s.write_all(request.as_bytes()).expect("write request");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (out, true)
            }
            Err(_) => return (out, false),
        }
    }
}

/// The `(code, message)` pairs of an OCI error envelope
/// `{"errors":[{"code","message","detail"}]}`, or a description of why
/// `body` is not one. Every entry must have a string `code`, a string
/// `message` and a `detail` key (any JSON, `null` included).
pub fn oci_errors(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })?;
    let errors = v
        .get("errors")
        .and_then(|e| e.as_array())
        .ok_or_else(|| format!("no \"errors\" array in {v}"))?;
    if errors.is_empty() {
        return Err(format!("empty \"errors\" array in {v}"));
    }
    errors
        .iter()
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str());
            let message = e.get("message").and_then(|c| c.as_str());
            match (code, message, e.get("detail")) {
                (Some(c), Some(m), Some(_)) if !c.is_empty() => Ok((c.to_string(), m.to_string())),
                _ => Err(format!("error entry lacks code/message/detail: {e}")),
            }
        })
        .collect()
}

/// Asserts `r` is `status` with an OCI error envelope whose first code is
/// `code` (any code when `None`). `what` names the case in the panic.
pub fn assert_oci_error(r: &Response, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected HTTP {status}, got {} with body {:?}",
        r.status,
        r.text()
    );
    let errors = oci_errors(&r.body).unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(code) = code {
        assert_eq!(
            errors[0].0, code,
            "{what}: expected OCI code {code}, got {errors:?}"
        );
    }
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: error Content-Type should be application/json, got {ct:?}"
    );
}

/// A string unlikely to appear anywhere by chance (for secrets).
pub fn unique_secret(label: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{label}-{}-{}-{:?}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
    );
    format!(
        "{label}{}",
        &hex::encode(Sha256::digest(seed.as_bytes()))[..24]
    )
}
