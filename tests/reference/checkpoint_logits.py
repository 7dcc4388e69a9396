"""Reference for tests/train.rs: load a medbert checkpoint with AutoModelForMultipleChoice.

usage: checkpoint_logits.py CHECKPOINT_DIR INPUTS_SAFETENSORS OUT_SAFETENSORS
Runs the saved inputs (input_ids, attention_mask, token_type_ids) in eval mode, writes logits.
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMultipleChoice


def main(ckpt, inputs, out):
    model = AutoModelForMultipleChoice.from_pretrained(ckpt).eval()
    x = load_file(inputs)
    with torch.no_grad():
        logits = model(**{k: x[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    save_file({"logits": logits.contiguous()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
