#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs the main job on the embedded default model:
# `medbert doctor`; fine-tuning on MedMCQA's dev split from MEDMCQA_DIR (environment or .env),
# first 3,183 questions for training and the last 1,000 held out (file order), one epoch;
# without MEDMCQA_DIR, on examples/data/sample.jsonl (synthetic, 300 + 100 held out);
# then evaluation and predictions on the held-out questions.
set -euo pipefail
"$(dirname "$0")/setup.sh"
. "$(dirname "$0")/env.sh"
. scripts/lib.sh
step "medbert doctor"
./target/release/medbert doctor
out=runs/quickstart
if [ -n "${MEDMCQA_DIR:-}" ] && [ -r "$MEDMCQA_DIR/dev.json" ]; then
  # One epoch is 199 steps of 16: an evaluation every 40 (12 s each here) draws the accuracy
  # as a curve rather than one dot at the end.
  data=$MEDMCQA_DIR/dev.json held=1000 train=(--num-train-epochs 1 --eval-strategy steps --eval-steps 40)
else
  echo "MEDMCQA_DIR is not set (or has no dev.json): using the synthetic sample examples/data/sample.jsonl."
  echo "Set MEDMCQA_DIR in .env (or run medbert fetch-data) to fine-tune on MedMCQA."
  data=examples/data/sample.jsonl held=100 train=(--num-train-epochs 4 --learning-rate 1e-4)
fi
mkdir -p "$out"
tail -n "$held" "$data" > "$out/heldout.jsonl"
step "fine-tune on $data (last $held questions held out)"
./target/release/medbert train --train-file "$data" --holdout "$held" "${train[@]}" --output-dir "$out" \
  --overwrite-output-dir
step "evaluate $out/best on the held-out questions"
./target/release/medbert eval --model "$out/best" --validation-file "$out/heldout.jsonl" --cache-dir "$out/prepared"
step "predict the held-out questions"
./target/release/medbert predict --model "$out/best" --test-file "$out/heldout.jsonl" --cache-dir "$out/prepared" \
  --output "$out/predictions.csv"
printf '\nplot: %s\npredictions: %s\nmetrics: %s\ncheckpoints: %s, %s\n' "$out/curves.png" "$out/predictions.csv" \
  "$out/metrics.jsonl" "$out/best" "$out/final"
