#!/usr/bin/env bash
# Benchmark: `medbert prep` against datasets + the HF fast tokenizer on a MedMCQA-train-sized
# file (182,822 questions built from the real dev split), same max length, same machine, one run.
# usage: scripts/bench-prep.sh [MEDMCQA_DIR]   (default: $MEDMCQA_DIR or ../shared/data/medmcqa)
set -euo pipefail
. "$(dirname "$0")/env.sh"
data=${1:-${MEDMCQA_DIR:-../shared/data/medmcqa}}
[ -r "$data/dev.json" ] || { echo "no dev.json in $data (pass the MedMCQA directory)" >&2; exit 1; }
"$MEDBERT_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
cargo build --release --quiet
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python scripts/bench/make_train_like.py "$data/dev.json" 182822 "$work/train.jsonl"
threads=$(nproc)
echo "input: 182,822 questions (dev x44, unique ids), max length 128, $threads cores"
ours=$(python scripts/bench/measure.py medbert -- ./target/release/medbert prep --input "$work/train.jsonl" --output "$work/ours" --max-length 128)
ref=$(HF_DATASETS_CACHE="$work/hf" HF_HUB_OFFLINE=1 python scripts/bench/measure.py reference -- \
  python scripts/bench/prep_reference.py "$MEDBERT_MODEL" "$work/train.jsonl" 128 "$work/ref")
python - "$ours" "$ref" <<'PY'
import json, sys
o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| prep, 182,822 questions | ours {o['seconds']} s, {o['peak_rss_mb']} MB | datasets+tokenizers {r['seconds']} s, {r['peak_rss_mb']} MB | speed-up {r['seconds'] / o['seconds']:.2f}x |")
PY
