#!/usr/bin/env bash
# Benchmark: `medbert train` against the HF Trainer (transformers 5.17 + torch 2.11.0 in the
# venv) on identical work: MiniLM-L6, the first 512 questions of the real dev split, every
# batch padded to 128 tokens, 16 questions per step, 20 steps, the same threads. Then the
# FLOP rate of a BERT-base-shaped training step against a libtorch fp32 matmul, same process.
# usage: scripts/bench-train.sh [MEDMCQA_DIR]   (default: $MEDMCQA_DIR or ../shared/data/medmcqa)
set -euo pipefail
. "$(dirname "$0")/env.sh"
data=${1:-${MEDMCQA_DIR:-../shared/data/medmcqa}}
[ -r "$data/dev.json" ] || { echo "no dev.json in $data (pass the MedMCQA directory)" >&2; exit 1; }
"$MEDBERT_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
cargo build --release --quiet --bins --example flops
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
head -n 512 "$data/dev.json" > "$work/train.json"
threads=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
steps=20 batch=16
./target/release/medbert prep --input "$work/train.json" --output "$work/cache" --max-length 128 >/dev/null
ours=$(python scripts/bench/measure.py medbert -- ./target/release/medbert train --train-file "$work/cache" \
  --max-steps $steps --per-device-train-batch-size $batch --pad-to-max-length --logging-steps 1000 \
  --device cpu --output-dir "$work/ours")
ours_qps=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_questions_per_second"])' "$work/ours/summary.json")
ref=$(HF_HUB_OFFLINE=1 python scripts/bench/measure.py reference -- python scripts/bench/train_reference.py \
  "$MEDBERT_MODEL" "$work/train.json" 128 $batch $steps "$work/ref")
flops=$(./target/release/examples/flops 3)
python - "$ours" "$ours_qps" "$ref" "$flops" "$threads" <<'PY'
import json, sys
o, oq, r, f, t = json.loads(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
rq = json.loads(r["last_line"])["questions_per_second"]
print(f"| train MiniLM, {t} threads, 20 steps x 16 questions, padded to 128 | ours {oq:.2f} q/s, {o['peak_rss_mb']} MB | HF Trainer {rq:.2f} q/s, {r['peak_rss_mb']} MB | {oq / rq:.2f}x |")
print(f"| BERT-base train step, seq 128, 4 questions | {f['train_gflops']:.0f} GFLOP/s | libtorch fp32 matmul {f['matmul_gflops']:.0f} GFLOP/s | {f['ratio'] * 100:.0f}% |")
PY
