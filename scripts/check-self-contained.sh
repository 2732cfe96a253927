#!/usr/bin/env bash
# Fails when code, tests, benchmarks or scripts refer to a path outside the
# repository: a plain clone must build and pass every test on its own. In
# particular, fixtures are read from tests/fixtures/, never from a
# directory beside the checkout.
#
# What counts as leaving the repository:
#   - a quoted relative path (two dots, a slash, a name) that, resolved from the repository
#     root (where tests and scripts run), or from the file's own directory
#     for include_str!/include_bytes!/#[path], ends up outside it;
#   - CARGO_MANIFEST_DIR joined with "..";
#   - quoted absolute paths of one machine (under /work, /home or /root).
#
# Prints each offending file and line and exits 1; exits 0 when clean.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exec python3 - src tests benches bench scripts <<'PY'
import os
import re
import sys

root = os.path.realpath(".")
skip_dirs = {"node_modules", "fixtures", "results", "target", "__pycache__"}
relative = re.compile(r'"(\.\./[^"]+)"')
file_relative = re.compile(r'include_str!|include_bytes!|#\[path')
climbing = re.compile(r'CARGO_MANIFEST_DIR.*\.join\("\.\."')
absolute = re.compile(r'"/(work|home|root)/')

def inside(path):
    path = os.path.realpath(path)
    return path == root or path.startswith(root + os.sep)

hits = []
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                text = open(path, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            for number, line in enumerate(text.splitlines(), 1):
                base = dirpath if file_relative.search(line) else root
                bad = any(not inside(os.path.join(base, m)) for m in relative.findall(line))
                bad = bad or climbing.search(line) or absolute.search(line)
                if bad:
                    hits.append(f"  {path}:{number}: {line.strip()}")

if hits:
    print("check-self-contained: these lines refer to paths outside the repository:", file=sys.stderr)
    print("\n".join(hits), file=sys.stderr)
    print("Copy what they need into the repository (fixtures: tests/fixtures/).", file=sys.stderr)
    sys.exit(1)
print("check-self-contained: no path outside the repository in " + " ".join(sys.argv[1:]))
PY
