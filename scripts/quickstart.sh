#!/usr/bin/env bash
# Portcullis quickstart: the whole job, end to end, on one machine.
#
#   scripts/quickstart.sh            run the walkthrough, then clean up
#   scripts/quickstart.sh --stay     ... and keep the registry and proxy
#                                    running until Ctrl-C, to try other clients
#   scripts/quickstart.sh --keep     keep the work directory (logs, configs,
#                                    the key, the images) after exit
#   scripts/quickstart.sh --no-install / --no-build
#                                    skip apt / cargo (binary must exist; or
#                                    set PORTCULLIS_BIN=/path/to/portcullis)
#
# What it does, on a fresh Debian/Ubuntu machine (root or sudo for apt):
# it replays Google Cloud's Binary Authorization walkthrough locally.
#   - installs docker-registry (CNCF distribution), skopeo, curl, jq, and
#     builds Portcullis (cargo build --release);
#   - starts a throwaway upstream registry on 127.0.0.1 (port 5001 if free);
#   - creates the key of an attestor, built-by-ci, playing your build system;
#   - builds two tiny OCI images offline: "our build" (demo/app:v1), which it
#     pushes and signs with `portcullis sign`, and one "from elsewhere"
#     (elsewhere/sample:v1), pushed unsigned;
#   - starts Portcullis in front of the registry with NO policy: both pull;
#   - edits the policy (REQUIRE_ATTESTATION by built-by-ci) and reloads it
#     with SIGHUP, no restart;
#   - pulls again with skopeo: our build pulls, the image from elsewhere is
#     refused with a message naming the rule and the attestor (also shown by
#     `portcullis verify` and in the HTTP status line);
#   - shows what else Portcullis refuses (pushes, a layer tampered with in
#     the registry) and the refusals in Portcullis' log.
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
        command skopeo --policy "$WORK/skopeo-policy.json" "$@"
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

# Abbreviate sha256 digests in narration (the full ones are in the logs).
short() { sed 's/sha256:\([0-9a-f]\{12\}\)[0-9a-f]*/sha256:\1…/g'; }

# try CMD...: like run, but digests are abbreviated and CMD's exit status is
# returned instead of failing the script (for commands expected to refuse).
# CMD's output is also left in $WORK/out.
try() {
    printf '    %s$ %s%s\n' "$DIM" "$*" "$N"
    local rc=0
    "$@" >"$WORK/out" 2>&1 || rc=$?
    short <"$WORK/out" | sed 's/^/      /'
    return "$rc"
}

OCI_MANIFEST="application/vnd.oci.image.manifest.v1+json"

# make_image DIR TITLE TEXT: an OCI image layout at DIR, tagged v1: one layer
# holding hello.txt (= TEXT), a config, a manifest. Reproducible: same input,
# same digests. Sets IMG_DIGEST (manifest), IMG_LAYER and IMG_LAYER_SIZE.
make_image() {
    local oci=$1 title=$2 text=$3
    local src="$oci.src" blobs="$oci/blobs/sha256" arch
    mkdir -p "$src/rootfs" "$blobs"
    case "$(uname -m)" in
        x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; armv7l) arch=arm ;;
        *) arch=$(uname -m) ;;
    esac
    printf '%s\n' "$text" >"$src/rootfs/hello.txt"

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
    printf '{"created":"2024-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Labels":{"org.opencontainers.image.title":"%s"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2024-01-01T00:00:00Z","created_by":"scripts/quickstart.sh"}]}' \
        "$arch" "$title" "$diff_id" >"$src/config.json"
    local config_hex config_size
    config_hex=$(sha256_of "$src/config.json")
    config_size=$(size_of "$src/config.json")
    cp "$src/config.json" "$blobs/$config_hex"

    # Manifest: points at the config and the layer by digest and size.
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$OCI_MANIFEST" "$config_hex" "$config_size" "$layer_hex" "$layer_size" >"$src/manifest.json"
    local manifest_hex manifest_size
    manifest_hex=$(sha256_of "$src/manifest.json")
    manifest_size=$(size_of "$src/manifest.json")
    cp "$src/manifest.json" "$blobs/$manifest_hex"

    # Layout: index.json names the manifest "v1"; oci-layout marks the format.
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
        "$OCI_MANIFEST" "$manifest_hex" "$manifest_size" >"$oci/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"

    IMG_DIGEST="sha256:$manifest_hex"
    IMG_LAYER="sha256:$layer_hex"
    IMG_LAYER_SIZE=$layer_size
}

