"""Build a MedMCQA-train-sized JSON Lines file from the real dev split.

usage: make_train_like.py DEV_JSONL N OUT_JSONL
Repeats the dev questions in file order, giving copy k of each the id `<id>-<k>`, until N rows.
"""
import json
import sys


def main(dev, n, out):
    rows = [json.loads(line) for line in open(dev, encoding="utf-8")]
    n = int(n)
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["id"] = f"{row['id']}-{i // len(rows)}"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
