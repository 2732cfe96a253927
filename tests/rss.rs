//! Memory stays flat while streaming big blobs: 4 concurrent clients each
//! read a 256 MiB blob through the proxy (verifying its sha256); the proxy's
//! peak RSS (VmHWM) must stay under 64 MiB.

mod common;

use std::io::Read;

use common::content::{self, sha256_reader, TarLayer, MIB};
use common::http;
use common::proxy::{proc_status_kib, single_upstream_config};
use common::registry::Registry;
use common::Proxy;

const CLIENTS: usize = 4;
const BLOB_FILE_SIZE: u64 = 256 * MIB;
const LIMIT_KIB: u64 = 64 * 1024;

#[test]
fn proxy_peak_rss_stays_under_64_mib_with_4_concurrent_256_mib_streams() {
    let reg = Registry::start();
    let layer = TarLayer::new(41, BLOB_FILE_SIZE);
    let blob = content::push_layer(&reg.url(), "test/huge", &layer);
    assert!(blob.size >= 256 * MIB);
    let proxy = Proxy::start(&single_upstream_config(&reg.host()));
    let before = proc_status_kib(proxy.pid(), "VmHWM");

    let url = format!("{}/v2/test/huge/blobs/{}", proxy.url(), blob.digest);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = http::request_streaming("GET", &url, &[], None)
                    .unwrap_or_else(|e| panic!("client {i}: GET {url}: {e}"));
                assert_eq!(r.status, 200, "client {i}: status");
                let body: Box<dyn Read + Send> = r.body;
                sha256_reader(body).unwrap_or_else(|e| panic!("client {i}: reading body: {e}"))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (digest, n) = h.join().expect("client thread panicked");
        assert_eq!(n, blob.size, "client {i}: bytes read");
        assert_eq!(
            digest, blob.digest,
            "client {i}: sha256 of the streamed body"
        );
    }

    let peak = proc_status_kib(proxy.pid(), "VmHWM");
    let rss = proc_status_kib(proxy.pid(), "VmRSS");
    eprintln!(
        "portcullis peak RSS (VmHWM) with {CLIENTS} concurrent {} MiB blob streams: {:.1} MiB \
         (after startup {:.1} MiB, now {:.1} MiB; limit {} MiB)",
        blob.size / MIB,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        rss as f64 / 1024.0,
        LIMIT_KIB / 1024
    );
    assert!(
        peak < LIMIT_KIB,
        "proxy peak RSS {peak} KiB is not under {LIMIT_KIB} KiB"
    );
}
