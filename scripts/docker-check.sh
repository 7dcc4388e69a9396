#!/usr/bin/env bash
# Builds the real docker/Dockerfile with podman and runs the image, where no container registry
# is reachable: the two bases it names through its ARGs are replaced by local stand-ins that
# reproduce what matters of them, and nothing else of the build differs.
#   - RUST_IMAGE (rust:1.95-bookworm): Debian bookworm with this machine's Rust toolchain copied
#     in and the C toolchain the official image (buildpack-deps) carries;
#   - RUNTIME_IMAGE (nvidia/cuda:13.0.2-base-ubuntu24.04): a base with a user `ubuntu` of UID
#     and GID 1000 (as every Ubuntu 24.04 image has), no Python, and the CUDA image's variables.
# Both come from `mmdebstrap --variant=minbase bookworm` with this machine's CA certificates
# (HTTPS to the package registries goes through a proxy that needs them).
#
# Then runs the image: `medbert doctor`; one training step on the shipped sample as the image's
# user with data and runs mounted as the README says (files in runs/ must belong to that
# user); `medbert-run --nproc-per-node 2` over Gloo with --verify-sync 1; the entrypoint's
# --help; docker/compose.yml's `train` service on this CPU host with docker/compose.cpu.yml
# through podman-compose, and its `node` service refusing to start without MEDBERT_RUNS_DIR.
# Prints each step's time and the image's size and largest layers; exits non-zero on any
# failure; removes the image and what it ran unless --keep.
#
# Kept between runs, as a machine that builds images keeps them: the stand-in bases, tagged by
# a digest of what they are made from (rebuilt when that changes), and the builder's cache
# mounts that docker/Dockerfile declares (the venv, cargo's target folder and registry), so a
# second run downloads nothing and compiles only what changed. --clean removes the bases and
# the cache mounts too (then exits).
#   scripts/docker-check.sh [--keep | --clean]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
keep=0 clean=0
case "${1:-}" in
  "") ;;
  --keep) keep=1 ;;
  --clean) clean=1 ;;
  *) echo "usage: scripts/docker-check.sh [--keep | --clean]" >&2; exit 2 ;;
esac

REPO=localhost/medbert-check
IMAGE=$REPO/medbert:latest
# docker/compose.yml names its image medbert:latest; the check tags its build so.
COMPOSE_IMAGE=localhost/medbert:latest
work=$(mktemp -d "${TMPDIR:-/var/tmp}/medbert-docker.XXXXXX")

# podman as it works on this kind of machine: runc (crun refuses the hybrid cgroups),
# cgroupfs, a file event log, and ulimits within what may be raised here.
cat > "$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# Cache mounts of docker/Dockerfile, as buildah keeps them: a folder per id under its temporary
# directory (/var/tmp/buildah-cache/ID in buildah 1.28, Debian bookworm's; later versions add
# the user id to the folder and may name the mount by its digest).
cache_mounts=$(grep -o 'type=cache,id=[a-z-]*' docker/Dockerfile | cut -d= -f3 | sort -u)
if [ "$clean" = 1 ]; then
  podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO/" | xargs -r podman rmi -f >/dev/null
  podman image prune -f >/dev/null
  for id in $cache_mounts; do
    rm -rf "/var/tmp/buildah-cache/$id" "/var/tmp/buildah-cache-$(id -u)/$id" \
      "/var/tmp/buildah-cache-$(id -u)/$(printf %s "$id" | sha256sum | cut -d' ' -f1)"
  done
  echo "removed the stand-in bases, the check's images and the build's cache mounts ($(echo $cache_mounts))"
  exit 0
fi

