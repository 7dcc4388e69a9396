#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs the main job on the embedded default model.
set -euo pipefail
"$(dirname "$0")/setup.sh"
. "$(dirname "$0")/env.sh"
step() { printf '\n==> %s\n' "$*"; }
step "medbert doctor"
./target/release/medbert doctor
