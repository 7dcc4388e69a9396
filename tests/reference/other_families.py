"""Model directories of encoder families other than BERT, as transformers saves them.

usage: other_families.py OUT_DIR

Tiny random weights (hidden size 32, 2 layers), saved with save_pretrained:
- roberta-bare: a RobertaModel (the bare encoder sentence-transformers and several biomedical
  RoBERTa models ship; tensor names without a prefix, as a bare BertModel's), config.json with
  model_type "roberta" and type_vocab_size 1;
- deberta-v2-mc: a DebertaV2ForMultipleChoice (model_type "deberta-v2");
- electra-mc: an ElectraForMultipleChoice (model_type "electra", embedding_size 16 below the
  hidden size).
"""
import sys
from pathlib import Path

import torch
from transformers import (DebertaV2Config, DebertaV2ForMultipleChoice, ElectraConfig, ElectraForMultipleChoice,
                          RobertaConfig, RobertaModel)

SHAPE = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def main(out: Path) -> None:
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(**SHAPE, type_vocab_size=1)).save_pretrained(out / "roberta-bare")
    DebertaV2ForMultipleChoice(DebertaV2Config(**SHAPE)).save_pretrained(out / "deberta-v2-mc")
    ElectraForMultipleChoice(ElectraConfig(**SHAPE, embedding_size=16)).save_pretrained(out / "electra-mc")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
