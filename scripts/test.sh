#!/usr/bin/env bash
# Portcullis: THE test command (README "Development", and .ci/run).
#
# On a fresh Debian 12 / Ubuntu machine, as root (or with sudo), this:
#   1. installs the system packages the integration tests drive for real:
#      a CNCF distribution registry (docker-registry), skopeo, podman,
#      containerd (ctr) and Prometheus (promtool);
#   2. finds the Rust toolchain (it never downloads one);
#   3. checks that nothing refers to a path outside the repository
#      (scripts/check-self-contained.sh: fixtures live in tests/fixtures);
#      runs cargo fmt --check, cargo clippy -D warnings, cargo build --release;
#   4. runs the whole test suite (cargo nextest if present, else cargo test);
#   5. runs the benchmark's quick mode (bench/run.sh --quick, ~3 minutes)
#      as a smoke test: it fails on a broken benchmark (a peer that does not
#      start, a pull that fails, an unsigned image that is served), never on
#      a timing target. Its report goes to a temporary directory;
#   6. runs every fuzz target (fuzz/, scripts/fuzz.sh) for a few seconds
#      each: a crash, hang or failed assertion fails the run;
#   7. checks the supply chain (scripts/supply-chain.sh: cargo deny with
#      deny.toml: RustSec advisories, licences, duplicate crates, sources).
# It exits non-zero on the first failing stage.
#
# The tests start every service they need themselves (registries, containerd,
# the proxy) on free loopback ports and stop them again, so nothing has to be
# running beforehand.
#
# Environment knobs (all optional):
#   PORTCULLIS_SKIP_APT=1        don't touch apt (non-Debian hosts, no root)
#   PORTCULLIS_TEST_THREADS=N    test parallelism (default: number of CPUs)
#   PORTCULLIS_TEST_FILTER=...   extra arguments passed to the test runner,
#                                e.g. PORTCULLIS_TEST_FILTER='skopeo'
#   PORTCULLIS_SKIP_BENCH=1      skip stage 5 (also skipped with a filter)
#   PORTCULLIS_FUZZ_SECONDS=N    seconds per fuzz target in stage 6 (default 10)
#   PORTCULLIS_SKIP_FUZZ=1       skip stage 6 (also skipped with a filter)
#   PORTCULLIS_SKIP_SUPPLY_CHAIN=1  skip stage 7 (also skipped with a filter)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)

# ---------------------------------------------------------------- helpers --
START_TS=$SECONDS
stage() { printf '\n==> [%4ss] %s\n' "$((SECONDS - START_TS))" "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*  (set PORTCULLIS_SKIP_APT=1 if the packages are already installed)"
    fi
}

# ------------------------------------------------------ system packages --
# What the integration tests run for real:
#   docker-registry  CNCF distribution, the upstream registry
#   skopeo           client: push fixtures, pull through the proxy
#   podman           client: `podman pull` as root with the vfs driver
#                    (its Depends bring conmon, crun/runc and containers-common's
#                    policy.json; its Recommends, e.g. buildah, are not needed)
#   containerd       the daemon and `ctr images pull`, incl. hosts.toml mirrors
#   uidmap, iptables, slirp4netns
#                    podman's usual companions (rootless use, `podman run`);
#                    not needed for pulls as root, cheap to have
#   ca-certificates, curl, jq, openssl
#                    TLS roots, and small helpers tests and scripts use
#   python3-securesystemslib, python3-cryptography
#                    an independent DSSE signer for tests/attestations.rs
#                    (cryptography is only Recommended by securesystemslib,
#                    and recommends are not installed)
#   python3-h2       the HTTP/2 client tests/connections.rs drives a raw
#                    socket with (tests/h2/client.py): zero-window streams,
#                    half a preface; its hpack is what tests/h2/abuse.py
#                    (tests/protocol_abuse.rs) decodes responses with while
#                    it writes hostile frames by hand (rapid reset,
#                    CONTINUATION flood, HPACK bomb)
#   chromium         the headless browser tests/dashboard.rs drives the
#                    dashboard (/-/ui) in, through playwright-core
#   nginx, wrk       the benchmark's peers and load generator (stage 5);
#                    nginx is also the round-robin balancer in front of two
#                    replicas in tests/fleet.rs
#   apache2-utils    `htpasswd -B`: Apache's own tool writes the bcrypt
#                    entries tests/client_auth.rs logs in with
#   redis-server     the fleet's shared state (tests/fleet.rs, the bench's
#                    fleet rows): Debian's Redis 7
#   prometheus       promtool (checks and unit-tests docker/monitoring's
#                    alerting rules) and a real Prometheus that scrapes a
#                    running proxy and fires an alert (tests/monitoring.rs)
#   nodejs, npm      only when no `node` is on PATH (a NodeSource nodejs
#                    bundles npm and conflicts with Debian's npm package);
#                    tests/ui/ pins a playwright-core that runs on Node >= 18
APT_PACKAGES=(
    ca-certificates curl jq openssl
    docker-registry skopeo podman containerd
    python3-securesystemslib python3-cryptography python3-h2
    # tests/cosign_compat.rs writes cosign-format encrypted keys with an
    # independent implementation: PyNaCl's scrypt and secretbox (libsodium).
    python3-nacl
    uidmap iptables slirp4netns
    chromium
    nginx wrk
    redis-server
    apache2-utils
    prometheus
)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    APT_PACKAGES+=(nodejs npm)
fi

