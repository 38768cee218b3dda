#!/usr/bin/env bash
# Builds Sluice's container image with buildah from the top-level Containerfile, then runs it
# with podman and checks it: /healthz, /readyz and a routed request (200 from an upstream
# through Sluice on :80, as the non-root user with only NET_BIND_SERVICE, read-only root FS),
# under Sluice's seccomp profile (manifests/seccomp/sluice-io-uring.json); then shows that the
# runtime's default seccomp profile stops it at start with the message naming the profile.
#
#   scripts/image.sh                # cargo build --profile dist, image, checks
#   SLUICE_BIN=path scripts/image.sh   # use that binary instead of building one
#
# Needs root, buildah, podman, curl, setcap (Debian: buildah podman curl libcap2-bin).
# Traffic stays inside a network namespace this script makes (s14-img) and removes.
set -euo pipefail
cd "$(dirname "$0")/.."

NETNS=${SLUICE_IMAGE_NETNS:-s14-img}
NAME=s14-sluice-image-check
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=localhost/sluice:$VERSION
STAGE=target/image
PROFILE=manifests/seccomp/sluice-io-uring.json
# overlay needs a kernel and file system that allow it; vfs works everywhere (copies layers).
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
# runc: Debian 12's crun 1.8 refuses a cgroup v1/v2 hybrid host ("cgroups in hybrid mode not
# supported"), which this CI machine is.
PODMAN=(podman --runtime "${PODMAN_RUNTIME:-runc}" --storage-driver "$STORAGE_DRIVER"
    --cgroup-manager cgroupfs)

