"""Reference for tests/model.rs: transformers' BertForMultipleChoice on a few questions.

usage: bert_mc.py MODEL_DIR OUT_DIR

Writes OUT_DIR/reference.safetensors (inputs, classifier, logits), OUT_DIR/mc_model/ (the
same model saved by save_pretrained, so with `bert.`-prefixed names and the classifier),
OUT_DIR/mc_model_bin/ (the same, as PyTorch's pickle pytorch_model.bin), and OUT_DIR/bert_base/:
a randomly initialised model of bert-base's shape (transformers' BertConfig() defaults, seed 0)
saved by save_pretrained, whose logits on the same padded batch are `bert_base_logits`.
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
    torch.manual_seed(0)
    base = BertForMultipleChoice(BertConfig()).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
    base.save_pretrained(out / "bert_base")
    save_file(
        {
            **inputs,
            "classifier.weight": model.classifier.weight.detach().contiguous(),
            "classifier.bias": model.classifier.bias.detach().contiguous(),
            "logits": logits.contiguous(),
            "bert_base_logits": base_logits.contiguous(),
        },
        str(out / "reference.safetensors"),
    )
    model.save_pretrained(out / "mc_model", safe_serialization=True)
    # transformers 5 saves safetensors only; hub checkpoints' pytorch_model.bin is torch.save of
    # model.state_dict() (an OrderedDict with _metadata), as here.
    (out / "mc_model_bin").mkdir(exist_ok=True)
    model.config.save_pretrained(out / "mc_model_bin")
    torch.save(model.state_dict(), out / "mc_model_bin" / "pytorch_model.bin")
    # What else torch.save writes: a transposed view, views sharing one storage at an offset,
    # half, bfloat16 and integer storages; and the same values, contiguous, as safetensors.
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    odd = {"transposed": base.t(), "row": base[2], "same": base, "half": base.half() / 7,
           "bf16": base.bfloat16() / 3, "ids": torch.arange(5, dtype=torch.int64) - 2}
    torch.save(odd, out / "odd_tensors.bin")
    torch.save(odd, out / "odd_tensors_legacy.bin", _use_new_zipfile_serialization=False)
    save_file({k: v.clone().contiguous() for k, v in odd.items()}, str(out / "odd_tensors.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