# write_config [EXTRA_YAML_FILE]: the proxy's configuration, optionally with
# a policy section appended. Written to a temporary file and renamed, so
# Portcullis' file watcher never reads half a file.
write_config() {
    local dest=$1 extra=${2:-}
    cat >"$dest.tmp" <<YAML
# Written by scripts/quickstart.sh: Portcullis in front of one local registry.
listen: $PROXY
upstreams:
  - registry: $UPSTREAM          # the name images, policies and signatures use
    url: http://$UPSTREAM        # where to reach it (plain HTTP on loopback)
    prefix: local                # also reachable as /v2/local/<repository>
    default: true                # requests without a prefix go here
timeouts: {connect: 5s, read: 30s, shutdown: 5s}
admin: {listen: $ADMIN}          # /metrics, the dashboard at /-/ui, /healthz
audit: {path: $WORK/audit.jsonl, fsync: always}   # one JSON line per decision
YAML
    if [ -n "$extra" ]; then cat "$extra" >>"$dest.tmp"; fi
    mv "$dest.tmp" "$dest"
}

step_attestor() {
    say "In Binary Authorization the build system has an attestor: a named"
    say "identity holding a key, which signs every image it builds. Here the"
    say "attestor is called built-by-ci and its key is a file (in real life the"
    say "private key lives in your CI's secret store)."
    mkdir -p "$WORK/ci"
    run "$BIN" keygen --key "$WORK/ci/built-by-ci.key" --pub "$WORK/ci/built-by-ci.pub"
    say "the public half, which Portcullis will trust:"
    sed 's/^/      /' "$WORK/ci/built-by-ci.pub"
    ok "attestor key pair (ECDSA P-256; private key mode $(stat -c %a "$WORK/ci/built-by-ci.key"))"
}

step_images() {
    say "no internet needed: each image is one layer holding hello.txt, a config"
    say "and a manifest, laid out as an OCI image layout directory (skopeo's 'oci:')"
    make_image "$WORK/ours-oci" "portcullis-quickstart" \
        "Hello from our own build, signed by built-by-ci."
    MANIFEST_DIGEST=$IMG_DIGEST LAYER_DIGEST=$IMG_LAYER LAYER_SIZE=$IMG_LAYER_SIZE
    make_image "$WORK/elsewhere-oci" "public-sample" \
        "Hello from a public sample image that our build system never saw."
    OTHER_DIGEST=$IMG_DIGEST OTHER_LAYER=$IMG_LAYER
    say "our build       manifest $MANIFEST_DIGEST"
    say "                layer    $LAYER_DIGEST ($LAYER_SIZE bytes)"
    say "from elsewhere  manifest $OTHER_DIGEST"
    say "                layer    $OTHER_LAYER"
    ok "two image layouts in $WORK"
}

