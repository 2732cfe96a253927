//! Where the third-party signature fixtures live: `tests/fixtures/`, inside
//! the repository, so a plain clone runs every test. Both the integration
//! tests (`tests/common/fixtures.rs`) and the library's unit tests
//! (`src/verify/testing.rs`, through `#[path]`) resolve fixture paths with
//! this one function. `tests/fixtures/README.txt` and each set's README
//! give the source, commit, licence and expected result of every case.

use std::path::{Path, PathBuf};

/// `tests/fixtures`, resolved from the crate's manifest directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
