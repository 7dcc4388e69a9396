"""Reference for tests/prep.rs: transformers' RobertaTokenizer (through AutoTokenizer) on model
directories that carry a byte-level BPE as vocab.json + merges.txt and no tokenizer.json, as
RoBERTa-family checkpoints converted from fairseq were uploaded (roberta-base's files before
tokenizer.json was added; allenai/biomed_roberta_base; RoBERTa-base-PM: config.json,
vocab.json, merges.txt, pytorch_model.bin), with the settings transformers 5's
tokenization_roberta.py and tokenization_utils_base.py read beside them:

  plain      config.json (model_type roberta), vocab.json, merges.txt only.
  prefix     tokenizer_config.json {"add_prefix_space": true}.
  added      added_tokens.json (tokens a fine-tuning added, ids after the vocabulary) and
             special_tokens_map.json with an additional special token, as save_pretrained of
             transformers 3 and 4 wrote them.

The vocabulary is trained here with the tokenizers library (ByteLevelBPETokenizer, RoBERTa's
special tokens first, as fairseq's dictionary puts them) on the questions of DEV_JSONL.

usage: bpe_tokenizer_layouts.py DEV_JSONL STRIDE OUT_DIR

Writes the directories under OUT_DIR and OUT_DIR/reference.json: {"texts": [...],
"layouts": {name: [[ids of each text], ...]}} for every STRIDE-th question of DEV_JSONL
(question and each option, joined by a space as medbert joins them) and texts with special
tokens, accents, CJK characters and odd spacing.
"""
import json
import os
import sys

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SPECIAL = [
    "<mask> is not <s> nor </s>, and <pad> <unk> stay whole",
    "<MASK> in capitals is text; so is < s >",
    "Café, naïve résumé, Ångström, Señor Müller's façade",
    "中文医学 試験 テスト: 肝炎 hepatitis 한국어 🙂",
    "covid19 and Covid19 and COVID19; sarscov2 <ent> marks an entity",
    "  leading spaces,\ttabs\tand\n\nnew lines   between   words  ",
    "added tokens inside words: precovid19 covid19s",
]

LAYOUTS = {
    "plain": {},
    "prefix": {"tokenizer_config.json": {"add_prefix_space": True}},
    "added": {
        "added_tokens.json": None,
        "special_tokens_map.json": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": "<mask>",
            "additional_special_tokens": ["<ent>"],
        },
        "tokenizer_config.json": {"model_max_length": 512},
    },
}


def main(dev, stride, out):
    rows = [json.loads(line) for line in open(dev, encoding="utf-8")]
    corpus = [f"{r['question']} {r[k]}" for r in rows for k in ("opa", "opb", "opc", "opd")]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=6000, min_frequency=2, special_tokens=SPECIAL_TOKENS, show_progress=False)
    vocab_size = bpe.get_vocab_size()
    texts = list(SPECIAL)
    texts += [f"{r['question']} {r[k]}" for i, r in enumerate(rows) if i % int(stride) == 0 for k in ("opa", "opb", "opc", "opd")]
    layouts = {}
    for name, files in LAYOUTS.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        bpe.save_model(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "roberta", "vocab_size": vocab_size}, f)
        for file, content in files.items():
            if file == "added_tokens.json":
                content = {"covid19": vocab_size, "sarscov2": vocab_size + 1}
            with open(os.path.join(d, file), "w") as f:
                json.dump(content, f)
        tok = AutoTokenizer.from_pretrained(d)
        assert type(tok).__name__ == "RobertaTokenizer", type(tok)
        layouts[name] = tok(texts, truncation=True, max_length=512)["input_ids"]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"texts": texts, "layouts": layouts}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
