#!/usr/bin/env bash
# Portcullis quickstart: the whole job, end to end, on one machine.
#
#   scripts/quickstart.sh            run the walkthrough, then clean up
#   scripts/quickstart.sh --stay     ... and keep the registry and proxy
#                                    running until Ctrl-C, to try other clients
#   scripts/quickstart.sh --keep     keep the work directory (logs, configs,
#                                    the image) after exit
#   scripts/quickstart.sh --no-install / --no-build
#                                    skip apt / cargo (binary must exist; or
#                                    set PORTCULLIS_BIN=/path/to/portcullis)
#
# What it does, on a fresh Debian/Ubuntu machine (root or sudo for apt):
#   1. installs docker-registry (CNCF distribution), skopeo, curl, jq;
#   2. builds Portcullis (cargo build --release);
#   3. starts a throwaway upstream registry on 127.0.0.1 (port 5001 if free);
#   4. starts Portcullis in front of it (port 5000 if free);
#   5. builds a tiny OCI image by hand, offline, and pushes it upstream;
#   6. pulls it THROUGH Portcullis with skopeo and checks every byte;
#   7. shows what Portcullis refuses: pushes, and content that doesn't match
#      its digest.
# Everything lives in a temporary directory; every process it starts is
# stopped on exit, however the script ends.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")/.."
REPO_ROOT=$(pwd)

STAY=0 KEEP=0 INSTALL=1 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --stay) STAY=1 ;;
        --keep) KEEP=1 ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "quickstart.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

# ------------------------------------------------------------- narration --
if [ -t 1 ]; then
    B=$'\e[1m' DIM=$'\e[2m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'
else
    B='' DIM='' G='' R='' Y='' N=''
