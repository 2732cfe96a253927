//! The `portcullis` command line: the one-shot commands and `serve`. The
//! top layer: it may use anything in the library, and nothing in the
//! library uses it.

pub mod attestations;
pub mod commands;
pub mod replay;
