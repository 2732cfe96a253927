//! Shared integration-test harness.
//!
//! Every test binary compiles this whole module but uses only part of it, so
//! dead-code warnings are silenced here once.
#![allow(dead_code)]

pub mod certs;
pub mod clients;
pub mod content;
pub mod cosign;
pub mod fake;
pub mod fixture_dir;
pub mod fixtures;
pub mod http;
pub mod nginx;
pub mod proxy;
pub mod redis;
pub mod registry;
pub mod sigstore;
pub mod trust;
pub mod webhook;

#[allow(unused_imports)]
pub use proxy::{free_port, Proxy};

/// The OCI architecture name of the machine running the tests.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("unsupported test host architecture {other}"),
    }
}