cleanup() {
  local status=$?
  if [ "$keep" = 1 ]; then
    echo "kept: $work and the images $IMAGE $COMPOSE_IMAGE"
  else
    podman-compose -f "$work/project/docker/compose.yml" down >/dev/null 2>&1 || true
    podman rmi -f "$COMPOSE_IMAGE" "$IMAGE" >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

. scripts/lib.sh
# Run niced (scripts/test.sh runs this check beside the other tests at nice 19), the builds'
# containers take the same low priority: nice does not reach them, each RUN step being in a
# cgroup of its own, so they get the CPU weight the kernel gives that niceness (19: 15 of 1024).
build_weight=()
niceness=$(nice)
if [ "$niceness" -gt 0 ]; then
  build_weight=(--cpu-shares "$(awk -v n="$niceness" 'BEGIN { w = int(1024 / 1.25 ^ n + 0.5); print (w < 2 ? 2 : w) }')")
fi
fail() { echo "docker-check: $*" >&2; exit 1; }
command -v podman-compose >/dev/null || fail "podman-compose not found: scripts/setup.sh --test installs it"
# A stand-in is built only when no image is tagged with the digest of what it is made from.
have() { podman image exists "$1"; }
digest() { sha256sum | cut -c1-12; }

certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${certs[0]}" ] || certs=()
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
BASE=$REPO/base:bookworm-$( { echo "${mirror:-}"; cat ${certs[@]+"${certs[@]}"}; } | digest)
step "stand-in base: mmdebstrap --variant=minbase bookworm with this machine's CA certificates"
if have "$BASE"; then
  echo "kept from an earlier run: $BASE"
else
  mmdebstrap --quiet --variant=minbase --format=tar --include=ca-certificates \
    ${certs:+--customize-hook="copy-in ${certs[*]} /usr/local/share/ca-certificates/"} \
    --customize-hook='chroot "$1" update-ca-certificates' \
    bookworm "$work/rootfs.tar" ${mirror:-http://deb.debian.org/debian}
  podman import --quiet "$work/rootfs.tar" "$BASE" >/dev/null
  rm -f "$work/rootfs.tar"
fi

step "stand-in RUST_IMAGE: bookworm, the C toolchain, this machine's Rust $(rustc --version | cut -d' ' -f2)"
sysroot=$(rustc --print sysroot)
mkdir -p "$work/rust"
cat > "$work/rust/Containerfile" <<EOF
FROM $BASE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      gcc g++ make libc6-dev pkg-config git curl ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
# This machine's network: pip and cargo trust the system's CA store (with its proxy's CA).
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
EOF
RUST=$REPO/rust:1.95-bookworm-$( { cat "$work/rust/Containerfile"; rustc -vV; } | digest)
if have "$RUST"; then
  echo "kept from an earlier run: $RUST"
else
  # The toolchain without its documentation (share/), as the official image's minimal profile.
  mkdir -p "$work/rust/toolchain"
  cp -a "$sysroot"/bin "$sysroot"/lib "$sysroot"/libexec "$sysroot"/etc "$work/rust/toolchain/"
  podman build ${build_weight[@]+"${build_weight[@]}"} --quiet -t "$RUST" "$work/rust" >/dev/null
fi
rm -rf "$work/rust"

step "stand-in RUNTIME_IMAGE: user ubuntu (1000:1000), no Python, the CUDA base's variables"
mkdir -p "$work/runtime"
cat > "$work/runtime/Containerfile" <<EOF
FROM $BASE
RUN groupadd --gid 1000 ubuntu && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ubuntu \\
 && ! command -v python3
ENV NVIDIA_VISIBLE_DEVICES=all \\
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \\
    CUDA_VERSION=13.0.2 \\
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \\
    PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
RUNTIME=$REPO/cuda:13.0.2-base-ubuntu24.04-$(digest < "$work/runtime/Containerfile")
if have "$RUNTIME"; then
  echo "kept from an earlier run: $RUNTIME"
else
  podman build ${build_weight[@]+"${build_weight[@]}"} --quiet -t "$RUNTIME" "$work/runtime" >/dev/null
fi

step "podman build -f docker/Dockerfile (unchanged; the two bases passed as build args)"
podman build ${build_weight[@]+"${build_weight[@]}"} --ignorefile docker/Dockerfile.dockerignore -f docker/Dockerfile \
  --build-arg RUST_IMAGE="$RUST" --build-arg RUNTIME_IMAGE="$RUNTIME" -t "$IMAGE" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; fail "the image did not build (log above)"; }
grep '^==> \[' "$work/build.log" | sed 's/^/  set-up in the build: /'
podman tag "$IMAGE" "$COMPOSE_IMAGE"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image size: $((size / 1000000)) MB; largest layers:"
podman history --format json "$IMAGE" | python3 -c "$(cat <<'PY'
import json, sys
for layer in sorted(json.load(sys.stdin), key=lambda l: -l["size"])[:4]:
    print(f"{layer['size'] / 1e6:9.1f} MB  {layer['CreatedBy'][:100]}")
PY
)"