fi
say() { printf '    %s\n' "$*"; }
ok() { printf '    %s✔%s %s\n' "$G" "$N" "$*"; }
warn() { printf '    %s!%s %s\n' "$Y" "$N" "$*"; }
die() { printf '\n%s✘ %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
# Show a command, run it, indent its output. Fails the script if it fails.
run() {
    printf '    %s$ %s%s\n' "$DIM" "$*" "$N"
    "$@" 2>&1 | sed 's/^/      /'
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root or sudo to run: $*"
    fi
}

# ------------------------------------------------- processes and cleanup --
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-quickstart.XXXXXX")
PIDS=()
NAMES=()

start_bg() { # start_bg NAME LOGFILE CMD... ; remembers the pid for cleanup
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
}

cleanup() {
    local rc=$? i pid
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            printf '\n%s--- last lines of %s ---%s\n' "$DIM" "${f##*/}" "$N" >&2
            tail -n 8 "$f" | cut -c1-300 >&2
        done
    fi
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        for _ in $(seq 1 50); do # up to 5 s for a graceful exit
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        printf '    %sstopped %s (pid %s)%s\n' "$DIM" "${NAMES[$i]}" "$pid" "$N"
    done
    if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
        printf '    %swork directory kept: %s%s\n' "$DIM" "$WORK" "$N"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
# Ctrl-C or SIGTERM: a failure mid-walkthrough, the normal way out with --stay.
STAYING=0
on_signal() { if [ "$STAYING" = 1 ]; then exit 0; else exit "$1"; fi; }
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Is something already listening on 127.0.0.1:PORT?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port PREFERRED [AVOID]: PREFERRED if free, else the next free one.
pick_port() {
    local p=$1 avoid=${2:-0}
    while [ "$p" -lt $(($1 + 200)) ]; do
        if [ "$p" != "$avoid" ] && ! port_busy "$p"; then
            echo "$p"
            return
        fi
        p=$((p + 1))
    done
    die "no free port found near $1"
}

# wait_http URL PID NAME: poll until URL answers 2xx, the process dies, or 30 s.
wait_http() {
    local url=$1 pid=$2 name=$3 i
    for i in $(seq 1 300); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
        sleep 0.1
    done
    die "$name did not answer $url within 30 s"
}

# The proxy's log without colour codes.
proxy_log() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/portcullis.log"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { wc -c <"$1" | tr -d ' '; }

# Keep skopeo away from the user's own settings: no mirrors from
# /etc/containers/registries.conf, no stored credentials, and an explicit
# client-side signature policy. (Trust is Portcullis' job, on the server side.)
# Not exported: docker-registry reads REGISTRY_* variables as configuration.
skopeo() {
    CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" REGISTRY_AUTH_FILE="$WORK/auth.json" \
        command skopeo --policy "$WORK/policy.json" "$@"
}

# ================================================================= steps ==

step_install() {
    local need=() cmd
    for cmd in docker-registry:docker-registry skopeo:skopeo curl:curl jq:jq \
               sha256sum:coreutils gzip:gzip tar:tar; do
        command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
    done
    if [ "$INSTALL" = 0 ]; then
        [ "${#need[@]}" -eq 0 ] || die "missing: ${need[*]} (rerun without --no-install)"
        ok "skipped (--no-install)"
        return
    fi
    if [ "${#need[@]}" -eq 0 ]; then
        ok "docker-registry, skopeo, curl and jq are already installed"
        return
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "no apt-get: please install ${need[*]} yourself, then rerun with --no-install"
    say "installing: ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        ca-certificates "${need[@]}" >/dev/null
    ok "installed ${need[*]}"
}

find_cargo() {
    local d
    for d in "${CARGO_HOME:+$CARGO_HOME/bin}" "${HOME:-/root}/.cargo/bin" /usr/local/cargo/bin; do
        if [ -n "$d" ] && [ -x "$d/cargo" ]; then PATH="$d:$PATH"; fi
    done
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install a Rust toolchain >= 1.80 (rustup), then rerun"
}

step_build() {
    if [ -n "${PORTCULLIS_BIN:-}" ]; then
        BIN=$PORTCULLIS_BIN
    else
        BIN="$REPO_ROOT/target/release/portcullis"
        if [ "$BUILD" = 1 ]; then
            find_cargo
            say "the first build compiles all dependencies: a few minutes on 2 cores"
            run cargo build --release
        fi
    fi
    [ -x "$BIN" ] || die "no portcullis binary at $BIN"
    ok "binary: ${BIN#"$REPO_ROOT"/}"
}

step_upstream() {
    UP_PORT=$(pick_port 5001)
    [ "$UP_PORT" = 5001 ] || warn "port 5001 is busy, using $UP_PORT"
    UPSTREAM="127.0.0.1:$UP_PORT"
    mkdir -p "$WORK/registry-data"
    cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
http:
  addr: $UPSTREAM
YAML
    say "a plain CNCF distribution registry, standing in for your real one"
    say "(Docker Hub, GHCR, Harbor, ...); its storage is $WORK/registry-data"
    printf '    %s$ docker-registry serve %s%s\n' "$DIM" "$WORK/registry.yml" "$N"
    start_bg "upstream registry" "$WORK/registry.log" docker-registry serve "$WORK/registry.yml"
    wait_http "http://$UPSTREAM/v2/" "${PIDS[-1]}" "docker-registry"
    ok "upstream registry answering at http://$UPSTREAM/v2/"
}

step_proxy() {
    PX_PORT=$(pick_port 5000 "$UP_PORT")
    [ "$PX_PORT" = 5000 ] || warn "port 5000 is busy (Debian's own docker-registry service?), using $PX_PORT"
    PROXY="127.0.0.1:$PX_PORT"
    cat >"$WORK/portcullis.yaml" <<YAML
# Written by scripts/quickstart.sh: Portcullis in front of one local registry.
listen: $PROXY
upstreams:
  - registry: $UPSTREAM          # the name images, policies and signatures use
    url: http://$UPSTREAM        # where to reach it (plain HTTP on loopback)
    prefix: local                # also reachable as /v2/local/<repository>
    default: true                # requests without a prefix go here
timeouts: {connect: 5s, read: 30s, shutdown: 5s}
YAML
    sed 's/^/      /' "$WORK/portcullis.yaml"
    run "$BIN" check --config "$WORK/portcullis.yaml"
    printf '    %s$ portcullis serve --config %s%s\n' "$DIM" "$WORK/portcullis.yaml" "$N"
    start_bg "portcullis" "$WORK/portcullis.log" \
        "$BIN" serve --config "$WORK/portcullis.yaml" --log-format text
    wait_http "http://$PROXY/healthz" "${PIDS[-1]}" "portcullis"
    ok "Portcullis listening at http://$PROXY (health: /healthz, readiness: /readyz)"
}

step_image() {
    local src="$WORK/image-src" oci="$WORK/image-oci"
    local blobs="$oci/blobs/sha256" arch
    mkdir -p "$src/rootfs" "$blobs"
    case "$(uname -m)" in
        x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; armv7l) arch=arm ;;
        *) arch=$(uname -m) ;;
    esac
    say "no internet needed: one layer holding one file, a config, a manifest,"
    say "laid out as an OCI image layout directory (what 'oci:' means to skopeo)"
    printf 'Hello from an image that came through Portcullis.\n' >"$src/rootfs/hello.txt"

    # Layer: a reproducible tar (fixed owner and time), gzip without a name/time.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00:00Z' \
        -C "$src/rootfs" -cf "$src/layer.tar" hello.txt
    gzip -n -9 -c "$src/layer.tar" >"$src/layer.tar.gz"
    local diff_id layer_hex layer_size
    diff_id=$(sha256_of "$src/layer.tar")
    layer_hex=$(sha256_of "$src/layer.tar.gz")
    layer_size=$(size_of "$src/layer.tar.gz")
    cp "$src/layer.tar.gz" "$blobs/$layer_hex"

    # Image config: platform, and the uncompressed layer's digest (diff_id).
    printf '{"created":"2024-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Labels":{"org.opencontainers.image.title":"portcullis-quickstart"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2024-01-01T00:00:00Z","created_by":"scripts/quickstart.sh"}]}' \
        "$arch" "$diff_id" >"$src/config.json"
    local config_hex config_size
    config_hex=$(sha256_of "$src/config.json")
    config_size=$(size_of "$src/config.json")
    cp "$src/config.json" "$blobs/$config_hex"

    # Manifest: points at the config and the layer by digest and size.
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config_hex" "$config_size" "$layer_hex" "$layer_size" >"$src/manifest.json"
    MANIFEST_DIGEST="sha256:$(sha256_of "$src/manifest.json")"
    local manifest_size
    manifest_size=$(size_of "$src/manifest.json")
    cp "$src/manifest.json" "$blobs/${MANIFEST_DIGEST#sha256:}"

    # Layout: index.json names the manifest "v1"; oci-layout marks the format.
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
        "$MANIFEST_DIGEST" "$manifest_size" >"$oci/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"

    LAYER_DIGEST="sha256:$layer_hex"
    LAYER_SIZE=$layer_size
    say "manifest  $MANIFEST_DIGEST"
    say "config    sha256:$config_hex ($arch/linux)"
    say "layer     $LAYER_DIGEST ($layer_size bytes, hello.txt)"
    ok "image layout at $oci"
}