install_packages() {
    if [ "${PORTCULLIS_SKIP_APT:-0}" = 1 ]; then
        stage "Skipping apt (PORTCULLIS_SKIP_APT=1)"
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        stage "No apt-get here: install these yourself: ${APT_PACKAGES[*]}"
        return
    fi
    local missing=()
    local p
    for p in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    export DEBIAN_FRONTEND=noninteractive
    if [ "${#missing[@]}" -gt 0 ]; then
        stage "Installing system packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    else
        stage "System packages already present (apt-get install is a no-op)"
    fi
    # Always run the install so a fresh machine and this one take the same path.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    for p in docker-registry skopeo podman ctr containerd curl chromium node npm nginx wrk redis-server promtool prometheus; do
        command -v "$p" >/dev/null 2>&1 || die "$p not on PATH after apt-get install"
    done
}

# -------------------------------------------------------------- toolchain --
find_cargo() {
    # rustup installs put cargo in $CARGO_HOME/bin (default ~/.cargo/bin);
    # the official Docker images use /usr/local/cargo/bin.
    local d
    for d in "${CARGO_HOME:+$CARGO_HOME/bin}" "${HOME:-/root}/.cargo/bin" \
             /root/.cargo/bin /usr/local/cargo/bin /usr/local/bin; do
        if [ -n "$d" ] && [ -x "$d/cargo" ]; then
            case ":$PATH:" in *":$d:"*) ;; *) PATH="$d:$PATH" ;; esac
        fi
    done
    export PATH
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found (looked on PATH, \$CARGO_HOME/bin, ~/.cargo/bin, /usr/local/cargo/bin). Install Rust >= 1.85 (rustup) and rerun."
    cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
}

# ------------------------------------------------------ browser test deps --
# tests/dashboard.rs runs tests/ui/dashboard.mjs with node; playwright-core
# (pinned in tests/ui/package-lock.json) drives the system chromium and never
# downloads a browser of its own.
install_ui_test_deps() {
    command -v npm >/dev/null 2>&1 ||
        die "npm not found: install Node.js >= 18 with npm (apt-get install -y nodejs npm)"
    stage "npm ci --prefix tests/ui (playwright-core for the dashboard test)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/ui --no-audit --no-fund
}

# ------------------------------------------------------------------ main --
install_packages
find_cargo

stage "Toolchain: $(cargo --version), $(rustc --version)"

stage "scripts/check-self-contained.sh (nothing refers to a path outside the repository)"
scripts/check-self-contained.sh

stage "cargo fmt --all -- --check"
cargo fmt --all -- --check

stage "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

stage "cargo build --release --locked"
cargo build --release --locked

install_ui_test_deps

# The tests run against the release profile: that reuses the build above
# (no second compile of every dependency) and keeps the large-blob streaming
# and RSS tests, which hash hundreds of MiB, fast.
THREADS=${PORTCULLIS_TEST_THREADS:-$(nproc 2>/dev/null || echo 2)}
# shellcheck disable=SC2206  # intentional word splitting of the filter
EXTRA=(${PORTCULLIS_TEST_FILTER:-})

if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; cargo test does, when there is a library.
    # They go first so that nextest's summary is the run's closing line.
    if [ -f src/lib.rs ] && [ "${#EXTRA[@]}" -eq 0 ]; then
        stage "cargo test --doc --release"
        cargo test --doc --release --locked
    fi
    stage "cargo nextest run --release (${THREADS} threads)"
    cargo nextest run --release --locked --no-fail-fast \
        --test-threads "$THREADS" --failure-output final "${EXTRA[@]}"
else
    stage "cargo test --release (${THREADS} threads; cargo-nextest not installed)"
    cargo test --release --locked --no-fail-fast "${EXTRA[@]}" -- --test-threads "$THREADS"
fi

if [ "${PORTCULLIS_SKIP_BENCH:-0}" = 1 ] || [ "${#EXTRA[@]}" -gt 0 ]; then
    stage "Skipping the benchmark smoke run"
else
    BENCH_OUT=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-smoke.XXXXXX")
    stage "bench/run.sh --quick (smoke run; timings never fail it; report in $BENCH_OUT)"
    BENCH_RESULTS_DIR=$BENCH_OUT bench/run.sh --quick --no-install >"$BENCH_OUT/stdout.md"
    grep -q '^## Issue 6 targets' "$BENCH_OUT/stdout.md" || die "the benchmark report has no targets table"
    grep -q 'unsigned image via pc-require → HTTP 403' "$BENCH_OUT/stdout.md" ||
        die "the benchmark's REQUIRE_ATTESTATION proxy did not refuse the unsigned image"
    grep '^| .* | \*\*\(met\|MISSED\)\*\* |$' "$BENCH_OUT/stdout.md" | sed 's/^/    /' || true
fi

if [ "${PORTCULLIS_SKIP_FUZZ:-0}" = 1 ] || [ "${#EXTRA[@]}" -gt 0 ]; then
    stage "Skipping the fuzz smoke run"
else
    FUZZ_SECONDS=${PORTCULLIS_FUZZ_SECONDS:-10}
    stage "scripts/fuzz.sh $FUZZ_SECONDS (every fuzz target, $FUZZ_SECONDS s each, dev build)"
    # A dev build: the whole stage stays within a few minutes from a
    # clean machine (an optimised ASan build of every dependency alone
    # takes longer than the run). Real fuzzing: scripts/fuzz.sh 300.
    FUZZ_PROFILE=dev scripts/fuzz.sh "$FUZZ_SECONDS"
fi

if [ "${PORTCULLIS_SKIP_SUPPLY_CHAIN:-0}" = 1 ] || [ "${#EXTRA[@]}" -gt 0 ]; then
    stage "Skipping the supply-chain check"
else
    stage "scripts/supply-chain.sh (cargo deny check: advisories, licences, bans, sources)"
    scripts/supply-chain.sh
fi

stage "All checks passed (${REPO_ROOT})"