step_push() {
    say "straight to the upstream registry (Portcullis serves pulls only)"
    run skopeo copy --quiet --dest-tls-verify=false \
        "oci:$WORK/ours-oci:v1" "docker://$UPSTREAM/demo/app:v1"
    run skopeo copy --quiet --dest-tls-verify=false \
        "oci:$WORK/elsewhere-oci:v1" "docker://$UPSTREAM/elsewhere/sample:v1"
    ok "pushed $UPSTREAM/demo/app:v1 and $UPSTREAM/elsewhere/sample:v1"

    say "the build system signs what it built. 'portcullis sign' resolves the tag"
    say "to its digest and pushes a signature the way 'cosign sign --key' does:"
    run "$BIN" sign "$UPSTREAM/demo/app:v1" --key "$WORK/ci/built-by-ci.key" \
        --insecure --annotation built-by=quickstart
    local sig_tag="sha256-${MANIFEST_DIGEST#sha256:}.sig" payload
    say "the signature is a tag next to the image:"
    printf '    %s$ curl -s http://%s/v2/demo/app/tags/list%s\n' "$DIM" "$UPSTREAM" "$N"
    curl -fsS "http://$UPSTREAM/v2/demo/app/tags/list" | jq -c . | sed 's/^/      /'
    payload=$(curl -fsS -H "Accept: $OCI_MANIFEST" \
        "http://$UPSTREAM/v2/demo/app/manifests/$sig_tag" | jq -r '.layers[0].digest')
    say "and what it signs records the image's digest and where it lives:"
    curl -fsS "http://$UPSTREAM/v2/demo/app/blobs/$payload" | jq -c . | short | sed 's/^/      /'
    ok "our build is signed by built-by-ci; the image from elsewhere is not signed at all"
}

step_proxy() {
    PX_PORT=$(pick_port 5000 "$UP_PORT")
    [ "$PX_PORT" = 5000 ] || warn "port 5000 is busy (Debian's own docker-registry service?), using $PX_PORT"
    PROXY="127.0.0.1:$PX_PORT"
    ADMIN_PORT=$(pick_port 9090 "$UP_PORT")
    [ "$ADMIN_PORT" != "$PX_PORT" ] || ADMIN_PORT=$(pick_port $((PX_PORT + 1)) "$UP_PORT")
    ADMIN="127.0.0.1:$ADMIN_PORT"
    CONFIG="$WORK/portcullis.yaml"
    say "Binary Authorization starts out as 'allow all', and so does Portcullis"
    say "without a policy: first see what that means."
    write_config "$CONFIG"
    sed 's/^/      /' "$CONFIG"
    run "$BIN" check --config "$CONFIG"
    printf '    %s$ portcullis serve --config %s%s\n' "$DIM" "$CONFIG" "$N"
    start_bg "portcullis" "$WORK/portcullis.log" \
        "$BIN" serve --config "$CONFIG" --log-format text
    PROXY_PID=${PIDS[-1]}
    wait_http "http://$ADMIN/healthz" "$PROXY_PID" "portcullis"
    say "its startup log says so too:"
    proxy_log | grep -m1 'NO POLICY' | sed 's/^[^ ]* *//; s/ portcullis: / /; s/^/      /'
    ok "Portcullis listening at http://$PROXY; operators' endpoints at http://$ADMIN (/-/ui, /metrics, /healthz)"
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
    run skopeo copy --quiet --src-tls-verify=false \
        "docker://$PROXY/demo/app:v1" "dir:$WORK/pulled"
    [ "sha256:$(sha256_of "$WORK/pulled/manifest.json")" = "$MANIFEST_DIGEST" ] ||
        die "pulled manifest does not hash to $MANIFEST_DIGEST"
    local layer="$WORK/pulled/${LAYER_DIGEST#sha256:}"
    [ "sha256:$(sha256_of "$layer")" = "$LAYER_DIGEST" ] || die "pulled layer is not $LAYER_DIGEST"
    ok "pulled manifest and layer hash to the digests we built"

    run skopeo copy --quiet --src-tls-verify=false \
        "docker://$PROXY/elsewhere/sample:v1" "dir:$WORK/pulled-elsewhere"
    say "hello.txt from the image from elsewhere:"
    tar -xzOf "$WORK/pulled-elsewhere/${OTHER_LAYER#sha256:}" hello.txt | sed 's/^/      /'
    warn "without a policy, whatever is in the registry reaches your machines,"
    warn "signed or not: anyone who can push there decides what you run"
}

