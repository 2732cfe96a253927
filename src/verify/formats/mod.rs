//! Evidence formats: what a piece of evidence says and whether its
//! signature holds, from its bytes alone. Pure: no I/O, no clock but the
//! one passed in; the sources ([`super::sources`]) fetch the bytes.
//!
//! - [`simple_signing`]: cosign's and containers/image's signed payload;
//! - [`dsse`]: DSSE envelopes and in-toto statements (cosign `.att`);
//! - [`bundle`]: sigstore bundles (cosign v3, GitHub attestations);
//! - [`binauthz`]: Binary Authorization occurrences (gcloud, Kritis).
//!
//! May use `oci`, `crypto` and `policy`; never a source, the verifier or
//! anything that does I/O.

pub mod binauthz;
pub mod bundle;
pub mod dsse;
pub mod simple_signing;
