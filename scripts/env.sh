# Sourced by the other scripts: the project's build environment. Loads .env, activates the
# project venv, and points torch-sys at the venv's torch unless LIBTORCH names a libtorch.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
if [ -f .env ]; then set -a; . ./.env; set +a; fi
MEDBERT_VENV=${MEDBERT_VENV:-.venv}
if [ -x "$MEDBERT_VENV/bin/python" ]; then
  export VIRTUAL_ENV="$(cd "$MEDBERT_VENV" && pwd)"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
if [ -z "${LIBTORCH:-}" ]; then export LIBTORCH_USE_PYTORCH=1; fi