step_policy() {
    say "the default rule goes from 'allow all' to REQUIRE_ATTESTATION, and"
    say "built-by-ci becomes a required attestor. Field names and values are"
    say "Binary Authorization's own: an exported BinAuthz policy loads unchanged."
    cat >"$WORK/policy-section.yaml" <<YAML
policy:
  defaultAdmissionRule:
    evaluationMode: REQUIRE_ATTESTATION          # was: no policy (ALWAYS_ALLOW)
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    requireAttestationsBy: [built-by-ci]
attestors:
  - name: built-by-ci                            # our build system
    publicKeys:
      - id: built-by-ci-1
        pkixPublicKey:
          signatureAlgorithm: ECDSA_P256_SHA256
          publicKeyPem: |
$(sed 's/^/            /' "$WORK/ci/built-by-ci.pub")
YAML
    write_config "$WORK/portcullis.yaml.new" "$WORK/policy-section.yaml"
    say "appended to a copy of the configuration, portcullis.yaml.new:"
    sed 's/^/      /' "$WORK/policy-section.yaml"
    say "check it before applying it (exit 1, naming the field, if it is wrong):"
    run "$BIN" check --config "$WORK/portcullis.yaml.new"
    REVISION=$("$BIN" check --config "$WORK/portcullis.yaml.new" |
        sed -n 's/^policy revision \([0-9a-f]*\).*/\1/p')
    [ -n "$REVISION" ] || die "portcullis check printed no policy revision"
    ok "valid: policy revision $REVISION; the attestor built-by-ci exists, with its key"
}

step_apply() {
    say "put the new file in place and tell Portcullis: SIGHUP reloads the policy"
    say "without a restart (it would also notice the file change within a second)"
    printf '    %s$ mv portcullis.yaml.new portcullis.yaml && kill -HUP %s%s\n' "$DIM" "$PROXY_PID" "$N"
    mv "$WORK/portcullis.yaml.new" "$CONFIG"
    kill -HUP "$PROXY_PID"
    local i line=''
    for i in $(seq 1 100); do
        line=$(proxy_log | grep -F 'policy reloaded' | grep -F "revision=$REVISION" | tail -n 1 || true)
        [ -z "$line" ] || break
        if proxy_log | grep -qF 'policy reload failed'; then
            die "reload failed: $(proxy_log | grep -F 'policy reload failed' | tail -n 1)"
        fi
        sleep 0.1
    done
    [ -n "$line" ] || die "Portcullis did not log 'policy reloaded' for revision $REVISION within 10 s"
    say "Portcullis' log:"
    sed 's/^[^ ]* *//; s/ portcullis::reload: / /; s/^/      /' <<<"$line"
    ok "policy $REVISION in force; verdicts cached under the old policy are gone"
}

step_trusted() {
    say "the walkthrough deploys to Cloud Run; here skopeo pulls through Portcullis,"
    say "as any runtime would. First our build:"
    rm -rf "$WORK/pulled"
    run skopeo copy --quiet --src-tls-verify=false \
        "docker://$PROXY/demo/app:v1" "dir:$WORK/pulled"
    [ "sha256:$(sha256_of "$WORK/pulled/manifest.json")" = "$MANIFEST_DIGEST" ] ||
        die "pulled manifest does not hash to $MANIFEST_DIGEST"
    ok "our signed build pulls, byte for byte"
    say "hello.txt from the pulled layer:"
    tar -xzOf "$WORK/pulled/${LAYER_DIGEST#sha256:}" hello.txt | sed 's/^/      /'
    say "'portcullis verify' explains a decision, against the live registry:"
    local rc=0
    try "$BIN" verify "$UPSTREAM/demo/app:v1" --config "$CONFIG" || rc=$?
    [ "$rc" = 0 ] || die "portcullis verify exited $rc for our signed build, expected 0 (allow)"
    ok "ALLOW (exit 0): built-by-ci's signature verified"
}