step_push() {
    printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$WORK/policy.json"
    printf 'unqualified-search-registries = []\n' >"$WORK/registries.conf"
    printf '{"auths":{}}\n' >"$WORK/auth.json"
    say "straight to the upstream: Portcullis serves pulls only"
    run skopeo copy --dest-tls-verify=false \
        "oci:$WORK/image-oci:v1" "docker://$UPSTREAM/demo/app:v1"
    ok "pushed $UPSTREAM/demo/app:v1"
}

step_pull() {
    say "the client talks only to Portcullis at $PROXY; Portcullis fetches from"
    say "$UPSTREAM, checks each manifest and blob against its sha256, and passes it on"
    local inspect
    printf '    %s$ skopeo inspect --tls-verify=false docker://%s/demo/app:v1%s\n' "$DIM" "$PROXY" "$N"
    inspect=$(skopeo inspect --tls-verify=false "docker://$PROXY/demo/app:v1")
    jq '{Name, Digest, Architecture, Os, Layers}' <<<"$inspect" | sed 's/^/      /'
    [ "$(jq -r .Digest <<<"$inspect")" = "$MANIFEST_DIGEST" ] ||
        die "digest through the proxy differs from the one we built"
    ok "same manifest digest as the image we built"

    rm -rf "$WORK/pulled"
    run skopeo copy --src-tls-verify=false \
        "docker://$PROXY/demo/app:v1" "dir:$WORK/pulled"
    [ "sha256:$(sha256_of "$WORK/pulled/manifest.json")" = "$MANIFEST_DIGEST" ] ||
        die "pulled manifest does not hash to $MANIFEST_DIGEST"
    local layer="$WORK/pulled/${LAYER_DIGEST#sha256:}"
    [ "sha256:$(sha256_of "$layer")" = "$LAYER_DIGEST" ] || die "pulled layer is not $LAYER_DIGEST"
    ok "pulled manifest and layer hash to the digests we built"
    say "hello.txt from the pulled layer:"
    tar -xzOf "$layer" hello.txt | sed 's/^/      /'

    say "the same image through the 'local' path prefix (raw HTTP):"
    printf '    %s$ curl -sSI -H "Accept: application/vnd.oci.image.manifest.v1+json" http://%s/v2/local/demo/app/manifests/v1%s\n' "$DIM" "$PROXY" "$N"
    curl -sSI -H "Accept: application/vnd.oci.image.manifest.v1+json" \
        "http://$PROXY/v2/local/demo/app/manifests/v1" |
        tr -d '\r' | grep -iE '^(HTTP/|docker-content-digest|content-type|content-length)' |
        sed 's/^/      /'
}

