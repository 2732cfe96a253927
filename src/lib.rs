//! Portcullis: a pull-through OCI registry proxy that only serves images a
//! policy trusts.
//!
//! # Layout
//!
//! Modules follow a request's path through the proxy. Each layer only calls
//! the layers below it in this list; errors are typed per layer and turned
//! into OCI error responses in exactly one place ([`error::ApiError`]).
//!
//! - [`cli`]: the `portcullis` command line, the top layer: the clap
//!   definitions, one module per command (`serve`, `check`, `keygen`,
//!   `sign`, `attest`, `verify`, `attestations import` and `list`, `policy
//!   replay`: what a candidate policy would change for the pulls an audit
//!   trail recorded) and the one exit-code policy. It may use every module
//!   below; none of them uses it.
//! - [`config`]: the YAML configuration: parsing, validation, defaults, one
//!   file per section (the policy, alerts and break-glass shapes included)
//!   and the one duration parser. A leaf (it uses only [`oci`]); owns
//!   nothing at run time; everything else is built from a
//!   [`config::Config`]. What needs files read or the policy compiled is
//!   checked once by [`app::prepare`].
//! - [`server`]: listeners (plain or TLS), HTTP/1.1 + HTTP/2 connections,
//!   graceful shutdown, `/healthz` and `/readyz`; [`server::conn`] bounds
//!   what a connection holds (connection caps, handshake and idle
//!   deadlines, the client-stall deadline of every response stream).
//! - [`routing`]: turns a request into a [`routing::Route`]: which endpoint,
//!   which upstream, which repository. Validates names, tags and digests so
//!   malformed input never reaches an upstream.
//! - [`upstream`]: the client side: pooled connections, timeouts, redirects,
//!   Basic and bearer-token authentication, one [`upstream::Upstream`] per
//!   configured registry; [`upstream::client`] is the one HTTPS client
//!   builder (registries and alert webhooks).
//! - [`verify`]: whether a manifest may be served: policy rule, evidence
//!   lookup, verdict cache, admitted children and blobs. Only it can
//!   produce the `Admission` that serving requires. Evidence sources:
//!   cosign `.sig`/`.att` tags ([`verify::sources::cosign`]), OCI 1.1 referrers
//!   ([`verify::sources::referrers`]) and the local attestation store
//!   ([`verify::sources::store`]); formats are checked by pure modules
//!   ([`verify::formats::simple_signing`], [`verify::formats::dsse`], [`verify::formats::bundle`],
//!   [`verify::formats::binauthz`]) and matched to attestors in [`verify::evidence`].
//!   `verify::artifact` decides when a manifest is served as evidence
//!   (never from its labels); [`verify::budget`] bounds what evidence
//!   reads cost, per verification and in total.
//! - [`policy`]: the Binary Authorization-style policy and its pure
//!   evaluation; [`crypto`]: keys and signature verification (pure).
//! - [`serve`]: the pull endpoints: manifests (read whole, hashed, bounded),
//!   blobs (streamed, hashed while streaming), tag lists, referrers.
//! - [`audit`]: the one place a decision is recorded: audit trail
//!   writer, recent decisions, metrics, and an [`audit::AlertSink`] it is
//!   given. [`alerts`] (webhooks: bodies, coalescing, lanes, delivery) sits
//!   above it and implements that sink; audit never uses alerts.
//!   [`metrics`] owns the Prometheus registry; [`admin`] serves `/metrics`,
//!   the JSON API and the dashboard on the admin listener.
//! - [`oci`]: the vocabulary shared by all layers: digests, repository names,
//!   tags, media types.
//!   [`oci::json`] reads JSON the one way Portcullis and Go runtimes agree
//!   on, and [`oci::manifest`] decides once what a manifest is.
//! - [`error`]: OCI error codes and the wire envelope.
//! - [`telemetry`]: logging setup; [`reload`]: policy hot reload (SIGHUP,
//!   file changes).

#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod breakglass;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod reload;
pub mod routing;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod verify;
