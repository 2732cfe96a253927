#!/usr/bin/env bash
# Portcullis benchmark (issue 6): Portcullis side by side with the registry
# it fronts, CNCF distribution in pull-through proxy mode, an nginx reverse
# proxy hop and an nginx `return 200` (the machine's HTTP floor), in one run.
# Issue 13: two Portcullis replicas sharing state through a local
# redis-server (pc-fleet, pc-fleet-b): the warm by-digest manifest path with
# Redis configured next to without, and the first GET of a blob on a replica
# that did not admit its image (one Redis lookup; section 2b).
# Issue 15: pc-keyless, a keyless attestor: the cold first GET of images
# signed keyless by the benchmark's own Sigstore (section 2).
# Issue 14: the content store (cache.content). pc-cache is pc-require's
# policy with an on-disk store in a fresh directory: the big blob served
# from the store (warmed with one GET, the hits counter checked on every
# run) at 1 and 4 streams next to the registry and distribution's warm
# proxy (MB/s, CPU-s/GiB, peak RSS with 4 streams), whole-image skopeo and
# ctr pulls of the stored image (second pull) next to the registry, and
# cold pulls through an empty store (pc-cache-cold, a running instance
# whose store is emptied with `portcullis cache purge` before every pull)
# next to pass-through pc-require and distribution's proxy on empty
# storage (distproxy-cold, restarted on a new directory: it has no purge).
# A pull through the store that fails, or a blob not served from it,
# fails the run.
#
#   bench/run.sh            full run (3 repetitions, 256 MiB blob, 1 and 4
#                           streams, criterion; ~14 minutes from a fresh
#                           clone, build included)
#   bench/run.sh --quick    CI/local smoke run (1 repetition, short runs,
#                           32 MiB blob, 1 and 4 streams, tiny criterion;
#                           < 3 min)
#   --no-install            do not apt-get install missing tools
#   --no-build              use an existing release build
#
# Environment: CARGO_TARGET_DIR (default target/), BENCH_RESULTS_DIR
# (default bench/results/), BENCH_SERVER_CPUS
# (default: all CPUs), BENCH_CLIENT_CPUS (default: the last CPU; load
# generators and pull clients are pinned there), BENCH_KEEP=1 keeps the
# work directory.
#
# Everything listens on 127.0.0.1, ports chosen at run time; every process
# started is stopped on exit. Writes bench/results/<date>-<mode>.md and
# bench/results/latest.md, and prints the table.
set -euo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SELF_DIR/.." && pwd)"
cd "$ROOT"

MODE=full INSTALL=1 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [ "$MODE" = quick ]; then
    REPS=1 DUR=1 CONCS="1 16 64" BIG_MIB=32 STREAMS="1 4" COLD_REPS=5 PULL_REPS=1 GATE_REPS=30
    CRIT_WARMUP=0.1 CRIT_MEASURE=0.3 VERDICTS=100000
else
    REPS=3 DUR=2 CONCS="1 16 64" BIG_MIB=256 STREAMS="1 4" COLD_REPS=15 PULL_REPS=3 GATE_REPS=100
    CRIT_WARMUP=1 CRIT_MEASURE=2 VERDICTS=1000000