step_refusals() {
    say "a push through the proxy (it is pull-only):"
    printf '    %s$ curl -sS -X POST http://%s/v2/demo/app/blobs/uploads/%s\n' "$DIM" "$PROXY" "$N"
    local code
    code=$(curl -sS -o "$WORK/push-answer.json" -w '%{http_code}' \
        -X POST "http://$PROXY/v2/demo/app/blobs/uploads/")
    printf '      HTTP %s ' "$code"
    jq -c . "$WORK/push-answer.json" 2>/dev/null || cat "$WORK/push-answer.json"
    [ "$code" = 405 ] || die "expected 405 for a push, got $code"
    ok "refused with the OCI error envelope (405 UNSUPPORTED)"

    say "now tamper with the layer inside the upstream's storage (same size,"
    say "different bytes), as a compromised registry or mirror might:"
    local data
    data=$(find "$WORK/registry-data" -path "*/blobs/sha256/*/${LAYER_DIGEST#sha256:}/data")
    [ -f "$data" ] || die "could not find the layer in the registry storage"
    # Overwrite the first 16 bytes; the registry still serves it under the old digest.
    cp "$data" "$WORK/layer.orig"
    printf 'TAMPERED-BYTES!!' | dd of="$data" bs=1 seek=0 count=16 conv=notrunc status=none
    printf '    %s$ curl -sS -o layer http://%s/v2/demo/app/blobs/%s%s\n' "$DIM" "$PROXY" "$LAYER_DIGEST" "$N"
    local rc=0
    curl -sS -o "$WORK/tampered-layer" "http://$PROXY/v2/demo/app/blobs/$LAYER_DIGEST" \
        2>"$WORK/curl-tampered.err" || rc=$?
    sed 's/^/      /' "$WORK/curl-tampered.err"
    local why
    why=$(proxy_log | grep -E ' (WARN|ERROR) ' | grep -F "$LAYER_DIGEST" | tail -n 1 |
        sed 's/^[^}]*}: [a-z_:]*: //; s/sha256:\([0-9a-f]\{12\}\)[0-9a-f]*/sha256:\1…/g')
    [ -z "$why" ] || say "Portcullis log: $why"
    if [ "$rc" -ne 0 ]; then
        ok "Portcullis aborted the transfer (curl exit $rc): the client never gets a complete, wrong blob"
    elif [ "$(size_of "$WORK/tampered-layer")" -lt "$LAYER_SIZE" ]; then
        ok "Portcullis cut the transfer short: the client never gets a complete, wrong blob"
    else
        die "the tampered layer was served in full"
    fi
    cp "$WORK/layer.orig" "$data" # put the genuine bytes back
}

# Trust enforcement (the next milestone) slots in after "pull": create a key
# for an attestor ("our build system"), sign demo/app:v1, switch the policy's
# default rule to REQUIRE_ATTESTATION, then show an unsigned image "from
# elsewhere" refused with a message naming the rule and the attestor.
STEPS=(
    "install|Install what the walkthrough needs"
    "build|Build Portcullis"
    "upstream|Start a local upstream registry"
    "proxy|Start Portcullis in front of it"
    "image|Make a small OCI image, offline"
    "push|Push it to the upstream registry"
    "pull|Pull it through Portcullis"
    "refusals|What Portcullis refuses"
)

T0=$SECONDS
printf '%sPortcullis quickstart%s  %s(work dir: %s)%s\n' "$B" "$N" "$DIM" "$WORK" "$N"
for i in "${!STEPS[@]}"; do
    printf '\n%s[%d/%d] %s%s\n' "$B" "$((i + 1))" "${#STEPS[@]}" "${STEPS[$i]#*|}" "$N"
    "step_${STEPS[$i]%%|*}"
done

printf '\n%sDone in %ss.%s A registry client pulled an image through Portcullis,\n' "$B" "$((SECONDS - T0))" "$N"
printf 'byte for byte, and Portcullis refused a push and a tampered layer.\n'
printf '\nWhat Portcullis logged (one line per request, with the canonical reference):\n'
proxy_log | sed -n 's/^.* method=\([A-Z]*\) path=\([^ ]*\) .*reference="\([^"]*\)".*: response status=\([0-9]*\) bytes=\([0-9]*\).*outcome=\([A-Za-z]*\).*$/  \1 \3  \2  -> \4, \5 bytes, \6/p' |
    sed 's/sha256:\([0-9a-f]\{12\}\)[0-9a-f]*/sha256:\1…/' || true
printf '%s(full log: %s/portcullis.log; run with --keep to keep it)%s\n' "$DIM" "$WORK" "$N"

if [ "$STAY" = 1 ]; then
    cat <<EOF

Still running (Ctrl-C stops both):
  upstream   http://$UPSTREAM   (holds demo/app:v1, genuine bytes restored)
  portcullis http://$PROXY
Try:
  skopeo inspect --tls-verify=false docker://$PROXY/demo/app:v1
  podman pull --tls-verify=false $PROXY/demo/app:v1
EOF
    STAYING=1
    wait
fi
