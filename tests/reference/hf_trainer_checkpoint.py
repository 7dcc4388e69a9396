"""An HF Trainer run's output directory, made by the HF Trainer itself.

usage: hf_trainer_checkpoint.py MODEL_DIR OUT_DIR

Fine-tunes AutoModelForMultipleChoice from MODEL_DIR for 2 steps of 2 questions (4 in all:
checkpoint-1 is at epoch 0.5) with save_steps=1 on the CPU, its tokenizer passed as the
processing class, as the HF Trainer's multiple-choice example does: OUT_DIR/checkpoint-1 and
checkpoint-2 hold what the Trainer writes (model.safetensors, config.json, the tokenizer's
files, trainer_state.json with a float epoch, optimizer.pt, scheduler.pt, rng_state.pth,
training_args.bin).
"""
import sys

import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer, Trainer, TrainingArguments


class Questions(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(1000, 2000, (4, 16), generator=g),
                "attention_mask": torch.ones(4, 16, dtype=torch.long),
                "token_type_ids": torch.zeros(4, 16, dtype=torch.long),
                "labels": torch.tensor(i % 4)}


def main(model_dir: str, out: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForMultipleChoice.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=2, num_train_epochs=1, save_steps=1,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="steps")
    Trainer(model=model, args=args, train_dataset=Questions(),
            processing_class=AutoTokenizer.from_pretrained(model_dir)).train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
