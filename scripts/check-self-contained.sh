#!/usr/bin/env bash
# Fails when code, tests, benchmarks or scripts refer to a path outside the
# repository: a plain clone must build and pass every test on its own. In
# particular, fixtures are read from tests/fixtures/, never from a
# directory beside the checkout (such as the team's ../shared).
#
# Prints each offending file and line and exits 1; exits 0 when clean.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIRS=(src tests benches bench scripts)
# What leaves the repository:
#   ../shared, shared/fixtures       the team's sibling directory
#   CARGO_MANIFEST_DIR ... ".."      a path climbing out of the crate root
#   /work/, /home/, /root/           absolute paths of one machine
PATTERN='(\.\./shared|shared/fixtures|CARGO_MANIFEST_DIR[^;]*"\.\.(/|")|"/work/|"/home/|"/root/)'

hits=$(grep -rnE "$PATTERN" "${DIRS[@]}" \
        --exclude-dir=node_modules --exclude-dir=fixtures --exclude-dir=results \
        --exclude=check-self-contained.sh || true)
if [ -n "$hits" ]; then
    echo "check-self-contained: these lines refer to paths outside the repository:" >&2
    echo "$hits" | sed 's/^/  /' >&2
    echo "Copy what they need into the repository (fixtures: tests/fixtures/)." >&2
    exit 1
fi
echo "check-self-contained: no path outside the repository in ${DIRS[*]}"
