#!/usr/bin/env bash
# Benchmark: data-parallel training, 2 processes x 1 thread with Gloo on this machine.
# medbert-run + medbert train against torchrun + the HF Trainer (PyTorch DDP, Gloo) on the same
# model (MiniLM-L6), questions (first 512 of the real dev split), padding (128), per-process
# batch (8) and steps (12); scaling against medbert on 1 process x 1 thread; and the time from
# starting medbert-run to the first optimizer step, warm (caches prepared, binaries in page cache).
# usage: scripts/bench-ddp.sh [MEDMCQA_DIR]   (default: $MEDMCQA_DIR or ../shared/data/medmcqa)
set -euo pipefail
. "$(dirname "$0")/env.sh"
data=${1:-${MEDMCQA_DIR:-../shared/data/medmcqa}}
[ -r "$data/dev.json" ] || { echo "no dev.json in $data (pass the MedMCQA directory)" >&2; exit 1; }
"$MEDBERT_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
cargo build --release --quiet --bins
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
head -n 512 "$data/dev.json" > "$work/train.json"
./target/release/medbert prep --input "$work/train.json" --output "$work/cache" --max-length 128 >/dev/null
export OMP_NUM_THREADS=1
steps=12 batch=8
flags=(--train-file "$work/cache" --max-steps $steps --per-device-train-batch-size $batch --pad-to-max-length
       --logging-steps 1 --device cpu)
run() { python scripts/bench/ddp_bench.py "$@"; }
one=$(run one "$work/one" -- ./target/release/medbert train "${flags[@]}" --output-dir "$work/one")
two=$(run two "$work/two" -- ./target/release/medbert-run --standalone --nproc-per-node 2 "${flags[@]}" --output-dir "$work/two")
# --ddp-overlap both ways (the run above takes auto, which picks one of them).
hooks=$(run hooks "$work/hooks" -- ./target/release/medbert-run --standalone --nproc-per-node 2 "${flags[@]}" \
  --ddp-overlap true --output-dir "$work/hooks")
serial=$(run serial "$work/serial" -- ./target/release/medbert-run --standalone --nproc-per-node 2 "${flags[@]}" \
  --ddp-overlap false --output-dir "$work/serial")
auto=$(python -c 'import json,sys; print("during backward" if json.load(open(sys.argv[1]))["resolved"]["ddp_overlap"] else "after backward")' "$work/two/training_args.json")
# Start-up alone: one question per process, so the first step itself is short.
start=$(run start "$work/start" -- ./target/release/medbert-run --standalone --nproc-per-node 2 --train-file "$work/cache" \
  --max-steps 1 --per-device-train-batch-size 1 --logging-steps 1 --device cpu --output-dir "$work/start")
ref=$(HF_HUB_OFFLINE=1 run torchrun "$work/ref" -- torchrun --standalone --nproc-per-node 2 \
  scripts/bench/train_reference.py "$MEDBERT_MODEL" "$work/train.json" 128 $batch $steps "$work/ref")
python - "$one" "$two" "$ref" "$serial" "$start" "$hooks" "$auto" <<'PY'
import json, sys
one, two, ref, serial, start, hooks = (json.loads(a) for a in sys.argv[1:7])
auto = sys.argv[7]
o1, o2, r2 = one["questions_per_second"], two["questions_per_second"], ref["questions_per_second"]
print(f"| DDP 2 x 1 thread, Gloo, MiniLM, 8 questions/process, padded to 128 | ours {o2:.2f} q/s | torchrun + DDP {r2:.2f} q/s | {o2 / r2:.2f}x |")
print(f"| scaling 1 -> 2 processes (1 thread each) | ours {o1:.2f} -> {o2:.2f} q/s | ideal {2 * o1:.2f} q/s | efficiency {o2 / (2 * o1):.2f} |")
print(f"| gradient all-reduce (wait exposed after backward, per step) | during backward (hooks) {hooks['exposed_ms_per_step']:.0f} ms, {hooks['questions_per_second']:.2f} q/s | after backward {serial['exposed_ms_per_step']:.0f} ms, {serial['questions_per_second']:.2f} q/s | --ddp-overlap auto: {auto} |")
print(f"| medbert-run start to first optimizer step, warm | 1 question/process: {start['first_step_seconds']:.2f} s | 8 questions/process: {two['first_step_seconds']:.2f} s | |")
PY
