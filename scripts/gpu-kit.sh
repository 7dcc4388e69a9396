#!/usr/bin/env bash
# Builds the GPU check kit: a self-contained folder to copy to a CUDA machine that has python3
# with torch 2.11 and transformers but no Rust and no network, then run `bash check.sh` there
# (docs/gpu.md). Holds the stripped release binaries, the check scripts, the default model's
# tokenizer files and MedMCQA's dev split from MEDMCQA_DIR.
# usage: scripts/gpu-kit.sh [OUT_DIR]   (default: target/gpu-kit)
set -euo pipefail
. "$(dirname "$0")/env.sh"
kit=${1:-target/gpu-kit}
limit_mib=60
data=${MEDMCQA_DIR:-../shared/data/medmcqa}
[ -r "$data/dev.json" ] || { echo "gpu-kit: no dev.json in $data (set MEDMCQA_DIR)" >&2; exit 1; }
[ -n "${MEDBERT_MODEL:-}" ] && [ -f "$MEDBERT_MODEL/tokenizer.json" ] || {
  echo "gpu-kit: MEDBERT_MODEL has no tokenizer.json (run scripts/setup.sh)" >&2; exit 1; }
cargo build --release --bins --quiet
rm -rf "$kit"
mkdir -p "$kit/bin" "$kit/tokenizer" "$kit/data"
for b in medbert medbert-run; do
  cp target/release/$b "$kit/bin/"
  strip "$kit/bin/$b"
done
cp scripts/gpu/check.sh scripts/gpu/check.py scripts/gpu/trainer_bench.py "$kit/"
for f in tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -f "$MEDBERT_MODEL/$f" ] && cp "$MEDBERT_MODEL/$f" "$kit/tokenizer/"
done
cp "$data/dev.json" "$kit/data/dev.json"
size_kib=$(du -sk "$kit" | cut -f1)
awk -v k="$size_kib" -v d="$kit" -v l="$limit_mib" 'BEGIN { printf "gpu-kit: %s, %.1f MiB (limit %d MiB)\n", d, k / 1024, l }'
[ "$size_kib" -le $((limit_mib * 1024)) ] || { echo "gpu-kit: larger than $limit_mib MiB" >&2; exit 1; }