fi
NCPU=$(nproc)
SERVER_CPUS=${BENCH_SERVER_CPUS:-0-$((NCPU - 1))}
CLIENT_CPUS=${BENCH_CLIENT_CPUS:-$((NCPU - 1))}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/portcullis
SIGNER=$TARGET_DIR/release/examples/keyless-sign
ACCEPT="application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
STARTED=$(date +%s)
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[bench %3ss] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ------------------------------------------------------------ processes --
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            echo "--- last lines of $f ---" >&2
            tail -n 6 "$f" | cut -c1-300 >&2
        done
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # start_bg LOG CMD... (pinned to the server CPUs); sets LAST_PID
    local logf=$1
    shift
    taskset -c "$SERVER_CPUS" "$@" >"$logf" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop_bg() { # stop_bg PID: stops one process started by start_bg (and forgets it)
    local pid=$1 p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# free_ports, wait_http
. "$ROOT/scripts/lib/loopback.sh"

# ---------------------------------------------------------------- setup --
if [ "$INSTALL" = 1 ]; then
    missing=()
    for pair in docker-registry:docker-registry nginx:nginx wrk:wrk skopeo:skopeo ctr:containerd \
        redis-server:redis-server redis-cli:redis-tools curl:curl openssl:openssl taskset:util-linux \
        python3:python3; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
for tool in docker-registry nginx wrk skopeo ctr containerd redis-server redis-cli curl openssl taskset python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (run without --no-install)"
done

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (target dir $TARGET_DIR)"
    cargo build --release --locked --quiet
    cargo build --release --locked --quiet --example keyless-sign
    cargo bench --locked --quiet --bench core --no-run 2>/dev/null || cargo bench --locked --bench core --no-run
fi
BUILD_S=$(($(date +%s) - STARTED))
[ -x "$BIN" ] || die "no release binary at $BIN"
[ -x "$SIGNER" ] || die "no keyless signer at $SIGNER (cargo build --release --example keyless-sign)"

read -r P_UP P_DP P_NG P_ST P_PA P_PR P_PT A_PA A_PR A_PT P_RD P_FA P_FB A_FA A_FB \
    P_PC A_PC P_PK A_PK P_DK P_PL A_PL <<<"$(free_ports 22)"
UP=127.0.0.1:$P_UP
log "work directory $WORK; servers on CPUs $SERVER_CPUS, clients on CPU $CLIENT_CPUS"

# Upstream: a plain distribution registry.
cat >"$WORK/upstream.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/upstream-data}
  delete: {enabled: true}
http: {addr: $UP}
YAML
start_bg "$WORK/upstream.log" docker-registry serve "$WORK/upstream.yml"
PID_UP=$LAST_PID
wait_http "http://$UP/v2/" "$PID_UP" "upstream registry"

log "pushing demo/app:v1, demo/multi:v1 (index) and demo/big:v1 (${BIG_MIB} MiB layer)"
python3 "$SELF_DIR/push.py" setup "$UP" --big-mib "$BIG_MIB" --work "$WORK" >"$WORK/content.json"
jqf() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/content.json" "$1"; }
APP_DIGEST=$(jqf app_digest)
MULTI_DIGEST=$(jqf multi_digest)
BIG_DIGEST=$(jqf big_digest)
BIG_LAYER=$(jqf big_layer)
BIG_SIZE=$(jqf big_layer_size)

"$BIN" keygen --key "$WORK/cosign.key" --pub "$WORK/cosign.pub" >/dev/null 2>&1
for ref in demo/app:v1 demo/multi:v1 demo/big:v1; do
    "$BIN" sign "$UP/$ref" --key "$WORK/cosign.key" --insecure >>"$WORK/sign.log" 2>&1 ||
        die "portcullis sign $ref"
done

# Distribution in pull-through proxy mode.
cat >"$WORK/distproxy.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/distproxy-data}
http: {addr: 127.0.0.1:$P_DP}
proxy: {remoteurl: http://$UP}
YAML
start_bg "$WORK/distproxy.log" docker-registry serve "$WORK/distproxy.yml"
PID_DP=$LAST_PID

# nginx: a reverse proxy hop (no buffering, upstream keepalive) and a
# static `return 200` (the HTTP floor of the machine).
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 1000000;
    upstream registry { server $UP; keepalive 64; }
    server {
        listen 127.0.0.1:$P_NG;
        client_max_body_size 0;
        location / {
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
    server {
        listen 127.0.0.1:$P_ST;
        location / { return 200 "ok\n"; }
    }
}
NGINX
start_bg "$WORK/nginx.log" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
PID_NG=$LAST_PID

# Redis for the fleet's shared state (issue 13): no persistence.
start_bg "$WORK/redis.log" /usr/bin/redis-server --port "$P_RD" --bind 127.0.0.1 --save "" --appendonly no
PID_RD=$LAST_PID

# Portcullis: ALWAYS_ALLOW; REQUIRE_ATTESTATION (tags revalidated on every
# request, the default); REQUIRE_ATTESTATION with a 5 s tag TTL; two
# replicas of a fleet (REQUIRE_ATTESTATION sharing state through Redis);
# and REQUIRE_ATTESTATION with the content store (pc-cache; pc-cache-cold,
# whose store is emptied before each cold pull, section 4).
PEM=$(sed 's/^/            /' "$WORK/cosign.pub")
pc_config() { # pc_config FILE PORT ADMIN MODE TAG_TTL [REPLICA (with state.redis)] [STORE_DIR (cache.content)]
    local content=""
    [ -n "${7:-}" ] && content=", content: {path: \"$7\", maxSize: 8GiB}"
    {
        cat <<YAML
listen: 127.0.0.1:$2
upstreams:
  - registry: $UP
    url: http://$UP
    default: true
admin: {listen: 127.0.0.1:$3}
cache: {allowTtl: 10m, denyTtl: 30s, maxEntries: 100000, tagTtl: $5$content}
policy:
  defaultAdmissionRule:
    evaluationMode: $4
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
YAML
        if [ "$4" = REQUIRE_ATTESTATION ]; then
            cat <<YAML
    requireAttestationsBy: [built-by-ci]
attestors:
  - name: built-by-ci
    publicKeys:
      - id: bench
        pkixPublicKey:
          signatureAlgorithm: ECDSA_P256_SHA256
          publicKeyPem: |
$PEM
YAML
        fi
        if [ -n "${6:-}" ]; then
            cat <<YAML
state:
  replica: $6
  redis: {url: "redis://127.0.0.1:$P_RD", timeout: 250ms}
YAML
        fi
    } >"$1"
}
pc_config "$WORK/pc-allow.yaml" "$P_PA" "$A_PA" ALWAYS_ALLOW 0s
pc_config "$WORK/pc-require.yaml" "$P_PR" "$A_PR" REQUIRE_ATTESTATION 0s
pc_config "$WORK/pc-require-ttl.yaml" "$P_PT" "$A_PT" REQUIRE_ATTESTATION 5s
pc_config "$WORK/pc-fleet.yaml" "$P_FA" "$A_FA" REQUIRE_ATTESTATION 0s a
pc_config "$WORK/pc-fleet-b.yaml" "$P_FB" "$A_FB" REQUIRE_ATTESTATION 0s b
pc_config "$WORK/pc-cache.yaml" "$P_PC" "$A_PC" REQUIRE_ATTESTATION 0s "" "$WORK/pc-cache-store"
# Issue 15: pc-keyless requires a keyless signature by one GitHub workflow
# identity, under the trusted root of the benchmark's own Sigstore
# (bench/keyless_sign.rs): Fulcio-like chain, SCT, Rekor SET, identity.
"$SIGNER" root "$WORK/trusted_root.json" || die "keyless-sign root"
cat >"$WORK/pc-keyless.yaml" <<YAML
listen: 127.0.0.1:$P_PL
upstreams:
  - registry: $UP
    url: http://$UP
    default: true
admin: {listen: 127.0.0.1:$A_PL}
cache: {allowTtl: 10m, denyTtl: 30s, maxEntries: 100000, tagTtl: 0s}
policy:
  defaultAdmissionRule:
    evaluationMode: REQUIRE_ATTESTATION
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    requireAttestationsBy: [acme-release]
attestors:
  - name: acme-release
    keyless:
      trustedRoot: $WORK/trusted_root.json
      identities:
        - issuer: https://token.actions.githubusercontent.com
          subjectRegExp: https://github\.com/acme/app/\.github/workflows/release\.yml@refs/tags/v.*
YAML
start_bg "$WORK/pc-keyless.log" "$BIN" serve --config "$WORK/pc-keyless.yaml"
PID_PL=$LAST_PID
start_bg "$WORK/pc-allow.log" "$BIN" serve --config "$WORK/pc-allow.yaml"
PID_PA=$LAST_PID
start_bg "$WORK/pc-require.log" "$BIN" serve --config "$WORK/pc-require.yaml"
PID_PR=$LAST_PID
start_bg "$WORK/pc-require-ttl.log" "$BIN" serve --config "$WORK/pc-require-ttl.yaml"
PID_PT=$LAST_PID
start_bg "$WORK/pc-fleet.log" "$BIN" serve --config "$WORK/pc-fleet.yaml"
PID_FA=$LAST_PID
start_bg "$WORK/pc-fleet-b.log" "$BIN" serve --config "$WORK/pc-fleet-b.yaml"
PID_FB=$LAST_PID
start_bg "$WORK/pc-cache.log" "$BIN" serve --config "$WORK/pc-cache.yaml"
PID_PC=$LAST_PID

declare -A URL=(
    [direct]=http://$UP [distproxy]=http://127.0.0.1:$P_DP [nginx]=http://127.0.0.1:$P_NG
    [static]=http://127.0.0.1:$P_ST [pc-allow]=http://127.0.0.1:$P_PA
    [pc-require]=http://127.0.0.1:$P_PR [pc-require-ttl]=http://127.0.0.1:$P_PT
    [pc-fleet]=http://127.0.0.1:$P_FA [pc-fleet-b]=http://127.0.0.1:$P_FB
    [pc-cache]=http://127.0.0.1:$P_PC [pc-cache-cold]=http://127.0.0.1:$P_PK
    [pc-keyless]=http://127.0.0.1:$P_PL
    [distproxy-cold]=http://127.0.0.1:$P_DK
)
declare -A PIDOF=(
    [direct]=$PID_UP [distproxy]=$PID_DP [nginx]=$PID_NG [static]=$PID_NG
    [pc-allow]=$PID_PA [pc-require]=$PID_PR [pc-require-ttl]=$PID_PT
    [pc-fleet]=$PID_FA [pc-fleet-b]=$PID_FB [pc-cache]=$PID_PC [pc-keyless]=$PID_PL
)
wait_http "${URL[distproxy]}/v2/" "$PID_DP" "distribution proxy"
wait_http "${URL[static]}/" "$PID_NG" "nginx"
wait_http "${URL[nginx]}/v2/" "$PID_NG" "nginx"
for t in pc-allow pc-require pc-require-ttl pc-fleet pc-fleet-b pc-cache pc-keyless; do
    wait_http "${URL[$t]}/v2/" "${PIDOF[$t]}" "$t"
done
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$P_RD" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$PID_RD" 2>/dev/null || die "redis-server exited during startup"
    sleep 0.1
done
[ "$(redis-cli -p "$P_RD" ping 2>/dev/null)" = PONG ] || die "redis-server did not answer on port $P_RD"

# All the processes of a server (nginx: master and workers).
pids_of() {
    local p=$1
    echo "$p"
    pgrep -P "$p" 2>/dev/null || true
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # cpu_ticks PID: utime+stime of the server's processes
    local total=0 p f
    for p in $(pids_of "$1"); do
        # Fields after the ")" of the command name: utime is 12th, stime 13th.
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
upstream_sent() { # bytes the upstream registry has sent on its open connections
    ss -tinH state established "( sport = :$P_UP )" 2>/dev/null |
        grep -o 'bytes_acked:[0-9]*' | awk -F: '{s+=$2} END{printf "%.0f\n", s}'
}
hwm_reset() { local p; for p in $(pids_of "$1"); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
hwm_kib() { # largest VmHWM among the server's processes
    local p m=0 v
    for p in $(pids_of "$1"); do
        v=$(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        [ "${v:-0}" -gt "$m" ] && m=$v
    done
    echo "$m"
}
now_ns() { date +%s%N; }
pc_metric() { # pc_metric ADMIN_PORT SERIES: one series of a Portcullis /metrics (0 if absent)
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v n="portcullis_$2" '$1 == n {print $2; f=1} END {if (!f) print 0}'
}
cache_counts() { # cache_counts ADMIN_PORT: "hits misses bytes-from-store bytes-from-upstream" of cache.content
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        $1 == "portcullis_content_cache_hits_total" {h = $2}
        $1 == "portcullis_content_cache_misses_total" {m = $2}
        $1 == "portcullis_content_cache_bytes_total{source=\"store\"}" {s = $2}
        $1 == "portcullis_content_cache_bytes_total{source=\"upstream\"}" {u = $2}
        END {printf "%.0f %.0f %.0f %.0f\n", h, m, s, u}'
}
wait_stored() { # wait_stored ADMIN_PORT NAME: until the store holds the big blob, no download in flight
    local inflight stored
    for _ in $(seq 1 300); do
        inflight=$(pc_metric "$1" content_cache_downloads_in_flight) || inflight=-1
        stored=$(pc_metric "$1" content_cache_stored_bytes) || stored=0
        [ "$inflight" = 0 ] && [ "$stored" -ge "$BIG_SIZE" ] && return 0
        sleep 0.1
    done
    die "$2: the content store does not hold the $((BIG_SIZE >> 20)) MiB blob 30 s after its first GET (stored $stored bytes, $inflight downloads in flight)"
}

RAW=$WORK/raw.tsv
: >"$RAW"
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; } # section case target metric value

http_code() { curl -s -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" "$1"; }
expect_200() {
    local code
    code=$(http_code "$1")
    [ "$code" = 200 ] || die "GET $1 answered $code (expected 200)"
}

# ---------------------------------------------------------------- warm --
log "warming the proxies (manifests, index children, the big blob through distribution and into pc-cache's store)"
# pc-fleet-b comes after pc-fleet: it adopts pc-fleet's verdicts from Redis
# (and opens its connection to it).
for t in direct distproxy nginx pc-allow pc-require pc-require-ttl pc-fleet pc-fleet-b pc-cache; do
    u=${URL[$t]}
    for path in demo/app/manifests/v1 "demo/app/manifests/$APP_DIGEST" demo/multi/manifests/v1 \
        "demo/multi/manifests/$MULTI_DIGEST" demo/big/manifests/v1 "demo/big/manifests/$BIG_DIGEST"; do
        expect_200 "$u/v2/$path"
    done
    curl -s -o /dev/null -H "Accept: $ACCEPT" "$u/v2/demo/multi/manifests/v1-amd64"
done
expect_200 "${URL[distproxy]}/v2/demo/big/blobs/$BIG_LAYER"
# pc-cache: one GET stores the big blob (a miss, downloaded once); the next
# is served from the store (a hit, no upstream bytes).
cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
read -r _ m0 _ u0 <<<"$cc"
expect_200 "${URL[pc-cache]}/v2/demo/big/blobs/$BIG_LAYER"
wait_stored "$A_PC" pc-cache
cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
read -r h1 m1 _ u1 <<<"$cc"
[ "$((m1 - m0))" -ge 1 ] && [ "$((u1 - u0))" -ge "$BIG_SIZE" ] ||
    die "pc-cache: the first GET of the big blob was not downloaded into the store (misses +$((m1 - m0)), upstream bytes +$((u1 - u0)))"
expect_200 "${URL[pc-cache]}/v2/demo/big/blobs/$BIG_LAYER"
cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
read -r h2 m2 _ u2 <<<"$cc"
[ "$((h2 - h1))" -ge 1 ] && [ "$m2" = "$m1" ] && [ "$u2" = "$u1" ] ||
    die "pc-cache: the second GET of the big blob was not served from the store (hits +$((h2 - h1)), misses +$((m2 - m1)), upstream bytes +$((u2 - u1)))"
# Warm connections/caches once more with a short load.
for t in direct distproxy nginx static pc-allow pc-require pc-require-ttl pc-fleet; do
    taskset -c "$CLIENT_CPUS" wrk -t1 -c16 -d1s -H "Accept: $ACCEPT" \
        "${URL[$t]}/v2/demo/app/manifests/$APP_DIGEST" >/dev/null 2>&1 || true
done

# --------------------------------------------- 1. manifests under load --
run_wrk() { # run_wrk TARGET KIND CONC URL
    local t=$1 kind=$2 c=$3 url=$4 pid=${PIDOF[$1]} before up_before out after up_after
    before=$(cpu_ticks "$pid")
    up_before=$(cpu_ticks "$PID_UP")
    out=$(taskset -c "$CLIENT_CPUS" wrk -t1 -c"$c" -d"${DUR}s" --timeout 10s -s "$SELF_DIR/wrk.lua" \
        -H "Accept: $ACCEPT" "$url" 2>&1 | grep '^RESULT' || true)
    after=$(cpu_ticks "$pid")
    up_after=$(cpu_ticks "$PID_UP")
    [ -n "$out" ] || die "wrk against $t ($url) printed no result"
    local requests duration_us p50_us p99_us errors non2xx
    eval "$(echo "$out" | sed 's/^RESULT //; s/ /;/g')"
    requests=${requests:-0}
    local cs="$kind c$c"
    rec manifest "$cs" "$t" rps "$(python3 -c "print($requests/($duration_us/1e6))")"
    rec manifest "$cs" "$t" p50_ms "$(python3 -c "print($p50_us/1000)")"
    rec manifest "$cs" "$t" p99_ms "$(python3 -c "print($p99_us/1000)")"
    rec manifest "$cs" "$t" errors "$((errors + non2xx))"
    if [ "$requests" -gt 0 ]; then
        rec manifest "$cs" "$t" cpu_us_per_req \
            "$(python3 -c "print(($after-$before)/$CLK_TCK/$requests*1e6)")"
        if [ "$pid" != "$PID_UP" ] && [ "$t" != static ]; then
            rec manifest "$cs" "$t" upstream_cpu_us_per_req \
                "$(python3 -c "print(($up_after-$up_before)/$CLK_TCK/$requests*1e6)")"
        fi
    fi
}
MF_TARGETS="direct distproxy nginx static pc-allow pc-require pc-fleet"
TAG_TARGETS="direct distproxy nginx pc-allow pc-require pc-require-ttl"
for rep in $(seq 1 "$REPS"); do
    log "manifests: repetition $rep/$REPS (${DUR}s per run)"
    for c in $CONCS; do
        for t in $MF_TARGETS; do
            path=/v2/demo/app/manifests/$APP_DIGEST
            [ "$t" = static ] && path=/
            run_wrk "$t" digest "$c" "${URL[$t]}$path"
        done
        for t in $TAG_TARGETS; do
            run_wrk "$t" tag "$c" "${URL[$t]}/v2/demo/app/manifests/v1"
        done
    done
done

# ------------------------------------------------- 2. cold verification --
log "cold verification: $COLD_REPS fresh images per target"
python3 "$SELF_DIR/push.py" fresh "$UP" cold/app d "$COLD_REPS" >"$WORK/cold-d.txt"
python3 "$SELF_DIR/push.py" fresh "$UP" cold/app a "$COLD_REPS" >"$WORK/cold-a.txt"
python3 "$SELF_DIR/push.py" fresh "$UP" cold/app b "$COLD_REPS" >"$WORK/cold-b.txt"
python3 "$SELF_DIR/push.py" fresh "$UP" cold/app c "$COLD_REPS" >"$WORK/cold-c.txt"
while read -r tag _; do
    "$BIN" sign "$UP/cold/app:$tag" --key "$WORK/cosign.key" --insecure >>"$WORK/sign.log" 2>&1 ||
        die "portcullis sign cold/app:$tag"
done <"$WORK/cold-c.txt"
python3 "$SELF_DIR/push.py" fresh "$UP" cold/app k "$COLD_REPS" >"$WORK/cold-k.txt"
"$SIGNER" sign "$UP/cold/app" <"$WORK/cold-k.txt" >"$WORK/cold-k.sigs" || die "keyless-sign sign"
python3 "$SELF_DIR/push.py" sigs "$UP" cold/app <"$WORK/cold-k.sigs" || die "push.py sigs"
paste "$WORK/cold-a.txt" "$WORK/cold-b.txt" "$WORK/cold-c.txt" "$WORK/cold-d.txt" "$WORK/cold-k.txt" |
    while read -r _ a _ b _ c _ d _ k; do
        echo "direct ${URL[direct]}/v2/cold/app/manifests/$a"
        echo "pc-allow ${URL[pc-allow]}/v2/cold/app/manifests/$b"
        echo "pc-require ${URL[pc-require]}/v2/cold/app/manifests/$c"
        echo "direct-sig ${URL[direct]}/v2/cold/app/manifests/${c/:/-}.sig"
        echo "distproxy ${URL[distproxy]}/v2/cold/app/manifests/$d"
        echo "pc-keyless ${URL[pc-keyless]}/v2/cold/app/manifests/$k"
    done | taskset -c "$CLIENT_CPUS" python3 "$SELF_DIR/cold.py" >"$WORK/cold.out" 2>>"$WORK/cold.log"
while read -r t p50 p90 n fail; do
    rec cold "first GET by digest" "$t" p50_ms "$p50"
    rec cold "first GET by digest" "$t" p90_ms "$p90"
    rec cold "first GET by digest" "$t" failures "$fail"
done <"$WORK/cold.out"
# The keyless-signed images must all have been admitted.
kfail=$(awk '$1 == "pc-keyless" {print $5}' "$WORK/cold.out")
[ "$kfail" = 0 ] || die "pc-keyless refused $kfail keyless-signed image(s): see $WORK/cold.log and $WORK/pc-keyless.log"
# Enforcement sanity: an unsigned image is refused by pc-require.
unsigned=$(awk 'NR==1{print $2}' "$WORK/cold-a.txt")
rec sanity "unsigned image via pc-require" pc-require http_status "$(http_code "${URL[pc-require]}/v2/cold/app/manifests/$unsigned")"
rec sanity "signed image via pc-require" pc-require http_status "$(http_code "${URL[pc-require]}/v2/demo/app/manifests/v1")"
rec sanity "key-signed image via pc-keyless" pc-keyless http_status "$(http_code "${URL[pc-keyless]}/v2/demo/app/manifests/v1")"

# ---------------------------------------- 2b. blob gating across a fleet --
# A blob request on a replica that did not admit the image asks Redis (one
# GET) before serving it. GATE_REPS fresh signed images (plus one never
# admitted, the control): each manifest admitted through pc-fleet, then its
# config blob fetched first through pc-fleet-b, pc-fleet and the registry.
log "blob gating: $GATE_REPS fresh signed images admitted by pc-fleet, first blob GET on pc-fleet-b"
python3 "$SELF_DIR/push.py" fresh "$UP" gate/app g "$((GATE_REPS + 1))" >"$WORK/gate-all.txt"
head -n "$GATE_REPS" "$WORK/gate-all.txt" >"$WORK/gate.txt"
GATE_CONTROL=$(tail -n 1 "$WORK/gate-all.txt" | awk '{print $2}')
while read -r tag _; do
    "$BIN" sign "$UP/gate/app:$tag" --key "$WORK/cosign.key" --insecure >>"$WORK/sign.log" 2>&1 ||
        die "portcullis sign gate/app:$tag"
done <"$WORK/gate.txt"
hits0=$(pc_metric "$A_FB" fleet_shared_hits_total)
falls0=$(pc_metric "$A_FB" redis_fallbacks_total)
taskset -c "$CLIENT_CPUS" python3 "$SELF_DIR/blobgate.py" gate/app "${URL[pc-fleet]}" "${URL[pc-fleet-b]}" \
    "${URL[direct]}" "$GATE_CONTROL" "127.0.0.1:$P_RD" <"$WORK/gate.txt" >"$WORK/gate.out" 2>>"$WORK/gate.log" ||
    die "blobgate.py (see $WORK/gate.log)"
GATE_CASE="first blob GET on a replica that did not admit the image (Redis lookup)"
ADMIT_CASE="admission: first GET of the manifest by digest (verifies, writes to Redis; new connection)"
RTT_CASE="for scale: a bare Redis GET from the client (kept-alive, loopback)"
while read -r kind t a b n fail; do
    case "$kind" in
        admit | blob | rtt)
            cs=$GATE_CASE
            [ "$kind" = admit ] && cs=$ADMIT_CASE
            [ "$kind" = rtt ] && cs=$RTT_CASE
            rec gate "$cs" "$t" p50_ms "$a"
            rec gate "$cs" "$t" p90_ms "$b"
            rec gate "$cs" "$t" samples "$n"
            rec gate "$cs" "$t" failures "$fail"
            ;;
        delta)
            rec gate "$GATE_CASE" "$t" delta_p50_ms "$a"
            rec gate "$GATE_CASE" "$t" delta_p90_ms "$b"
            ;;
        control) rec sanity "blob of an image no replica admitted via pc-fleet-b" "$t" http_status "$a" ;;
    esac
done <"$WORK/gate.out"
# What pc-fleet-b found in Redis meanwhile (one hit per blob) and answered
# without it (should be none).
hits1=$(pc_metric "$A_FB" fleet_shared_hits_total)
falls1=$(pc_metric "$A_FB" redis_fallbacks_total)
rec gate "$GATE_CASE" pc-fleet-b redis_hits "$(python3 -c "print($hits1 - $hits0)")"
rec gate "$GATE_CASE" pc-fleet-b redis_fallbacks "$(python3 -c "print($falls1 - $falls0)")"

# ----------------------------------------------------------- 3. blobs --
# pc-cache serves the blob from its store (warmed above): every run must
# add one hit per stream, no miss, and all its bytes from the store.
BLOB_TARGETS="direct distproxy nginx pc-allow pc-require pc-cache"
for rep in $(seq 1 "$REPS"); do
    log "blobs: repetition $rep/$REPS ($((BIG_SIZE >> 20)) MiB; streams: $STREAMS)"
    for s in $STREAMS; do
        for t in $BLOB_TARGETS; do
            pid=${PIDOF[$t]}
            url="${URL[$t]}/v2/demo/big/blobs/$BIG_LAYER"
            if [ "$t" = pc-cache ]; then
                cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
                read -r h0 m0 s0 _ <<<"$cc"
            fi
            hwm_reset "$pid"
            c0=$(cpu_ticks "$pid")
            u0=$(upstream_sent)
            t0=$(now_ns)
            cpids=()
            for i in $(seq 1 "$s"); do
                taskset -c "$CLIENT_CPUS" curl -s -o /dev/null -w '%{http_code} %{size_download}\n' \
                    "$url" >"$WORK/blob-$i.out" &
                cpids+=($!)
            done
            for p in "${cpids[@]}"; do wait "$p"; done
            t1=$(now_ns)
            c1=$(cpu_ticks "$pid")
            u1=$(upstream_sent)
            for i in $(seq 1 "$s"); do
                read -r code got <"$WORK/blob-$i.out"
                [ "$code" = 200 ] && [ "$got" = "$BIG_SIZE" ] ||
                    die "blob via $t: HTTP $code, $got of $BIG_SIZE bytes"
            done
            bytes=$((BIG_SIZE * s))
            if [ "$t" = pc-cache ]; then
                cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
                read -r h1 m1 s1 _ <<<"$cc"
                [ "$((h1 - h0))" -ge "$s" ] && [ "$m1" = "$m0" ] && [ "$((s1 - s0))" -ge "$bytes" ] ||
                    die "blob via pc-cache, $s stream(s): not served from the store (hits +$((h1 - h0)), misses +$((m1 - m0)), bytes from the store $((s1 - s0)) of $bytes)"
            fi
            cs="${s} stream(s)"
            rec blob "$cs" "$t" mb_s "$(python3 -c "print($bytes/1e6/(($t1-$t0)/1e9))")"
            rec blob "$cs" "$t" cpu_s_per_gib "$(python3 -c "print(($c1-$c0)/$CLK_TCK/($bytes/2**30))")"
            rec blob "$cs" "$t" peak_rss_mib "$(python3 -c "print($(hwm_kib "$pid")/1024)")"
            if [ "$t" = pc-allow ] || [ "$t" = pc-require ] || [ "$t" = nginx ] || [ "$t" = pc-cache ]; then
                # Upstream body+header bytes per client body byte, over the
                # proxy's kept-alive upstream connections (ss bytes_acked).
                rec blob "$cs" "$t" upstream_per_client "$(python3 -c "print(($u1-$u0)/$bytes)")"
            fi
        done
    done
done

# ------------------------------------------------- 4. whole-image pulls --
cat >"$WORK/policy.json" <<'JSON'
{"default": [{"type": "insecureAcceptAnything"}]}
JSON
cat >"$WORK/containerd.toml" <<TOML
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$WORK/containerd/sock"
[ttrpc]
  address = "$WORK/containerd/sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$WORK/containerd/opt"
TOML
mkdir -p "$WORK/containerd"
start_bg "$WORK/containerd.log" containerd --config "$WORK/containerd.toml"
PID_CD=$LAST_PID
CTR=(ctr --address "$WORK/containerd/sock" -n bench)
for _ in $(seq 1 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${CTR[@]}" version >/dev/null 2>&1 || die "containerd did not start"
pull() { # pull skopeo|ctr TARGET: one timed pull of demo/big:v1 (skopeo copy to a new dir:, or ctr pull, then removed); sets PULL_S
    local client=$1 t=$2 host=${URL[$2]#http://} t0 t1 left
    rm -rf "$WORK/pull"
    t0=$(now_ns)
    if [ "$client" = skopeo ]; then
        taskset -c "$CLIENT_CPUS" skopeo --policy "$WORK/policy.json" copy --quiet \
            --src-tls-verify=false "docker://$host/demo/big:v1" "dir:$WORK/pull" >>"$WORK/skopeo.log" 2>&1 ||
            die "skopeo copy via $t"
        t1=$(now_ns)
        rm -rf "$WORK/pull"
    else
        taskset -c "$CLIENT_CPUS" "${CTR[@]}" images pull --plain-http --snapshotter native \
            "$host/demo/big:v1" >>"$WORK/ctr.log" 2>&1 || die "ctr pull via $t"
        t1=$(now_ns)
        "${CTR[@]}" images rm --sync "$host/demo/big:v1" >>"$WORK/ctr.log" 2>&1 || true
        left=$("${CTR[@]}" content ls -q 2>/dev/null | wc -l)
        [ "$left" = 0 ] || die "containerd kept $left blobs after removing the image"
    fi
    PULL_S=$(python3 -c "print(($t1-$t0)/1e9)")
}
declare -A PULL_CASE=([skopeo]="skopeo copy" [ctr]="ctr pull")

# Cold pulls through a content store (issue 14). pc-cache-cold runs for
# the whole section, like pass-through pc-require, and before each of its
# pulls `portcullis cache purge` empties its store of the image (a running
# Portcullis notices a purged file and fetches it again): the pull's
# manifests and blobs are all first fetches through the store, with a
# warm process and the verdict cached, as in pc-require's pulls. For
# scale, distribution's proxy on empty storage (distproxy-cold), which
# has no purge: a new instance on a new directory before each pull. Both
# fetch the image's manifests first, as every other target's were in the
# warm-up.
cat >"$WORK/distproxy-cold.yml.in" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: @DIR@}
http: {addr: 127.0.0.1:$P_DK}
proxy: {remoteurl: http://$UP}
YAML
COLD_N=0
restart_cold() { # restart_cold pc-cache-cold|distproxy-cold: nothing of the image stored
    local t=$1 dir
    if [ "$t" = pc-cache-cold ]; then
        if [ -z "${PIDOF[$t]:-}" ]; then
            pc_config "$WORK/$t.yaml" "$P_PK" "$A_PK" REQUIRE_ATTESTATION 0s "" "$WORK/$t-store"
            start_bg "$WORK/$t.log" "$BIN" serve --config "$WORK/$t.yaml"
            PIDOF[$t]=$LAST_PID
            wait_http "${URL[$t]}/v2/" "$LAST_PID" "$t"
            # Warmed like the others (the big blob once), then emptied.
            expect_200 "${URL[$t]}/v2/demo/big/manifests/v1"
            expect_200 "${URL[$t]}/v2/demo/big/manifests/$BIG_DIGEST"
            expect_200 "${URL[$t]}/v2/demo/big/blobs/$BIG_LAYER"
            wait_stored "$A_PK" "$t"
        fi
        "$BIN" cache purge --config "$WORK/$t.yaml" "$UP/demo/big:v1" >>"$WORK/$t-purge.log" 2>&1 ||
            die "portcullis cache purge (pc-cache-cold): see $WORK/$t-purge.log"
        tail -1 "$WORK/$t-purge.log" | grep -Eq ": removed [1-9][0-9]* blobs" ||
            die "pc-cache-cold: cache purge removed nothing: $(tail -1 "$WORK/$t-purge.log")"
    else
        if [ -n "${PIDOF[$t]:-}" ]; then stop_bg "${PIDOF[$t]}"; fi
        rm -rf "$WORK/$t"-*/
        COLD_N=$((COLD_N + 1))
        dir=$WORK/$t-$COLD_N
        sed "s|@DIR@|$dir|" "$WORK/distproxy-cold.yml.in" >"$WORK/$t.yml"
        start_bg "$WORK/$t.log" docker-registry serve "$WORK/$t.yml"
        PIDOF[$t]=$LAST_PID
        wait_http "${URL[$t]}/v2/" "$LAST_PID" "$t"
    fi
    expect_200 "${URL[$t]}/v2/demo/big/manifests/v1"
    expect_200 "${URL[$t]}/v2/demo/big/manifests/$BIG_DIGEST"
}

PULL_TARGETS="direct distproxy nginx pc-allow pc-require pc-cache"
COLD_TARGETS="pc-cache-cold distproxy-cold"
# pc-cache's measured pulls are second pulls: a first one stores what the
# warm-up did not fetch (the image's config blob).
pull skopeo pc-cache
wait_stored "$A_PC" pc-cache
for rep in $(seq 1 "$PULL_REPS"); do
    log "whole-image pulls: repetition $rep/$PULL_REPS (skopeo copy, ctr pull of demo/big:v1; cold: $COLD_TARGETS)"
    for t in $PULL_TARGETS; do
        for client in skopeo ctr; do
            if [ "$t" = pc-cache ]; then
                cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
                read -r h0 m0 s0 _ <<<"$cc"
            fi
            pull "$client" "$t"
            rec pull "${PULL_CASE[$client]}" "$t" wall_s "$PULL_S"
            if [ "$t" = pc-cache ]; then
                cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
                read -r h1 m1 s1 _ <<<"$cc"
                [ "$((h1 - h0))" -ge 1 ] && [ "$m1" = "$m0" ] && [ "$((s1 - s0))" -ge "$BIG_SIZE" ] ||
                    die "${PULL_CASE[$client]} via pc-cache (second pull): not served from the store (hits +$((h1 - h0)), misses +$((m1 - m0)), bytes from the store $((s1 - s0)) of at least $BIG_SIZE)"
            fi
        done
    done
    for client in skopeo ctr; do
        for t in $COLD_TARGETS; do
            restart_cold "$t"
            if [ "$t" = pc-cache-cold ]; then
                cc=$(cache_counts "$A_PK") || die "pc-cache-cold: no /metrics"
                read -r _ m0 _ u0 <<<"$cc"
            fi
            pull "$client" "$t"
            rec pull "${PULL_CASE[$client]}" "$t" wall_s "$PULL_S"
            if [ "$t" = pc-cache-cold ]; then
                wait_stored "$A_PK" pc-cache-cold
                cc=$(cache_counts "$A_PK") || die "pc-cache-cold: no /metrics"
                read -r _ m1 _ u1 <<<"$cc"
                [ "$((m1 - m0))" -ge 1 ] && [ "$((u1 - u0))" -ge "$BIG_SIZE" ] ||
                    die "${PULL_CASE[$client]} via pc-cache-cold (empty store): the blobs did not go through the store (misses +$((m1 - m0)), bytes downloaded into it $((u1 - u0)) of at least $BIG_SIZE)"
            fi
        done
    done
done
for t in $COLD_TARGETS; do
    stop_bg "${PIDOF[$t]}"
    unset "PIDOF[$t]"
    rm -rf "$WORK/$t"-*/
done
kill -TERM "$PID_CD" 2>/dev/null || true

# Memory after everything (RSS now, for the record).
for t in direct distproxy nginx pc-allow pc-require pc-cache; do
    rec memory "RSS at end" "$t" rss_mib \
        "$(awk '/^VmRSS/{print $2/1024}' "/proc/${PIDOF[$t]}/status")"
done
# pc-cache's content store over the whole run.
cc=$(cache_counts "$A_PC") || die "pc-cache: no /metrics"
read -r h1 m1 s1 u1 <<<"$cc"
rec cache "content store counters" pc-cache hits "$h1"
rec cache "content store counters" pc-cache misses "$m1"
rec cache "content store counters" pc-cache gib_from_store "$(python3 -c "print($s1/2**30)")"
rec cache "content store counters" pc-cache gib_from_upstream "$(python3 -c "print($u1/2**30)")"

# ------------------------------------------------- 5. micro-benchmarks --
log "openssl speed ecdsap256"
taskset -c "$CLIENT_CPUS" openssl speed -seconds 1 ecdsap256 >"$WORK/openssl.out" 2>/dev/null || true
ossl=$(awk '/nistp256/ && $NF+0 > 0 {print $NF}' "$WORK/openssl.out" | tail -n1)
[ -n "$ossl" ] && rec micro "openssl speed ecdsap256 verify" openssl us "$(python3 -c "print(1e6/$ossl)")"

log "criterion (warm-up ${CRIT_WARMUP}s, measurement ${CRIT_MEASURE}s per benchmark)"
rm -rf "$TARGET_DIR/criterion"
BENCH_WARMUP_S=$CRIT_WARMUP BENCH_MEASURE_S=$CRIT_MEASURE \
    taskset -c "$CLIENT_CPUS" cargo bench --locked --quiet --bench core >"$WORK/criterion.log" 2>&1 ||
    die "cargo bench failed (see $WORK/criterion.log)"
python3 - "$TARGET_DIR/criterion" >>"$RAW" <<'PY'
import glob, json, os, sys
for est in glob.glob(os.path.join(sys.argv[1], "**", "new", "estimates.json"), recursive=True):
    d = os.path.dirname(est)
    bench = json.load(open(os.path.join(d, "benchmark.json")))
    median_ns = json.load(open(est))["median"]["point_estimate"]
    thr = bench.get("throughput") or {}
    print(f"micro\t{bench['full_id']}\tcriterion\tus\t{median_ns / 1000}")
    if "Bytes" in thr:
        print(f"micro\t{bench['full_id']}\tcriterion\tmb_s\t{thr['Bytes'] / (median_ns / 1e9) / 1e6}")
PY
log "verdict cache memory: $VERDICTS admitted images"
PORTCULLIS_BENCH_VERDICTS=$VERDICTS cargo bench --locked --quiet --bench core 2>/dev/null |
    sed -n 's/^verdict_rss //p' >"$WORK/verdicts.out" || true
if [ -s "$WORK/verdicts.out" ]; then
    eval "$(sed 's/ /;/g' "$WORK/verdicts.out")"
    rec micro "verdict cache RSS" criterion mib_per_million "$(python3 -c "print($rss_delta_kib/1024*1e6/$entries)")"
    rec micro "verdict cache RSS" criterion cached_entries "$cached"
fi

PORTCULLIS_BENCH_MOKA=$VERDICTS cargo bench --locked --quiet --bench core 2>/dev/null |
    sed -n 's/^moka_rss //p' >"$WORK/moka.out" || true
if [ -s "$WORK/moka.out" ]; then
    eval "$(sed 's/ /;/g' "$WORK/moka.out")"
    rec micro "bare moka cache RSS, same key shape" criterion mib_per_million "$(python3 -c "print($rss_delta_kib/1024*1e6/$entries)")"
    rec micro "bare moka cache RSS, same key shape" criterion cached_entries "$cached"
fi

# ---------------------------------------------------------------- report --
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "mode=$MODE"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$NCPU"
    echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
    echo "memory=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "load_start=$START_LOAD"
    echo "load_end=$END_LOAD"
    echo "server_cpus=$SERVER_CPUS"
    echo "client_cpus=$CLIENT_CPUS"
    echo "reps=$REPS"
    echo "cold_reps=$COLD_REPS"
    echo "gate_reps=$GATE_REPS"
    echo "duration_s=$DUR"
    echo "big_mib=$((BIG_SIZE >> 20))"
    echo "clk_tck=$CLK_TCK"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"
    echo "versions=$(docker-registry --version 2>/dev/null | awk '{print $NF}' | head -1) (distribution), $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $2}') (wrk), $(skopeo --version | awk '{print $3}') (skopeo), $(ctr --version | awk '{print $3}') (ctr), $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/') (redis), $(rustc --version | awk '{print $2}') (rustc)"
    echo "elapsed=$(($(date +%s) - STARTED)) s (of which building: ${BUILD_S} s)"
} >"$WORK/meta.txt"
RESULTS=${BENCH_RESULTS_DIR:-$SELF_DIR/results}
mkdir -p "$RESULTS"
OUT="$RESULTS/$(date -u +%Y-%m-%d)-$MODE.md"
python3 "$SELF_DIR/report.py" "$RAW" "$WORK/meta.txt" >"$OUT"
cp "$OUT" "$RESULTS/latest.md"
cp "$RAW" "$RESULTS/latest-raw.tsv"
cat "$OUT"
log "wrote $OUT and $RESULTS/latest.md"
