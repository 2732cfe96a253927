//! Table-driven bad input: every malformed name, tag, digest and Range, and
//! every push/delete endpoint, gets the right status and OCI error code; the
//! malformed and push/delete requests never reach the upstream (the fake's
//! request log proves it). Well-formed control rows next to them show the
//! same proxy does forward good requests, so "nothing reached the upstream"
//! is not vacuous.
//!
//! Requests go out over a raw TCP client (`common::http`) so paths are sent
//! byte for byte (`..`, `//`, `%2e` included).

mod common;

use common::fake::{oci_errors, pseudo_random, sha256_digest, Fake, Kind};
use common::http;
use common::Proxy;

const REPO: &str = "team/app";

/// What a row must get back.
#[derive(Clone, Debug)]
enum Expect {
    /// This status and an OCI envelope whose first code is this one.
    Oci(u16, &'static str),
    /// 416 with an OCI envelope (any code: the OCI spec defines none for
    /// ranges), and `Content-Range: bytes */<size>` when `with_size`.
    Unsatisfiable { with_size: bool },
    /// 206 with exactly these bytes (inclusive range) and Content-Range.
    Partial(usize, usize),
    /// This status, body unchecked (controls).
    Status(u16),
}

/// Whether the row may / must reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Upstream {
    /// Not a single registry request (`/v2/` pings and token fetches are
    /// not counted: they carry no client input).
    Never,
    /// At least one registry request (a control row).
    Reached,
    /// Not checked.
    Any,
}

struct Case {
    what: String,
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
    upstream: Upstream,
}

fn case(
    what: &str,
    method: &'static str,
    target: String,
    expect: Expect,
    upstream: Upstream,
) -> Case {
    Case {
        what: what.to_string(),
        method,
        target,
        headers: Vec::new(),
        body: Vec::new(),
        expect,
        upstream,
    }
}

const NAME_INVALID: Expect = Expect::Oci(400, "NAME_INVALID");
const TAG_INVALID: Expect = Expect::Oci(400, "TAG_INVALID");
const DIGEST_INVALID: Expect = Expect::Oci(400, "DIGEST_INVALID");
const UNSUPPORTED: Expect = Expect::Oci(405, "UNSUPPORTED");

fn name_cases(manifest_digest: &str) -> Vec<Case> {
    let m = |what: &str, name: &str| {
        case(
            what,
            "GET",
            format!("/v2/{name}/manifests/v1"),
            NAME_INVALID,
            Upstream::Never,
        )
    };
    vec![
        m("uppercase first component", "Team/app"),
        m("uppercase second component", "team/App"),
        m("`..` component", "team/../app"),
        m("`.` component", "team/./app"),
        m("empty component (`//`)", "team//app"),
        m("leading `/` (empty first component)", "/team/app"),
        m("trailing `/` (empty last component)", "team/app/"),
        m("leading `-`", "-team/app"),
        m("trailing `-`", "team/app-"),
        m("leading `.`", ".team/app"),
        m("trailing `_`", "team/app_"),
        m("`..` inside a component", "team/ap..p"),
        m("`___` (only `_` or `__` allowed)", "team/a___b"),
        m("mixed separators `.-`", "team/a.-b"),
        m("`!` in name", "team/app!"),
        m("`:` in name", "team:x/app"),
        m("percent-encoded `..` (`%2e%2e`)", "team/%2e%2e/app"),
        m("percent-encoded `/` (`%2F`)", "team%2Fapp"),
        case(
            "uppercase name on blobs",
            "GET",
            format!("/v2/Team/app/blobs/{}", sha256_digest(b"x")),
            NAME_INVALID,
            Upstream::Never,
        ),
        case(
            "`..` name on tags/list",
            "GET",
            "/v2/team/../app/tags/list".to_string(),
            NAME_INVALID,
            Upstream::Never,
        ),
        case(
            "empty component on referrers",
            "GET",
            format!("/v2/team//app/referrers/{manifest_digest}"),
            NAME_INVALID,
            Upstream::Never,
        ),
        case(
            "HEAD with uppercase name",
            "HEAD",
            "/v2/Team/app/manifests/v1".to_string(),
            // HEAD has no body: status only.
            Expect::Status(400),
            Upstream::Never,
        ),
        // Control: every separator form the grammar allows.
        case(
            "control: valid name with `-`, `__`, `.`, `--`",
            "GET",
            "/v2/a-b__c.d/x--y/manifests/v1".to_string(),
            Expect::Oci(404, "MANIFEST_UNKNOWN"),
            Upstream::Reached,
        ),
    ]
}

