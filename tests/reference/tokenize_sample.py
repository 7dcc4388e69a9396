"""Reference for tests/prep.rs: the HF fast tokenizer on a sample of MedMCQA questions.

usage: tokenize_sample.py MODEL_DIR DEV_JSONL STRIDE MAX_LENGTH OUT_JSON

Takes every STRIDE-th line of DEV_JSONL (0, STRIDE, 2*STRIDE, ...), cleans the text as
medbert documents it (NFKC, control characters dropped, whitespace collapsed), encodes
`question + " " + option` for each option and writes {"index": [...], "ids": [[...] x4, ...]}.
"""
import json
import sys
import unicodedata

from transformers import AutoTokenizer


def clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(kept.split())


def main(model_dir, dev, stride, max_length, out):
    tok = AutoTokenizer.from_pretrained(model_dir)
    index, ids = [], []
    with open(dev, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % int(stride):
                continue
            row = json.loads(line)
            texts = [f"{clean(row['question'])} {clean(row[k])}" for k in ("opa", "opb", "opc", "opd")]
            enc = tok(texts, truncation=True, max_length=int(max_length))
            index.append(i)
            ids.append(enc["input_ids"])
    with open(out, "w") as f:
        json.dump({"index": index, "ids": ids}, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
