"""The reference for check.py's speed step: the HF Trainer fine-tuning BertForMultipleChoice on
the questions of a medbert cache, every sequence padded to the cache's max length (as
`medbert train --pad-to-max-length`) or each batch to its longest sequence (dynamic padding, as
users run it), with its defaults otherwise (SDPA attention, fused AdamW).

usage: trainer_bench.py MODEL_DIR CACHE_DIR BATCH STEPS PRECISION(fp32|bf16) OUT_DIR [max|longest] [breakdown]
Prints {"questions_per_second": ...} (the Trainer's train_samples_per_second); with `breakdown`
also "step_breakdown_ms": the mean forward, backward and optimizer milliseconds per step (the
first step left out), the device synchronised at each boundary as `medbert train
--step-breakdown` does.
"""
import collections
import time
import json
import sys

import torch
from safetensors.numpy import load_file
from transformers import BertForMultipleChoice, Trainer, TrainerCallback, TrainingArguments


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timed(Trainer):
    """The Trainer with each step's forward, backward and optimizer phases timed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.totals, self.steps = collections.defaultdict(float), 0
        self.add_callback(OptimizerClock(self))

    def lap(self, phase, since):
        sync()
        if self.steps > 0:
            self.totals[phase] += time.perf_counter() - since
        return time.perf_counter()

    def compute_loss(self, model, inputs, *args, **kwargs):
        sync()
        started = time.perf_counter()
        out = super().compute_loss(model, inputs, *args, **kwargs)
        self.after_forward = self.lap("forward", started)
        return out

    def training_step(self, model, inputs, *args, **kwargs):
        out = super().training_step(model, inputs, *args, **kwargs)
        self.after_backward = self.lap("backward", self.after_forward)
        return out

    def means(self):
        counted = max(self.steps - 1, 1)
        return {k: v * 1e3 / counted for k, v in self.totals.items()} | {"steps": self.steps - 1}


class OptimizerClock(TrainerCallback):
    """From the last backward to the end of the optimizer step: clipping and AdamW, as
    medbert's optimizer phase."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.lap("optimizer", self.trainer.after_backward)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.steps += 1


class Questions(torch.utils.data.Dataset):
    def __init__(self, cache):
        t = load_file(f"{cache}/tokens.safetensors")
        width = json.load(open(f"{cache}/manifest.json"))["encoding"]["max_length"]
        offsets, n = t["offsets"], (len(t["offsets"]) - 1) // 4
        self.x = {k: torch.zeros(n * 4, width, dtype=torch.long) for k in ("input_ids", "token_type_ids", "attention_mask")}
        for s in range(n * 4):
            a, b = offsets[s], offsets[s + 1]
            self.x["input_ids"][s, : b - a] = torch.from_numpy(t["input_ids"][a:b].astype("int64"))
            self.x["token_type_ids"][s, : b - a] = torch.from_numpy(t["token_type_ids"][a:b].astype("int64"))
            self.x["attention_mask"][s, : b - a] = 1
        self.x = {k: v.view(n, 4, width) for k, v in self.x.items()}
        self.labels = torch.from_numpy(t["labels"].astype("int64"))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.labels[i]}


def to_longest(features):
    """Stacks a batch and cuts it at its longest sequence."""
    batch = {k: torch.stack([f[k] for f in features]) for k in features[0]}
    width = int(batch["attention_mask"].sum(-1).max())
    return {k: v[..., :width] if v.dim() == 3 else v for k, v in batch.items()}


def main(model_dir, cache, batch, steps, precision, out, padding="max", breakdown=""):
    model = BertForMultipleChoice.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=int(batch), max_steps=int(steps), learning_rate=5e-5,
        lr_scheduler_type="linear", save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), bf16=precision == "bf16", dataloader_num_workers=0, seed=42,
        disable_tqdm=True,
    )
    collator = to_longest if padding == "longest" else None
    kind = Timed if breakdown == "breakdown" else Trainer
    trainer = kind(model=model, args=args, train_dataset=Questions(cache), data_collator=collator)
    metrics = trainer.train().metrics
    result = {"questions_per_second": metrics["train_samples_per_second"], "optim": str(args.optim),
              "attention": model.config._attn_implementation}
    if kind is Timed:
        result["step_breakdown_ms"] = trainer.means()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:9])
