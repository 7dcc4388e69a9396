#!/usr/bin/env bash
# Sets everything up (as quickstart does, with the tests' references and tools), then runs the
# whole test suite. CI runs exactly this.
set -euo pipefail
"$(dirname "$0")/setup.sh" --test
. "$(dirname "$0")/env.sh"
. scripts/lib.sh
step "cargo test --release: building the tests"
cargo test --release --no-run
# The image check (tests/docker.rs) builds docker/Dockerfile from nothing on a new machine:
# minutes of downloads and of writing layers, during which the CPU would idle. So it runs beside
# the other tests, at the lowest priority: niced, and its build's containers with the matching
# CPU weight (scripts/docker-check.sh), so the CPU goes to the other tests first, whose timings
# it would otherwise disturb, and to the image build whenever they leave a core idle.
image_check=the_image_builds_on_stand_in_bases_and_runs
image_log=$(mktemp "${TMPDIR:-/tmp}/medbert-image-check.XXXXXX")
nice -n 19 cargo test --release --test docker -- --exact "$image_check" --nocapture > "$image_log" 2>&1 &
image_pid=$!
trap 'kill "$image_pid" 2>/dev/null || true; rm -f "$image_log"' EXIT
step "cargo test --release (all but $image_check, which runs beside them)"
status=0
cargo test --release -- --skip "$image_check" || status=$?
step "cargo test --release --test docker $image_check (started beside the tests)"
wait "$image_pid" || status=1
cat "$image_log"
# A renamed test would match nothing here (and run among the others, unskipped): say so.
grep -q '^running 1 test$' "$image_log" || { echo "test.sh: tests/docker.rs has no test $image_check" >&2; status=1; }
exit "$status"
