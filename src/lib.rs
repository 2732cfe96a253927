//! Portcullis: a pull-through OCI registry proxy that only serves images a
//! policy trusts.
//!
//! # One manifest request, top to bottom
//!
//! [`server`] accepts the connection and hands the request to
//! [`serve::App::handle`], which runs the pipeline's phases in order:
//!
//! 1. **route** ([`routing`]): the path becomes a [`routing::Route`]
//!    (endpoint, upstream, repository); malformed names, tags and digests
//!    are refused here and never reach an upstream;
//! 2. **resolve** ([`serve`]'s manifest phase, through [`upstream`]): the
//!    manifest is fetched whole and bounded, and becomes an
//!    [`oci::manifest::Manifest`] whose digest is computed from its bytes;
//! 3. **verify** ([`verify::Verifier::admit`]): the policy's rule for the
//!    name, the evidence for exactly that digest (sources fetch it, formats
//!    check it, [`policy`] evaluates it), the verdict cached; the answer is
//!    an [`verify::Admission`] (only verify can make one) or a
//!    [`verify::Denial`], which break-glass can turn into an admission only
//!    with a [`breakglass`] proof;
//! 4. **serve**: the admitted bytes — the bytes whose digest was checked —
//!    are sent; a blob is served only with a [`verify::BlobPermit`];
//! 5. **finish** ([`serve`]'s finish phase): the one place a decision is
//!    audited ([`audit`], which feeds [`alerts`]), counted ([`metrics`])
//!    and logged. Any error becomes a status and an OCI error code in one
//!    function ([`serve`]'s edge), by its source: client, upstream, policy
//!    or internal.
//!
//! # The layers
//!
//! Lowest first. A module may use the modules above it in this list and
//! never one below it; `tests/layering.rs` fails on any import that breaks
//! this, so there are no import cycles.
//!
//! - [`oci`]: the vocabulary: digests, names, references, media types,
//!   [`oci::json`] (JSON read the one way Portcullis and Go runtimes agree
//!   on), [`oci::manifest`] (what a manifest is, decided once; the manifest
//!   size limit) and [`oci::error`] (OCI error codes and the envelope).
//! - [`crypto`]: keys and signature verification, and the private keys
//!   the CLI signs with (PKCS#8, cosign's encrypted keys) (pure).
//! - [`sigstore`]: Sigstore verification proper (pure): trusted roots,
//!   Fulcio certificates and their identities, SCTs, Rekor entries,
//!   inclusion proofs and checkpoints, RFC 3161 timestamps; one bundle
//!   verified against one trusted root ([`sigstore::verify_bundle`]).
//! - [`config`]: the YAML configuration: shapes, defaults and validation,
//!   one file per section, one duration parser. A leaf: it uses only
//!   `oci`; what needs files read or the policy compiled is checked once by
//!   [`app::prepare`].
//! - [`telemetry`]: logging setup.
//! - [`policy`]: the Binary Authorization-style policy: compiled from its
//!   config shape, rule lookup, evaluation into a [`policy::Decision`]
//!   (pure).
//! - [`metrics`]: the Prometheus registry and its families.
//! - [`routing`]: request → [`routing::Route`].
//! - [`fleet`]: the replicas' shared state on Redis (`state.redis`):
//!   round trips bounded by a timeout, keys under the policy revision,
//!   the reload counter and the fleet's decision stream; values are bytes,
//!   their meaning is `verify`'s.
//! - [`store`]: the on-disk content store (`cache.content`): verified
//!   blobs by digest, written to a temporary file, hashed, then renamed
//!   into place; one download per digest that readers follow; bounded by
//!   size with least-recently-used eviction. What may be stored and served
//!   is decided above it.
//! - [`upstream`]: the registry client: pooled connections, timeouts,
//!   redirects, Basic and bearer-token auth, the credentials they use
//!   ([`upstream::credentials`]: `passwordFile` re-read when it changes, a
//!   docker `config.json` and its `docker-credential-*` helpers resolved
//!   when a token is fetched, afresh after a 401), the one bounded read, the one
//!   referrers lookup (API or tag schema) and the one HTTPS client builder
//!   ([`upstream::client`], alert webhooks use it too).
//! - [`breakglass`]: break-glass credentials, read once, and the proof of
//!   their use ([`breakglass::Use`]) that only this module can make.
//! - [`clientauth`]: who may pull through the registry port
//!   (`clientAuth`): htpasswd, bearer tokens and client certificates, the
//!   files re-read when they change, and the per-identity access rules.
//! - [`verify`]: admission. Evidence [`verify::sources`] (I/O: cosign
//!   tags, referrers, the attestation store) and [`verify::formats`]
//!   (pure: simple-signing, DSSE, sigstore bundles, BinAuthz), matched to
//!   attestors by [`verify::evidence`], bounded by [`verify::budget`];
//!   verdict cache, admitted children and blobs; the proof types.
//! - [`audit`]: the decision record, the audit trail writer, recent
//!   decisions, and the sink it reports decisions to.
//! - [`alerts`]: webhooks (bodies, coalescing, lanes, delivery, signatures); an audit
//!   sink.
//! - [`serve`]: the pull pipeline above: manifests, blobs (streamed,
//!   hashed while streaming), tag lists, referrers; the edge and finish.
//! - [`admin`]: `/metrics`, the JSON API and the dashboard.
//! - [`server`]: listeners (plain or TLS), HTTP/1.1 and HTTP/2
//!   connections and what bounds them ([`server::conn`]), graceful
//!   shutdown, `/healthz` and `/readyz`. [`server::run`] takes bound
//!   listeners and a shutdown future, so tests run the proxy in-process.
//! - [`reload`]: policy hot reload (SIGHUP, file changes).
//! - [`app`]: the composition root: builds the proxy from a configuration
//!   (the policy compiled once, token files read once).
//! - [`cli`]: the `portcullis` command line, one module per command, and
//!   the one exit-code policy.

#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod breakglass;
pub mod cli;
pub mod clientauth;
pub mod config;
pub mod crypto;
pub mod fleet;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod reload;
pub mod routing;
pub mod serve;
pub mod server;
pub mod sigstore;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod verify;
