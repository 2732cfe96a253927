//! The `portcullis` command line: the one-shot commands and `serve`. The
//! top layer: it may use anything in the library, and nothing in the
//! library uses it.

pub mod attest;
pub mod attestations;
pub mod explain;
pub mod image;
pub mod keygen;
pub mod registry;
pub mod replay;
pub mod sign;
pub mod verify;
