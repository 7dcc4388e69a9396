"""Reference for scripts/bench-train.sh: the HF Trainer fine-tuning BertForMultipleChoice on the
same questions, padding, batch, steps and threads as `medbert train --pad-to-max-length`.

usage: train_reference.py MODEL_DIR TRAIN_JSONL MAX_LENGTH BATCH STEPS OUT_DIR
Prints {"questions_per_second": ...} (the Trainer's train_samples_per_second).
"""
import json
import sys

import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer, Trainer, TrainingArguments


class Questions(torch.utils.data.Dataset):
    def __init__(self, path, tok, max_length):
        rows = [json.loads(line) for line in open(path) if line.strip()]
        texts = [f"{r['question']} {r[k]}" for r in rows for k in ("opa", "opb", "opc", "opd")]
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.enc = {k: v.view(len(rows), 4, -1) for k, v in enc.items()}
        self.labels = torch.tensor([r["cop"] - 1 for r in rows])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.labels[i]}


def main(model_dir, data, max_length, batch, steps, out):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMultipleChoice.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=int(batch),
        max_steps=int(steps),
        learning_rate=5e-5,
        lr_scheduler_type="linear",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=42,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Questions(data, tok, int(max_length)))
    metrics = trainer.train().metrics
    print(json.dumps({"questions_per_second": metrics["train_samples_per_second"], "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
