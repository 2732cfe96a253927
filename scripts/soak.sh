#!/usr/bin/env bash
# Portcullis soak (issue 17): SECONDS (default 600) of load with policy
# reloads against a real registry, on loopback only; stops by itself.
#
#   scripts/soak.sh [SECONDS] [--report FILE] [--json FILE] [--clients N]
#                   [--reload-every S] [--rss-tolerance-mib M] [--fd-tolerance N] [--seed N] [--keep]
#
# It starts a CNCF distribution registry (docker-registry) and
# `portcullis serve` on free 127.0.0.1 ports in a temporary directory,
# pushes five images (scripts/soak.py setup, through bench/push.py) and signs
# three of them with three keys (`portcullis keygen`, `portcullis sign`),
# then runs scripts/soak.py: 64 clients (threads, one keep-alive connection
# each) mixing manifest GETs by tag and by digest, HEADs and blob GETs of
# allowed and denied images, while the live configuration switches between
# two REQUIRE_ATTESTATION policies every 3 s (alternately SIGHUP and the
# file watch), which change which images are allowed. Every response is
# checked against the verdict of the policy in force; RSS and open file
# descriptors of the proxy are sampled every second; at the end the audit
# trail's lines are counted against the decisions. See scripts/soak.py for
# what exactly is checked.
#
# Exits 0 when every check passed, 1 when one failed (any 5xx or
# connection error, any wrong verdict, audit lines != decisions, RSS or
# descriptors grown past the tolerance), 2 when it could not run.
#
# Environment: PORTCULLIS_BIN (default: CARGO_TARGET_DIR or target/, then
# release/portcullis; built with cargo when missing),
# PORTCULLIS_SOAK_FLIP=soak/a,... (inverts those images' expected verdicts:
# the run must fail). Needs docker-registry, python3 and curl (what
# scripts/test.sh installs); installs nothing.
set -euo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SELF_DIR/.." && pwd)"

SECS=600 REPORT="" JSON="" KEEP=0 EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --report) REPORT=$2; shift ;;
        --json) JSON=$2; shift ;;
        --keep) KEEP=1 ;;
        --clients | --reload-every | --rss-tolerance-mib | --fd-tolerance | --seed)
            EXTRA+=("$1" "$2"); shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        [0-9]*) SECS=$1 ;;
        *) echo "soak.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
# Report paths are taken from where the script was started.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -z "$REPORT" ] || EXTRA+=(--report "$(abspath "$REPORT")")
[ -z "$JSON" ] || EXTRA+=(--json "$(abspath "$JSON")")
cd "$ROOT"

STARTED=$(date +%s)
log() { printf '[soak %3ss] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { log "cannot run: $*"; exit 2; }

for tool in docker-registry python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (scripts/test.sh installs it)"
done
BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis}
if [ ! -x "$BIN" ]; then
    [ -z "${PORTCULLIS_BIN:-}" ] || die "no portcullis binary at $BIN"
    log "no $BIN: cargo build --release"
    cargo build --release --locked --quiet
fi

# ------------------------------------------------------------ processes --
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-soak.XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            echo "--- last lines of $f ---" >&2
            tail -n 8 "$f" | cut -c1-400 >&2
        done
    fi
    if [ "$KEEP" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_ports, wait_http
. "$ROOT/scripts/lib/loopback.sh"

read -r P_UP P_PX P_AD <<<"$(free_ports 3)"
UP=127.0.0.1:$P_UP
log "work directory $WORK; registry $UP, proxy 127.0.0.1:$P_PX, admin 127.0.0.1:$P_AD; $SECS s"

cat >"$WORK/registry.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/registry-data}
http: {addr: $UP}
YAML
env -u REGISTRY_CONFIGURATION_PATH docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PID_UP=$!
PIDS+=("$PID_UP")
wait_http "http://$UP/v2/" "$PID_UP" "the registry"

for k in a b c; do
    "$BIN" keygen --key "$WORK/key-$k.key" --pub "$WORK/key-$k.pub" >/dev/null 2>&1 || die "portcullis keygen"
done
python3 "$SELF_DIR/soak.py" setup "$UP" --work "$WORK" --proxy-port "$P_PX" --admin-port "$P_AD" \
    >"$WORK/to-sign.txt" || die "pushing the images"
while read -r ref key; do
    "$BIN" sign "$ref" --key "$WORK/key-$key.key" --insecure >>"$WORK/sign.log" 2>&1 ||
        die "portcullis sign $ref"
done <"$WORK/to-sign.txt"
log "pushed 5 images, signed $(wc -l <"$WORK/to-sign.txt") (keys a, b, c)"

cp "$WORK/config-p1.yaml" "$WORK/portcullis.yaml"
"$BIN" serve --config "$WORK/portcullis.yaml" >"$WORK/portcullis.log" 2>&1 &
PID_PX=$!
PIDS+=("$PID_PX")
wait_http "http://127.0.0.1:$P_AD/healthz" "$PID_PX" "portcullis"
wait_http "http://127.0.0.1:$P_PX/v2/" "$PID_PX" "portcullis"

log "load for $SECS s${EXTRA[*]:+ (${EXTRA[*]})}"
RC=0
timeout --signal=TERM --kill-after=10 "$((${SECS%.*} + 180))" \
    python3 "$SELF_DIR/soak.py" run --work "$WORK" --pid "$PID_PX" \
    --proxy "127.0.0.1:$P_PX" --admin "127.0.0.1:$P_AD" --seconds "$SECS" "${EXTRA[@]}" || RC=$?

# The upstream must have stayed healthy for "no 5xx" to mean anything.
kill -0 "$PID_UP" 2>/dev/null || { log "the registry died during the soak"; RC=1; }
kill -0 "$PID_PX" 2>/dev/null || { log "portcullis died during the soak"; RC=1; }
case "$RC" in
    0) log "passed" ;;
    1) log "FAILED (see the report above)" ;;
    124 | 137) log "FAILED: the load generator did not stop in time"; RC=1 ;;
    *) log "FAILED: the load generator exited with $RC"; RC=1 ;;
esac
exit "$RC"