step_rejected() {
    say "now deploy the image from elsewhere, as a runtime would pull it:"
    local rc=0
    try skopeo copy --src-tls-verify=false \
        "docker://$PROXY/elsewhere/sample:v1" "dir:$WORK/pulled-elsewhere-2" || rc=$?
    [ "$rc" -ne 0 ] || die "the image from elsewhere was served"
    grep -qF 'denied by default admission rule: attestor built-by-ci' "$WORK/out" ||
        die "skopeo's output does not show the policy message"
    ok "refused, and skopeo shows the rule and the attestor"

    say "'portcullis verify' tells the whole story (exit 1 = deny):"
    rc=0
    try "$BIN" verify "$UPSTREAM/elsewhere/sample:v1" --config "$CONFIG" || rc=$?
    [ "$rc" = 1 ] || die "portcullis verify exited $rc, expected 1 (deny)"
    ok "DENY (exit 1)"

    say "containerd (and so kubelet) show only the HTTP status line, so the"
    say "reason is in the status line too:"
    printf '    %s$ curl -sI -H "Accept: %s" http://%s/v2/elsewhere/sample/manifests/v1%s\n' \
        "$DIM" "$OCI_MANIFEST" "$PROXY" "$N"
    local status
    status=$(curl -sSI -H "Accept: $OCI_MANIFEST" \
        "http://$PROXY/v2/elsewhere/sample/manifests/v1" | head -n 1 | tr -d '\r')
    say "  $status"
    case "$status" in
        *"403 Forbidden: denied by policy: attestor built-by-ci"*) ;;
        *) die "expected a 403 whose reason names the attestor, got: $status" ;;
    esac
    ok "403, with the reason in the status line"

    say "and the image's layers can't be fetched around the manifest check:"
    printf '    %s$ curl -s http://%s/v2/elsewhere/sample/blobs/%s%s\n' "$DIM" "$PROXY" "$OTHER_LAYER" "$N"
    local code
    code=$(curl -sS -o "$WORK/blob-answer.json" -w '%{http_code}' \
        "http://$PROXY/v2/elsewhere/sample/blobs/$OTHER_LAYER")
    printf '      HTTP %s ' "$code"
    jq -r '.errors[0] | "\(.code): \(.message)"' "$WORK/blob-answer.json" 2>/dev/null | short ||
        cat "$WORK/blob-answer.json"
    [ "$code" = 403 ] || die "expected 403 for a blob of a refused image, got $code"
    ok "403 DENIED: a blob is served only as part of an admitted image"
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

    say "a signature covers the manifest, and the manifest names each layer by"
    say "digest. Tamper with our signed image's layer inside the registry's"
    say "storage (same size, different bytes), as a compromised registry might:"
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
        sed 's/^[^}]*}: [a-z_:]*: //' | short)
    [ -z "$why" ] || say "Portcullis log: $why"
    cp "$WORK/layer.orig" "$data" # put the genuine bytes back
    if [ "$rc" -ne 0 ]; then
        ok "Portcullis aborted the transfer (curl exit $rc): the client never gets a complete, wrong blob"
    elif [ "$(size_of "$WORK/tampered-layer")" -lt "$LAYER_SIZE" ]; then
        ok "Portcullis cut the transfer short: the client never gets a complete, wrong blob"
    else
        die "the tampered layer was served in full"
    fi
}