fn tag_cases(long_ok: &str) -> Vec<Case> {
    let t = |what: &str, tag: &str| {
        case(
            what,
            "GET",
            format!("/v2/{REPO}/manifests/{tag}"),
            TAG_INVALID,
            Upstream::Never,
        )
    };
    vec![
        t("129-character tag", &"a".repeat(129)),
        t("leading `.`", ".v1"),
        t("leading `-`", "-v1"),
        t("`!` in tag", "v1!"),
        t("`+` in tag", "v1+build"),
        t("`~` in tag", "v~1"),
        t("`@` in tag", "v1@x"),
        t("percent-encoded space", "v%201"),
        case(
            "control: 128-character tag",
            "GET",
            format!("/v2/{REPO}/manifests/{long_ok}"),
            Expect::Status(200),
            Upstream::Reached,
        ),
        case(
            "control: leading `_`, mixed case, `.` and `-`",
            "GET",
            format!("/v2/{REPO}/manifests/_V1.0-rc_2"),
            Expect::Status(200),
            Upstream::Reached,
        ),
    ]
}

fn digest_cases(blob_digest: &str, manifest_digest: &str) -> Vec<Case> {
    let hex64 = blob_digest
        .strip_prefix("sha256:")
        .expect("sha256 digest")
        .to_string();
    let bad: Vec<(&str, String)> = vec![
        (
            "sha256 with 63 hex digits",
            format!("sha256:{}", &hex64[..63]),
        ),
        ("sha256 with 65 hex digits", format!("sha256:{hex64}0")),
        (
            "sha256 with uppercase hex",
            format!("sha256:{}", hex64.to_uppercase()),
        ),
        (
            "sha256 with non-hex `g`",
            format!("sha256:{}g", &hex64[..63]),
        ),
        ("unsupported algorithm md5", format!("md5:{}", &hex64[..32])),
        ("uppercase algorithm", format!("SHA256:{hex64}")),
        ("empty algorithm", format!(":{hex64}")),
        ("empty encoded part", "sha256:".to_string()),
    ];
    let mut cases = Vec::new();
    for (what, d) in &bad {
        cases.push(case(
            &format!("blob digest: {what}"),
            "GET",
            format!("/v2/{REPO}/blobs/{d}"),
            DIGEST_INVALID,
            Upstream::Never,
        ));
    }
    cases.push(case(
        "blob digest: no `:` at all",
        "GET",
        format!("/v2/{REPO}/blobs/sha256{hex64}"),
        DIGEST_INVALID,
        Upstream::Never,
    ));
    cases.push(case(
        "blob digest: a tag",
        "GET",
        format!("/v2/{REPO}/blobs/latest"),
        DIGEST_INVALID,
        Upstream::Never,
    ));
    cases.push(case(
        "HEAD blob digest: 63 hex digits",
        "HEAD",
        format!("/v2/{REPO}/blobs/sha256:{}", &hex64[..63]),
        Expect::Status(400),
        Upstream::Never,
    ));
    for (what, d) in bad.iter().take(5) {
        cases.push(case(
            &format!("manifest digest: {what}"),
            "GET",
            format!("/v2/{REPO}/manifests/{d}"),
            DIGEST_INVALID,
            Upstream::Never,
        ));
        cases.push(case(
            &format!("referrers digest: {what}"),
            "GET",
            format!("/v2/{REPO}/referrers/{d}"),
            DIGEST_INVALID,
            Upstream::Never,
        ));
    }
    cases.push(case(
        "referrers digest: a tag",
        "GET",
        format!("/v2/{REPO}/referrers/latest"),
        DIGEST_INVALID,
        Upstream::Never,
    ));
    cases.push(case(
        "control: valid blob digest",
        "GET",
        format!("/v2/{REPO}/blobs/{blob_digest}"),
        Expect::Status(200),
        Upstream::Reached,
    ));
    cases.push(case(
        "control: valid manifest digest",
        "GET",
        format!("/v2/{REPO}/manifests/{manifest_digest}"),
        Expect::Status(200),
        Upstream::Reached,
    ));
    cases
}

