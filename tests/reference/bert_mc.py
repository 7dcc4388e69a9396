"""Reference for tests/model.rs: transformers' BertForMultipleChoice on a few questions.

usage: bert_mc.py MODEL_DIR OUT_DIR

Writes OUT_DIR/reference.safetensors (inputs, classifier, logits) and OUT_DIR/mc_model/ (the
same model saved by save_pretrained, so with `bert.`-prefixed names and the classifier), and
OUT_DIR/mc_model_bin/ (the same, as PyTorch's pickle pytorch_model.bin).
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForMultipleChoice

QUESTIONS = [
    ("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]),
    ("Drug of choice for absence seizures in children is", ["Ethosuximide", "Phenytoin", "Carbamazepine", "Phenobarbitone"]),
    ("Most common site of carcinoma of the oesophagus in India:", ["Upper third", "Middle third", "Lower third", "Gastro-oesophageal junction"]),
]


def main(model_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    torch.manual_seed(0)
    model = BertForMultipleChoice.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [f"{q} {o}" for q, opts in QUESTIONS for o in opts]
    enc = tok(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    shape = (len(QUESTIONS), 4, -1)
    inputs = {k: enc[k].view(shape).contiguous() for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file(
        {
            **inputs,
            "classifier.weight": model.classifier.weight.detach().contiguous(),
            "classifier.bias": model.classifier.bias.detach().contiguous(),
            "logits": logits.contiguous(),
        },
        str(out / "reference.safetensors"),
    )
    model.save_pretrained(out / "mc_model", safe_serialization=True)
    model.save_pretrained(out / "mc_model_bin", safe_serialization=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
