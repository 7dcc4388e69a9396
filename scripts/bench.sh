#!/usr/bin/env bash
# Runs every benchmark (prep, train + FLOP rate, DDP) on this machine in one go and writes the
# table to docs/benchmarks.md and into README.md between the bench markers.
# usage: scripts/bench.sh [MEDMCQA_DIR]   (default: $MEDMCQA_DIR or ../shared/data/medmcqa)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-${MEDMCQA_DIR:-../shared/data/medmcqa}}
rows=$(mktemp); trap 'rm -f "$rows"' EXIT
for bench in prep train ddp; do
  echo "==> scripts/bench-$bench.sh" >&2
  out=$(OMP_NUM_THREADS= bash "scripts/bench-$bench.sh" "$data")
  printf '%s\n' "$out" >&2
  grep '^| ' <<< "$out" >> "$rows"
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "Machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)."
  echo
  echo "| benchmark | ours | reference | ratio |"
  echo "| --- | --- | --- | --- |"
  cat "$rows"
} > docs/benchmarks.md
python3 - <<'PY'
import re
readme = open("README.md").read()
table = open("docs/benchmarks.md").read()
new = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", lambda m: m.group(1) + table + m.group(2), readme, flags=re.S)
open("README.md", "w").write(new)
PY
cat docs/benchmarks.md