step "medbert doctor"
doctor=$(podman run --rm --entrypoint medbert "$IMAGE" doctor)
echo "$doctor"
grep -q 'c10d backends:.*nccl' <<< "$doctor" || fail "doctor lists no NCCL backend"
grep -q '^forward:' <<< "$doctor" || fail "doctor ran no forward pass on the embedded model"

step "one training step on the shipped sample as the image's user, data and runs mounted"
mkdir -p "$work/data" "$work/runs"
cp examples/data/sample.jsonl "$work/data/"
chown 1000:1000 "$work/runs"
podman run --rm -v "$work/data:/data:ro" -v "$work/runs:/runs" "$IMAGE" \
  --nproc-per-node 1 --train-file /data/sample.jsonl --max-steps 1 --per-device-train-batch-size 4 \
  --device cpu --output-dir /runs/one
[ -f "$work/runs/one/final/model.safetensors" ] || fail "no final/ checkpoint in runs/one"
others=$(find "$work/runs" ! -uid 1000 | head -5)
[ -z "$others" ] || fail "files in runs/ not owned by the image's user (UID 1000): $others"
echo "runs/one: $(find "$work/runs/one" -type f | wc -l) files, all owned by UID 1000"

step "medbert-run --nproc-per-node 2 over Gloo in one container, --verify-sync 1"
podman run --rm -v "$work/data:/data:ro" -v "$work/runs:/runs" "$IMAGE" \
  --nproc-per-node 2 --train-file /data/sample.jsonl --max-steps 2 --per-device-train-batch-size 4 \
  --device cpu --ddp-backend gloo --verify-sync 1 --output-dir /runs/two 2>&1 | tail -5
# --verify-sync fails the run when the ranks' parameters differ after any step.
[ -f "$work/runs/two/final/model.safetensors" ] || fail "no final/ checkpoint in runs/two"

step "the entrypoint's --help"
help=$(podman run --rm "$IMAGE")
grep -q 'Usage: medbert-run' <<< "$help" || fail "the default command does not print medbert-run --help"
echo "$help" | head -3

step "compose: the train service on this CPU host (docker/compose.yml + docker/compose.cpu.yml)"
# The compose files as shipped, in a project folder of their own, so that their ../data,
# ../models, ../runs and ../.env are the check's.
project="$work/project"
mkdir -p "$project/docker" "$project/data/medmcqa" "$project/models" "$project/runs"
cp docker/compose.yml docker/compose.cpu.yml "$project/docker/"
cp examples/data/sample.jsonl "$project/data/medmcqa/"
chown 1000:1000 "$project/models" "$project/runs"
# What a user's .env would say for a one-step run on the sample (read inside the container).
cat > "$project/.env" <<'EOF'
MEDBERT_MAX_STEPS=1
MEDBERT_PER_DEVICE_TRAIN_BATCH_SIZE=4
EOF
(
  cd "$project"
  export MEDBERT_HUB_MODEL=/opt/medbert/models/all-MiniLM-L6-v2 MEDBERT_TRAIN_FILE=/data/sample.jsonl \
    MEDBERT_VALIDATION_FILE=/data/sample.jsonl
  env -u MEDBERT_RUNS_DIR -u NODE_RANK -u MASTER_ADDR -u NNODES \
    podman-compose -f docker/compose.yml -f docker/compose.cpu.yml up --no-build train
) > "$work/compose.log" 2>&1 || true
tail -5 "$work/compose.log"
[ -f "$project/runs/medmcqa/final/model.safetensors" ] || { tail -30 "$work/compose.log" >&2; fail "compose up train wrote no final/ checkpoint"; }
podman-compose -f "$project/docker/compose.yml" down >/dev/null 2>&1 || true

step "compose: the node service refuses to start without a shared MEDBERT_RUNS_DIR"
set +e
(cd "$project" && env -u MEDBERT_RUNS_DIR NODE_RANK=0 MASTER_ADDR=127.0.0.1 \
  podman-compose -f docker/compose.yml -f docker/compose.cpu.yml run --rm node) > "$work/node.log" 2>&1
code=$?
set -e
tail -3 "$work/node.log"
[ "$code" != 0 ] && grep -q 'MEDBERT_RUNS_DIR' "$work/node.log" \
  || fail "the node service started without MEDBERT_RUNS_DIR (exit $code)"

step "docker check passed (image $((size / 1000000)) MB)"
