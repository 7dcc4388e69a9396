# Sourced by the other scripts: the project's build environment. Loads .env, activates the
# project venv, and points torch-sys at the venv's torch unless LIBTORCH names a libtorch.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# .env fills in variables the environment does not already set (as dotenvy does for medbert).
if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in [A-Za-z_]*=*) ;; *) continue ;; esac
    key=${line%%=*} val=${line#*=}
    case "$key" in *[!A-Za-z0-9_]*) continue ;; esac
    val=${val%\"} val=${val#\"}
    [ -n "${!key+x}" ] || export "$key=$val"
  done < .env
fi
MEDBERT_VENV=${MEDBERT_VENV:-.venv}
if [ -x "$MEDBERT_VENV/bin/python" ]; then
  export VIRTUAL_ENV="$(cd "$MEDBERT_VENV" && pwd)"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
fi
if [ -z "${LIBTORCH:-}" ]; then export LIBTORCH_USE_PYTORCH=1; fi
