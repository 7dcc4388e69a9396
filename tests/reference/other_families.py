"""Model directories of encoder families medbert does not build, as transformers saves them.

usage: other_families.py OUT_DIR

Tiny random weights (hidden size 32, 2 layers), saved with save_pretrained:
- deberta-v2-mc: a DebertaV2ForMultipleChoice (model_type "deberta-v2", type_vocab_size 0);
- albert-mc: an AlbertForMultipleChoice (model_type "albert"; its embeddings, like ELECTRA's,
  are narrower than the hidden size, but its layers are shared and named otherwise).
"""
import sys
from pathlib import Path

import torch
from transformers import AlbertConfig, AlbertForMultipleChoice, DebertaV2Config, DebertaV2ForMultipleChoice

SHAPE = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def main(out: Path) -> None:
    torch.manual_seed(0)
    DebertaV2ForMultipleChoice(DebertaV2Config(**SHAPE)).save_pretrained(out / "deberta-v2-mc")
    AlbertForMultipleChoice(AlbertConfig(**SHAPE, embedding_size=16)).save_pretrained(out / "albert-mc")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