fn range_cases(blob_digest: &str, size: usize) -> Vec<Case> {
    let r = |what: &str, range: &str, expect: Expect| {
        let mut c = case(
            &format!("Range {range:?}: {what}"),
            "GET",
            format!("/v2/{REPO}/blobs/{blob_digest}"),
            expect,
            Upstream::Any,
        );
        c.headers.push(("Range", range.to_string()));
        c
    };
    let unsat = Expect::Unsatisfiable { with_size: true };
    let malformed = Expect::Unsatisfiable { with_size: false };
    vec![
        r("first ten bytes", "bytes=0-9", Expect::Partial(0, 9)),
        r(
            "open-ended",
            &format!("bytes={}-", size - 10),
            Expect::Partial(size - 10, size - 1),
        ),
        r("suffix", "bytes=-10", Expect::Partial(size - 10, size - 1)),
        r(
            "last position past the end is clamped",
            &format!("bytes={}-{}", size - 5, size * 5),
            Expect::Partial(size - 5, size - 1),
        ),
        r(
            "starts at the size",
            &format!("bytes={size}-"),
            unsat.clone(),
        ),
        r(
            "entirely past the end",
            &format!("bytes={}-{}", size * 5, size * 6),
            unsat,
        ),
        r("not numbers", "bytes=abc", malformed.clone()),
        r("first > last", "bytes=5-2", malformed.clone()),
        r("empty range set", "bytes=", malformed.clone()),
        r("lone dash", "bytes=-", malformed.clone()),
        r("three numbers", "bytes=1-2-3", malformed.clone()),
        r("hex numbers", "bytes=0x10-0x20", malformed),
    ]
}

fn push_cases(blob_digest: &str, manifest_digest: &str) -> Vec<Case> {
    let p = |what: &str, method: &'static str, target: String| {
        case(what, method, target, UNSUPPORTED, Upstream::Never)
    };
    let mut put_manifest = p(
        "PUT manifest by tag",
        "PUT",
        format!("/v2/{REPO}/manifests/v1"),
    );
    put_manifest.headers.push((
        "Content-Type",
        "application/vnd.oci.image.manifest.v1+json".into(),
    ));
    put_manifest.body = br#"{"schemaVersion":2}"#.to_vec();
    let mut patch = p(
        "PATCH upload chunk",
        "PATCH",
        format!("/v2/{REPO}/blobs/uploads/3f7c1a2e-upload"),
    );
    patch
        .headers
        .push(("Content-Type", "application/octet-stream".into()));
    patch.body = b"chunk".to_vec();
    vec![
        p(
            "POST start upload",
            "POST",
            format!("/v2/{REPO}/blobs/uploads/"),
        ),
        p(
            "POST monolithic upload",
            "POST",
            format!("/v2/{REPO}/blobs/uploads/?digest={blob_digest}"),
        ),
        p(
            "POST cross-repo mount",
            "POST",
            format!("/v2/{REPO}/blobs/uploads/?mount={blob_digest}&from=other/repo"),
        ),
        patch,
        p(
            "PUT close upload",
            "PUT",
            format!("/v2/{REPO}/blobs/uploads/3f7c1a2e-upload?digest={blob_digest}"),
        ),
        p(
            "GET upload status (end-13, a push endpoint)",
            "GET",
            format!("/v2/{REPO}/blobs/uploads/3f7c1a2e-upload"),
        ),
        put_manifest,
        p(
            "DELETE manifest by digest",
            "DELETE",
            format!("/v2/{REPO}/manifests/{manifest_digest}"),
        ),
        p(
            "DELETE manifest by tag",
            "DELETE",
            format!("/v2/{REPO}/manifests/v1"),
        ),
        p(
            "DELETE blob",
            "DELETE",
            format!("/v2/{REPO}/blobs/{blob_digest}"),
        ),
        p(
            "POST to a manifest",
            "POST",
            format!("/v2/{REPO}/manifests/v1"),
        ),
        p("DELETE /v2/", "DELETE", "/v2/".to_string()),
    ]
}

