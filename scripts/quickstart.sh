#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs the main job on the embedded default model:
# `medbert doctor`, then, when MEDMCQA_DIR (environment or .env) holds the MedMCQA dev split,
# a fine-tuning run on its first 3,183 questions evaluated on the last 1,000 (file order).
set -euo pipefail
"$(dirname "$0")/setup.sh"
. "$(dirname "$0")/env.sh"
step() { printf '\n==> %s\n' "$*"; }
step "medbert doctor"
./target/release/medbert doctor
if [ -n "${MEDMCQA_DIR:-}" ] && [ -r "$MEDMCQA_DIR/dev.json" ]; then
  step "fine-tune $MEDBERT_MODEL on $MEDMCQA_DIR/dev.json (last 1,000 questions held out), 1 epoch"
  ./target/release/medbert train --train-file "$MEDMCQA_DIR/dev.json" --holdout 1000 --num-train-epochs 1 \
    --output-dir runs/quickstart
  echo "metrics: runs/quickstart/metrics.jsonl; checkpoints: runs/quickstart/best, runs/quickstart/final"
else
  echo "MEDMCQA_DIR is not set (or has no dev.json): set it in .env to fine-tune on MedMCQA."
fi
