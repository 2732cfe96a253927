//! Request paths and queries: `/v2/<name>/{manifests,blobs,tags,referrers}/…`
//! with `?ns=`, `?n=`, `?last=`, `?artifactType=`, through the router of a
//! configuration with a default upstream and a prefixed one; and names,
//! tags, references and digests on their own.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::oci::{self, Digest, Reference};
use portcullis::routing::{Routed, Router};

const CONFIG: &str = "\
listen: 127.0.0.1:5000
upstreams:
  - registry: docker.io
    url: https://registry-1.docker.io
    default: true
  - registry: ghcr.io
    url: https://ghcr.io
    prefix: ghcr
  - registry: localhost:5001
    url: http://127.0.0.1:5001
";

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = Config::from_yaml(CONFIG, Path::new("/")).expect("the fuzz config is valid");
        Router::new(&config)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the path, the rest the query (as hyper splits a
    // request target at `?`, the query may hold anything).
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    for method in [Method::GET, Method::HEAD] {
        if let Ok(Routed::Repository(route)) = router().route(&method, path, query) {
            let canonical = route.canonical();
            assert!(!canonical.is_empty());
            assert!(oci::validate_name(&route.client_name).is_ok());
            assert!(route.upstream < 3);
        }
    }
    let _ = router().route(&Method::POST, path, query);

    // The pieces alone.
    let _ = oci::validate_name(text);
    let _ = oci::validate_tag(text);
    if let Ok(reference) = Reference::parse(text) {
        let _ = format!("{reference:?}");
    }
    if let Ok(digest) = text.parse::<Digest>() {
        let _ = digest.tag_form();
        let _ = digest.hex();
        // A digest that parsed prints back as itself.
        assert_eq!(digest.to_string(), text);
    }
});