step_log() {
    say "every decision is one JSON line in the audit trail (audit.jsonl):"
    printf '    %s$ jq -c "{verdict, reference, tag, rule, reason}" audit.jsonl%s\n' "$DIM" "$N"
    jq -c '{verdict, reference, tag, rule, reason}' "$WORK/audit.jsonl" | short | sed 's/^/      /'
    jq -e 'select(.verdict == "deny" and (.reference | endswith("elsewhere/sample")))' \
        "$WORK/audit.jsonl" >/dev/null || die "the refusal is not in the audit trail"
    ok "the refusal of elsewhere/sample is on record, with the rule and the attestor"
    say "and counted on /metrics (for Prometheus and alerting):"
    printf '    %s$ curl -s http://%s/metrics | grep decisions_total%s\n' "$DIM" "$ADMIN" "$N"
    curl -s "http://$ADMIN/metrics" | grep '^portcullis_decisions_total' | sed 's/^/      /'
    curl -s "http://$ADMIN/metrics" | grep -q '^portcullis_decisions_total{verdict="deny"' ||
        die "no deny counter on /metrics"
    ok "live dashboard of recent decisions: http://$ADMIN/-/ui"
}

# The walkthrough. Binary Authorization's own steps, for comparison:
# 1 enable the policy engine, 2 build and sign with the build system's
# attestor, 3 check the attestor exists, 4 edit the policy, 5 apply it,
# 6 a deploy of an image from elsewhere is refused; our build still deploys.
STEPS=(
    "install|Install what the walkthrough needs"
    "build|Build Portcullis"
    "upstream|Start a local upstream registry"
    "attestor|Create the build system's attestor key: built-by-ci"
    "images|Make two small OCI images, offline: our build, and one from elsewhere"
    "push|Push both; sign our build, as the build system would"
    "proxy|Start Portcullis in front of the registry, with no policy yet"
    "pull|Without a policy, both images pull"
    "policy|Edit the policy: require an attestation by built-by-ci"
    "apply|Apply the policy, without a restart"
    "trusted|Our signed build still pulls"
    "rejected|The image from elsewhere is refused"
    "refusals|What else Portcullis refuses"
    "log|The refusal in the audit trail and on /metrics"
)

# Client settings for skopeo (see the skopeo wrapper above).
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$WORK/skopeo-policy.json"
printf 'unqualified-search-registries = []\n' >"$WORK/registries.conf"
printf '{"auths":{}}\n' >"$WORK/auth.json"

T0=$SECONDS
printf '%sPortcullis quickstart%s  %s(work dir: %s)%s\n' "$B" "$N" "$DIM" "$WORK" "$N"
for i in "${!STEPS[@]}"; do
    printf '\n%s[%d/%d] %s%s\n' "$B" "$((i + 1))" "${#STEPS[@]}" "${STEPS[$i]#*|}" "$N"
    "step_${STEPS[$i]%%|*}"
done

printf '\n%sDone in %ss.%s Binary Authorization'"'"'s walkthrough, locally: with no policy,\n' "$B" "$((SECONDS - T0))" "$N"
printf 'both images pulled; with REQUIRE_ATTESTATION by built-by-ci, our signed build\n'
printf 'pulled and the image from elsewhere was refused with a message naming the\n'
printf 'rule and the attestor. Portcullis also refused a push and a tampered layer.\n'
printf '%s(full log: %s/portcullis.log; run with --keep to keep it)%s\n' "$DIM" "$WORK" "$N"

if [ "$STAY" = 1 ]; then
    cat <<EOF

Still running, with the policy in force (Ctrl-C stops both):
  upstream   http://$UPSTREAM   (demo/app:v1 signed, elsewhere/sample:v1 not)
  portcullis http://$PROXY   (config: $CONFIG, pid $PROXY_PID)
  dashboard  http://$ADMIN/-/ui   (metrics: http://$ADMIN/metrics)
Try:
  podman pull --tls-verify=false $PROXY/demo/app:v1            # allowed
  podman pull --tls-verify=false $PROXY/elsewhere/sample:v1    # refused
  $BIN sign $UPSTREAM/elsewhere/sample:v1 --key $WORK/ci/built-by-ci.key --insecure
      # ... then pull it again (denials are cached for up to 30 s)
  $BIN verify $UPSTREAM/elsewhere/sample:v1 --config $CONFIG
EOF
    STAYING=1
    wait
fi
