"""The Python reference for `medbert prep`: datasets + the HF fast tokenizer.

usage: prep_reference.py MODEL_DIR INPUT_JSONL MAX_LENGTH OUT_DIR
Loads the JSON Lines file, encodes `question + " " + option` for the four options with
map(batched=True, num_proc=2), unpadded, and saves the arrow dataset to OUT_DIR.
"""
import sys

from datasets import load_dataset
from transformers import AutoTokenizer


def main(model_dir, path, max_length, out):
    tok = AutoTokenizer.from_pretrained(model_dir)
    max_length = int(max_length)

    def encode(batch):
        texts = [f"{q} {o}" for i, q in enumerate(batch["question"]) for o in (batch[k][i] for k in ("opa", "opb", "opc", "opd"))]
        enc = tok(texts, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        return {"input_ids": [ids[4 * i : 4 * i + 4] for i in range(len(batch["question"]))], "label": [c - 1 for c in batch["cop"]]}

    ds = load_dataset("json", data_files=path, split="train")
    ds = ds.map(encode, batched=True, num_proc=2, remove_columns=ds.column_names)
    ds.save_to_disk(out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
