#!/usr/bin/env bash
# Sets everything up (as quickstart does, with the tests' references and tools), then runs the
# whole test suite. CI runs exactly this.
set -euo pipefail
"$(dirname "$0")/setup.sh" --test
. "$(dirname "$0")/env.sh"
. scripts/lib.sh
step "cargo test --release"
cargo test --release
