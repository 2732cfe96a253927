//! The `portcullis` command: parses the command line and hands it to
//! [`portcullis::cli::run`]. See `src/lib.rs` for the map of the code.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
