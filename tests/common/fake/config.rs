//! The fault switches ([`FakeConfig`]) and bearer-token settings ([`TokenAuth`]).

use std::time::Duration;

use super::Kind;

/// Bearer-token protection (distribution's `auth: token`), with the token
/// endpoint served by the fake itself at `/token`.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// `service` parameter of the challenge.
    pub service: String,
    /// If set, the token endpoint demands these Basic credentials.
    pub basic: Option<(String, String)>,
    /// `expires_in` in the token response; `None` omits the field (clients
    /// must then assume 60 s). Tokens stop being accepted after this long.
    pub expires_in: Option<u64>,
    /// Answer with `{"access_token": ...}` only (no `token` field).
    pub access_token_only: bool,
    /// Write the challenge with parameters reordered, spaces after commas
    /// and an `error="insufficient_scope"` parameter, as some registries do.
    pub quirky_challenge: bool,
    /// The challenge's realm is the storage listener's `/token` (another
    /// loopback address, plain http): a token endpoint on another host.
    /// The storage listener then serves the token endpoint too.
    pub foreign_realm: bool,
}

impl Default for TokenAuth {
    fn default() -> Self {
        TokenAuth {
            service: "fake-registry".into(),
            basic: None,
            expires_in: Some(300),
            access_token_only: false,
            quirky_challenge: false,
            foreign_realm: false,
        }
    }
}

/// Fault switches. `Default` is a well-behaved anonymous registry.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// A manifest requested *by digest* is served with bytes that do not
    /// hash to that digest (the `Docker-Content-Digest` header still claims
    /// the requested one).
    pub wrong_manifest_digest: bool,
    /// Manifests are sent chunked, without `Content-Length`.
    pub chunked_manifests: bool,
    /// Like distribution: a manifest whose media type is not listed in the
    /// request's `Accept` header is answered 404 `MANIFEST_UNKNOWN`.
    pub strict_accept: bool,
    /// Full blob bodies have one byte flipped (same length, same claimed
    /// digest).
    pub corrupt_blob: bool,
    /// Full blob bodies: send about half of the advertised `Content-Length`,
    /// then reset the connection.
    pub drop_connection_mid_blob: bool,
    /// Full blob bodies: send about half, then go silent forever (the
    /// connection stays open).
    pub stall_mid_blob: bool,
    /// Accept the connection, read the request, never answer anything
    /// (registry endpoints and token endpoint alike).
    pub never_respond: bool,
    /// Wait this long before answering any registry request.
    pub response_delay: Option<Duration>,
    /// Every `/v2/...` request needs these Basic credentials.
    pub require_basic: Option<(String, String)>,
    /// Every `/v2/...` request needs a bearer token from `/token`.
    pub require_token: Option<TokenAuth>,
    /// Full blob bodies: wait this long before each 64 KiB chunk (a slow
    /// but live upstream).
    pub blob_chunk_delay: Option<Duration>,
    /// Blob GET/HEAD answer `307` to the storage listener (another host).
    pub redirect_blobs: bool,
    /// The storage listener answers every request with a `307` to itself
    /// (an endless redirect chain).
    pub redirect_loop: bool,
    /// `/v2/<name>/referrers/<digest>` answers a plain 404, like a registry
    /// without the referrers API.
    pub no_referrers_api: bool,
    /// `tags/list` without `n` returns at most this many tags plus a `Link`.
    pub tags_page_size: Option<usize>,
    /// `Link` headers carry an absolute URL (`http://127.0.0.1:PORT/v2/...`)
    /// instead of a path.
    pub absolute_links: bool,
    /// Manifest GET/HEAD requests whose reference (tag or digest) ends with
    /// this string answer `500 UNKNOWN` (e.g. `".sig"` to break signature
    /// lookups while images stay reachable).
    pub fail_manifests_ending_with: Option<String>,
    /// A blob GET *without* `Range` is answered `206 Partial Content`
    /// (`Content-Range: bytes 0-<size-1>/<size>`, the whole body, with
    /// `corrupt_blob` applied): a lying upstream.
    pub partial_without_range: bool,
    /// A blob GET with a `Range` is answered with a different range than
    /// asked for: one byte further (or back, at the end of the blob), with
    /// a `Content-Range` and bytes to match.
    pub shifted_ranges: bool,
    /// Ranged blob bodies have one byte flipped (same length, honest
    /// `Content-Range`).
    pub corrupt_ranges: bool,
    /// Manifest GET requests whose reference ends with the string (`""`:
    /// every manifest) are answered at once, with `Content-Length`, but
    /// the body trickles in one byte per interval: a live upstream that
    /// never goes silent long enough for an idle read timeout.
    pub trickle_manifests: Option<(String, Duration)>,
    /// Every whole-body response to a request of one of these kinds (a
    /// tag list, a token, an error) trickles in one byte per interval.
    pub trickle_responses: Option<(Vec<Kind>, Duration)>,
}
