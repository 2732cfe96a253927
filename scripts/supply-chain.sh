#!/usr/bin/env bash
# The supply chain of Portcullis itself: `cargo deny check` with deny.toml
# (RustSec advisories: vulnerable, unmaintained, unsound and yanked crates;
# licences; duplicate and banned crates; sources), and `cargo audit` on the
# same advisories when it is installed. Exits non-zero on any finding.
#
#   scripts/supply-chain.sh                    the check (CI runs this)
#   scripts/supply-chain.sh --refresh-snapshot DB
#                                              rewrite supply-chain/advisories
#                                              from a checkout DB of
#                                              github.com/rustsec/advisory-db
#
# Advisories come from the live RustSec database when github.com can be
# reached (cargo deny fetches it). Where it cannot (an offline builder),
# the check uses supply-chain/advisories/: a dated copy of the database's
# entries for exactly the crates in Cargo.lock, with the list of crates it
# covers. A crate in Cargo.lock that the copy does not cover fails the
# check ("refresh the snapshot"), so the copy can be old but never silently
# incomplete; its date is printed on every use.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
snapshot="$root/supply-chain/advisories"

# Pinned: a new cargo-deny release cannot change what CI checks without a
# commit here.
CARGO_DENY_VERSION=0.20.2

lock_crates() { # the crate names in Cargo.lock, sorted
    sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u
}

if [ "${1:-}" = --refresh-snapshot ]; then
    db=${2:?usage: $0 --refresh-snapshot ADVISORY_DB_CHECKOUT}
    [ -d "$db/crates" ] || { echo "supply-chain.sh: $db has no crates/ directory" >&2; exit 2; }
    find "$snapshot" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
    mkdir -p "$snapshot/crates"
    lock_crates >"$snapshot/covered-crates.txt"
    while read -r name; do
        if [ -d "$db/crates/$name" ]; then
            cp -r "$db/crates/$name" "$snapshot/crates/"
        fi
    done <"$snapshot/covered-crates.txt"
    commit=$(git -C "$db" log -1 --format=%H 2>/dev/null || echo unknown)
    date=$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo unknown)
    printf 'commit %s\ndate %s\nlicence CC0-1.0 (the advisory database'"'"'s LICENSE.txt)\n' "$commit" "$date" >"$snapshot/SOURCE"
    echo "supply-chain.sh: snapshot of $date ($commit): $(ls "$snapshot/crates" | wc -l) crates with advisories of $(wc -l <"$snapshot/covered-crates.txt") in Cargo.lock"
    exit 0
fi

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "supply-chain.sh: installing cargo-deny $CARGO_DENY_VERSION" >&2
    cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi

# Licences, bans and sources need nothing but Cargo.lock and the registry
# index cargo already has.
cargo deny --log-level warn --offline check licenses bans sources

if timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
    echo "supply-chain.sh: advisories from the live RustSec database"
    cargo deny --log-level warn check advisories
    if command -v cargo-audit >/dev/null 2>&1; then
        cargo audit --deny warnings
    fi
    exit 0
fi

# Offline: the snapshot, checked to cover every crate in Cargo.lock.
[ -f "$snapshot/covered-crates.txt" ] ||
    { echo "supply-chain.sh: github.com unreachable and no snapshot in $snapshot" >&2; exit 1; }
missing=$(comm -23 <(lock_crates) "$snapshot/covered-crates.txt")
if [ -n "$missing" ]; then
    echo "supply-chain.sh: github.com unreachable, and the advisory snapshot does not cover:" >&2
    echo "$missing" | sed 's/^/  /' >&2
    echo "refresh it: scripts/supply-chain.sh --refresh-snapshot <checkout of github.com/rustsec/advisory-db>" >&2
    exit 1
fi
echo "supply-chain.sh: github.com unreachable; advisories from the snapshot of $(sed -n 's/^date //p' "$snapshot/SOURCE") (supply-chain/advisories/SOURCE)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cargo deny reads its database as a git repository in a directory named
# after the database's URL (this name is cargo-deny 0.20's, hence the
# pinned version): make one of the snapshot there, dated as the snapshot
# is, so cargo deny's staleness check sees its real age. A snapshot older
# than a year fails; a younger one is used with its date printed above.
taken=$(sed -n 's/^date //p' "$snapshot/SOURCE")
db="$work/dbs/advisory-db-3157b0e258782691"
mkdir -p "$db"
cp -r "$snapshot/crates" "$db/"
git -C "$db" init -q
git -C "$db" -c user.name=portcullis -c user.email=portcullis@localhost add -A
GIT_COMMITTER_DATE="${taken}T00:00:00Z" GIT_AUTHOR_DATE="${taken}T00:00:00Z" \
    git -C "$db" -c user.name=portcullis -c user.email=portcullis@localhost commit -q -m "RustSec advisory-db snapshot of $taken"
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$work/dbs\"\ndb-urls = [\"https://github.com/rustsec/advisory-db\"]\nmaximum-db-staleness = \"P365D\"|" deny.toml >"$work/deny.toml"
cargo deny --log-level warn --config "$work/deny.toml" --offline check advisories

# `cargo audit` reads the same database (RustSec's own tool): run when it
# is installed, on the same copy. CI does not install it (minutes of build
# for the check cargo deny's advisories already made above); the last run
# is recorded in docs/reliability.md.
if command -v cargo-audit >/dev/null 2>&1; then
    echo "supply-chain.sh: cargo audit on the same snapshot"
    cargo audit --db "$db" --no-fetch --stale --deny warnings
fi
