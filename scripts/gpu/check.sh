#!/usr/bin/env bash
# medbert's GPU check, run from the kit that scripts/gpu-kit.sh builds: on a CUDA machine with
# python3, torch 2.11 and transformers (no Rust, no network needed).
#   bash check.sh          every check on GPU 0, report in $OUT or next to this script
#   bash check.sh --cpu    the same steps at tiny sizes on the CPU
# PYTHON names another interpreter (default: python3).
set -euo pipefail
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
# The binaries' RUNPATH names the build machine's venv: load this python's libtorch instead.
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# No .env of the kit's surroundings may steer the binaries.
unset MEDBERT_MODEL MEDBERT_DEVICE MEDBERT_PRECISION
exec "$python" "$kit/check.py" "$@"
