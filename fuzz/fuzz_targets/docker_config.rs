//! A docker/podman `config.json` (`auths`, `credHelpers`, `credsStore`,
//! identity tokens) and the lookup of a registry in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::upstream::credentials::docker_config::DockerConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = DockerConfig::parse(data) {
        for registry in ["docker.io", "ghcr.io", "127.0.0.1:5000", "localhost", ""] {
            let _ = config.lookup(registry);
        }
    }
});
