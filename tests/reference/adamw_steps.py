"""Reference for tests/train.rs: a training step of BertForMultipleChoice with torch AdamW.

usage: adamw_steps.py MODEL_DIR OUT_DIR

Dropout is set to 0 so both frameworks compute the same function. Each step (LRS): cross-
entropy on the same batch, backward, clip_grad_norm_(1.0), AdamW (lr 5e-5, weight decay
0.01 except biases and LayerNorm, betas 0.9/0.999) as the HF Trainer groups it. eps is 1e-6,
not the default 1e-8: Adam divides each gradient by its own magnitude, so elements whose
gradient is float rounding noise (~1e-9) would take full-size steps in directions that differ
between two correct implementations; a larger eps keeps the comparison about the algorithm.
Writes OUT_DIR/start.safetensors (inputs, labels, the classifier the run started from) and
OUT_DIR/end.safetensors (first logits and loss, grad norms, the first step's clipped gradients
(grad.<name>), every parameter after the last step (param.<name>)).
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

QUESTIONS = [
    ("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]),
    ("Drug of choice for absence seizures in children is", ["Ethosuximide", "Phenytoin", "Carbamazepine", "Phenobarbitone"]),
    ("Most common site of carcinoma of the oesophagus in India:", ["Upper third", "Middle third", "Lower third", "Gastro-oesophageal junction"]),
]
LABELS = [2, 0, 1]
LRS = [5e-5]


def main(model_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMultipleChoice.from_pretrained(model_dir, config=config, attn_implementation="eager").train()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [f"{q} {o}" for q, opts in QUESTIONS for o in opts]
    enc = tok(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    inputs = {k: enc[k].view(len(QUESTIONS), 4, -1).contiguous() for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.tensor(LABELS)
    save_file(
        {**inputs, "labels": labels, "classifier.weight": model.classifier.weight.detach().clone(),
         "classifier.bias": model.classifier.bias.detach().clone()},
        str(out / "start.safetensors"),
    )
    no_decay = lambda n: n.endswith(".bias") or "LayerNorm" in n
    groups = [
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-6)
    result = {}
    for step, lr in enumerate(LRS):
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if step == 0:
            result["logits"], result["loss"] = logits.detach().clone(), loss.detach().reshape(1).clone()
        opt.zero_grad()
        loss.backward()
        result[f"grad_norm.{step}"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).reshape(1).clone()
        if step == 0:
            result.update({f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    for name, p in model.named_parameters():
        result[f"param.{name}"] = p.detach().clone()
    save_file(result, str(out / "end.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