/// Runs one row; returns a description of every way it went wrong.
fn run(proxy: &Proxy, fake: &Fake, blob: &[u8], c: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    let mark = fake.request_count();
    let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = match http::request(
        c.method,
        &format!("{}{}", proxy.url(), c.target),
        &headers,
        &c.body,
    ) {
        Ok(r) => r,
        Err(e) => return vec![format!("request failed: {e}")],
    };
    let got = format!(
        "got {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
    );
    match &c.expect {
        Expect::Oci(status, code) => {
            if r.status != *status {
                problems.push(format!("expected {status} {code}, {got}"));
            } else {
                match oci_errors(&r.body) {
                    Ok(errs) if errs[0].0 == *code => {}
                    Ok(errs) => problems.push(format!("expected code {code}, got {errs:?}")),
                    Err(e) => problems.push(format!("not an OCI error envelope: {e}")),
                }
            }
        }
        Expect::Unsatisfiable { with_size } => {
            if r.status != 416 {
                problems.push(format!("expected 416, {got}"));
            } else {
                if let Err(e) = oci_errors(&r.body) {
                    problems.push(format!("416 without an OCI error envelope: {e}"));
                }
                let want = format!("bytes */{}", blob.len());
                if *with_size && r.header("content-range") != Some(want.as_str()) {
                    problems.push(format!(
                        "416 should carry Content-Range {want:?}, got {:?}",
                        r.header("content-range")
                    ));
                }
            }
        }
        Expect::Partial(s, e) => {
            let want_cr = format!("bytes {s}-{e}/{}", blob.len());
            if r.status != 206 {
                problems.push(format!("expected 206 {want_cr}, {got}"));
            } else {
                if r.header("content-range") != Some(want_cr.as_str()) {
                    problems.push(format!(
                        "Content-Range {:?}, expected {want_cr:?}",
                        r.header("content-range")
                    ));
                }
                if r.body != blob[*s..=*e] {
                    problems.push(format!("206 body is not bytes {s}..={e}"));
                }
            }
        }
        Expect::Status(status) => {
            if r.status != *status {
                problems.push(format!("expected {status}, {got}"));
            }
        }
    }
    let upstream: Vec<String> = fake
        .requests_since(mark)
        .into_iter()
        .filter(|q| q.kind != Kind::Base && q.kind != Kind::Token)
        .map(|q| format!("{} {}", q.method, q.target()))
        .collect();
    match c.upstream {
        Upstream::Never if !upstream.is_empty() => {
            problems.push(format!("reached the upstream: {upstream:?}"))
        }
        Upstream::Reached if upstream.is_empty() => {
            problems.push("control row never reached the upstream".to_string())
        }
        _ => {}
    }
    problems
}

struct Setup {
    fake: Fake,
    proxy: Proxy,
    blob: Vec<u8>,
    blob_digest: String,
    manifest_digest: String,
    long_tag: String,
}

fn setup() -> Setup {
    let fake = Fake::start();
    let img = fake.put_image(REPO, Some("v1"), 1, 1000);
    let long_tag = format!("v{}", "1".repeat(127));
    assert_eq!(long_tag.len(), 128);
    fake.put_manifest(
        REPO,
        Some(&long_tag),
        common::fake::OCI_MANIFEST,
        &img.manifest,
    );
    fake.put_manifest(
        REPO,
        Some("_V1.0-rc_2"),
        common::fake::OCI_MANIFEST,
        &img.manifest,
    );
    let blob = pseudo_random(42, 1000);
    let blob_digest = fake.put_blob(REPO, &blob);
    let proxy = Proxy::start(&fake.proxy_config());
    Setup {
        fake,
        proxy,
        blob,
        blob_digest,
        manifest_digest: img.manifest_digest,
        long_tag,
    }
}

fn run_table(table: &str, s: &Setup, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let problems = run(&s.proxy, &s.fake, &s.blob, c);
        let line = format!("{} {} ({})", c.method, c.target, c.what);
        if problems.is_empty() {
            eprintln!("ok    {line}");
        } else {
            eprintln!("FAIL  {line}: {}", problems.join("; "));
            failures.push(format!("{line}\n        {}", problems.join("\n        ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{table}: {} of {} rows failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn malformed_names_are_name_invalid_and_never_reach_upstream() {
    let s = setup();
    let cases = name_cases(&s.manifest_digest);
    run_table("names", &s, cases);
}

#[test]
fn malformed_tags_are_tag_invalid_and_never_reach_upstream() {
    let s = setup();
    let cases = tag_cases(&s.long_tag);
    run_table("tags", &s, cases);
}

#[test]
fn malformed_digests_are_digest_invalid_and_never_reach_upstream() {
    let s = setup();
    let cases = digest_cases(&s.blob_digest, &s.manifest_digest);
    run_table("digests", &s, cases);
}

#[test]
fn ranges_answer_206_or_416() {
    let s = setup();
    let cases = range_cases(&s.blob_digest, s.blob.len());
    run_table("ranges", &s, cases);
}

#[test]
fn push_and_delete_endpoints_are_unsupported_and_never_reach_upstream() {
    let s = setup();
    let cases = push_cases(&s.blob_digest, &s.manifest_digest);
    run_table("push/delete", &s, cases);
}