say() { echo "image.sh: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

cleanup() {
    "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
    ip netns del "$NETNS" 2>/dev/null || true
}
trap cleanup EXIT

# --- 1. the binary -----------------------------------------------------------------------
if [[ -n ${SLUICE_BIN:-} ]]; then
    BIN=$SLUICE_BIN
else
    say "cargo build --profile dist"
    cargo build --profile dist --bin sluice --quiet
    BIN=${CARGO_TARGET_DIR:-target}/dist/sluice
fi
[[ -x $BIN ]] || fail "no binary at $BIN"

# --- 2. the root filesystem --------------------------------------------------------------
rm -rf "$STAGE"
mkdir -p "$STAGE/rootfs/usr/local/bin" "$STAGE/rootfs/etc/sluice" "$STAGE/rootfs/etc/ssl/certs" \
    "$STAGE/rootfs/tmp"
chmod 1777 "$STAGE/rootfs/tmp"
cp "$BIN" "$STAGE/rootfs/usr/local/bin/sluice"
strip "$STAGE/rootfs/usr/local/bin/sluice" 2>/dev/null || true
# Exactly the shared objects the binary links, at the paths the loader looks them up.
ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r so; do
    mkdir -p "$STAGE/rootfs$(dirname "$so")"
    cp -L "$so" "$STAGE/rootfs$so"
done
say "shared objects: $(cd "$STAGE/rootfs" && find lib* usr/lib* -type f 2>/dev/null | tr '\n' ' ')"
# Binding :80/:443 as a non-root user: the capability comes from the file (see Containerfile).
setcap cap_net_bind_service=+ep "$STAGE/rootfs/usr/local/bin/sluice"
printf 'root:x:0:0:root:/:/sbin/nologin\nsluice:x:65532:65532:sluice:/:/sbin/nologin\n' \
    >"$STAGE/rootfs/etc/passwd"
printf 'root:x:0:\nsluice:x:65532:\n' >"$STAGE/rootfs/etc/group"
cp configs/container.toml "$STAGE/rootfs/etc/sluice/sluice.toml"
# The CA bundle: for an API server reached through a kubeconfig (in a pod, the
# ServiceAccount's own ca.crt is used).
cp /etc/ssl/certs/ca-certificates.crt "$STAGE/rootfs/etc/ssl/certs/ca-certificates.crt"
cp Containerfile "$STAGE/Containerfile"

# --- 3. the image ------------------------------------------------------------------------
say "buildah build -t $IMAGE"
start=$SECONDS
buildah --storage-driver "$STORAGE_DRIVER" build --quiet \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -f "$STAGE/Containerfile" -t "$IMAGE" "$STAGE" >/dev/null
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in $((SECONDS - start)) s: $((size / 1024)) KiB ($size bytes)"
"${PODMAN[@]}" image inspect --format '{{json .Labels}}' "$IMAGE" >&2
[[ $("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE") == 65532:65532 ]] ||
    fail "image does not run as 65532"
# For machines without a registry (the Vagrant lab imports it into containerd).
rm -f "$STAGE/sluice.tar"
"${PODMAN[@]}" save --quiet -o "$STAGE/sluice.tar" "$IMAGE"
say "saved $STAGE/sluice.tar (ctr -n k8s.io images import, or podman load)"

# --- 4. run it under Sluice's seccomp profile ----------------------------------------------
ip netns del "$NETNS" 2>/dev/null || true
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
in_ns() { ip netns exec "$NETNS" "$@"; }

# podman raises RLIMIT_NOFILE and RLIMIT_NPROC to its defaults; a sandbox with lower hard
# limits refuses that ("setrlimit: Operation not permitted"), so ask for what we have (nproc:
# a modest fixed value; the sandbox here refused even its own hard limit).
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
run_args=(--name "$NAME" --network "ns:/run/netns/$NETNS" --read-only --user 65532:65532
    --cap-drop ALL --cap-add NET_BIND_SERVICE --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
demo_args=(demo --http 0.0.0.0:80 --https 0.0.0.0:443 --admin 0.0.0.0:10254 --workers 2)

say "podman run (seccomp=$PROFILE, read-only, user 65532, caps: NET_BIND_SERVICE)"
t0=$(date +%s%N)
"${PODMAN[@]}" run -d "${run_args[@]}" --security-opt "seccomp=$PROFILE" "$IMAGE" \
    "${demo_args[@]}" >/dev/null
ready=""
for _ in $(seq 1 500); do
    if in_ns curl -fsS -o /dev/null http://127.0.0.1:10254/readyz 2>/dev/null; then
        ready=$(( ($(date +%s%N) - t0) / 1000000 ))
        break
    fi
    if [[ $("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME") != true ]]; then
        "${PODMAN[@]}" logs "$NAME" >&2 || true
        fail "the container exited before it was ready"
    fi
    sleep 0.02
done
[[ -n $ready ]] || { "${PODMAN[@]}" logs "$NAME" >&2; fail "not ready within 10 s"; }
say "start to ready (podman run to first 200 on /readyz): $ready ms"
for path in /healthz /readyz; do
    code=$(in_ns curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:10254$path")
    [[ $code == 200 ]] || fail "$path answered $code"
    say "GET $path: $code"
done
reply=$(in_ns curl -s -D - -H 'Host: demo.local' http://127.0.0.1:80/api/users)
echo "$reply" | head -1 | grep -q ' 200' || fail "routed request: $reply"
echo "$reply" | grep -qi '^x-upstream: pod-b' || fail "routed request went elsewhere: $reply"
say "GET http://demo.local:80/api/users through Sluice: 200 from pod-b"
code=$(in_ns curl -s -o /dev/null -w '%{http_code}' -k --resolve demo.local:443:127.0.0.1 https://demo.local/)
[[ $code == 200 ]] || fail "HTTPS answered $code"
say "GET https://demo.local:443/: 200"
user=$("${PODMAN[@]}" top "$NAME" user 2>/dev/null | tail -1 | tr -d ' ')
say "process user inside the container: ${user:-?}"
"${PODMAN[@]}" stop -t 30 "$NAME" >/dev/null
rc=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
[[ $rc == 0 ]] || { "${PODMAN[@]}" logs "$NAME" >&2; fail "SIGTERM: exit code $rc, not 0"; }
say "podman stop (SIGTERM): drained, exit 0"
"${PODMAN[@]}" rm -f "$NAME" >/dev/null

# --- 5. the runtime's default seccomp profile: a clear refusal at start --------------------
say "podman run with the runtime's default seccomp profile (expected to fail)"
set +e
out=$("${PODMAN[@]}" run --rm "${run_args[@]}" "$IMAGE" "${demo_args[@]}" 2>&1)
rc=$?
set -e
printf "    %s\n" "${out//$'\n'/$'\n    '}" >&2
[[ $rc != 0 ]] || fail "it started under the default seccomp profile: the check is stale"
echo "$out" | grep -q 'seccomp' || fail "the start-up error does not name seccomp"
say "default profile: exit $rc, and the message names the seccomp profile"
say "OK: image $IMAGE, $((size / 1024)) KiB, ready in $ready ms"
