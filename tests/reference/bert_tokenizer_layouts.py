"""Reference for tests/prep.rs: transformers' BertTokenizer (through AutoTokenizer) on model
directories that carry a WordPiece vocab.txt and no tokenizer.json, as most medical BERTs of
2019-2021 were uploaded (BioBERT, SciBERT, BlueBERT, clinical BERTs), with the files and
settings such directories have (transformers' tokenization_bert.py and
tokenization_utils_base.py read them):

  uncased    config.json and vocab.txt only: BertTokenizer's defaults (lowercase, accents
             stripped with it, CJK characters split).
  cased      tokenizer_config.json {"do_lower_case": false} (BioBERT-cased's setting).
  added      added_tokens.json (tokens an older fine-tuning added, ids after the vocabulary)
             and special_tokens_map.json with an additional special token, as
             save_pretrained of transformers 3 and 4 wrote them.
  accents    {"do_lower_case": true, "strip_accents": false}: lowercase, accents kept.
  no_cjk     {"tokenize_chinese_chars": false, "never_split": ["[ENT]"]}.

usage: bert_tokenizer_layouts.py VOCAB_TXT DEV_JSONL STRIDE OUT_DIR

Writes the directories under OUT_DIR and OUT_DIR/reference.json: {"texts": [...],
"layouts": {name: [[ids of each text], ...]}} for every STRIDE-th question of DEV_JSONL
(question and each option, as medbert joins them) and texts with special tokens, accents and
CJK characters.
"""
import json
import os
import shutil
import sys
import unicodedata

from transformers import AutoTokenizer

SPECIAL = [
    "[MASK] is not [CLS] nor [SEP], and [PAD] [UNK] stay whole",
    "[mask] in lower case is text; so is [ cls ]",
    "Café, naïve résumé, Ångström, Señor Müller's façade",
    "中文医学 試験 テスト: 肝炎 hepatitis 한국어",
    "covid19 and Covid19 and COVID19; sarscov2 [ENT] marks an entity",
    "added tokens inside words: precovid19 covid19s",
]

LAYOUTS = {
    "uncased": {},
    "cased": {"tokenizer_config.json": {"do_lower_case": False}},
    "added": {
        "added_tokens.json": None,
        "special_tokens_map.json": {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "additional_special_tokens": ["[ENT]"],
        },
        "tokenizer_config.json": {"do_lower_case": True, "model_max_length": 512},
    },
    "accents": {"tokenizer_config.json": {"do_lower_case": True, "strip_accents": False}},
    "no_cjk": {"tokenizer_config.json": {"tokenize_chinese_chars": False, "never_split": ["[ENT]"]}},
}


def clean(text):
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(kept.split())


def main(vocab, dev, stride, out):
    vocab_size = sum(1 for _ in open(vocab, encoding="utf-8"))
    texts = list(SPECIAL)
    with open(dev, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % int(stride) == 0:
                row = json.loads(line)
                texts += [f"{clean(row['question'])} {clean(row[k])}" for k in ("opa", "opb", "opc", "opd")]
    layouts = {}
    for name, files in LAYOUTS.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        shutil.copy(vocab, os.path.join(d, "vocab.txt"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "bert", "vocab_size": vocab_size}, f)
        for file, content in files.items():
            if file == "added_tokens.json":
                content = {"covid19": vocab_size, "sarscov2": vocab_size + 1}
            with open(os.path.join(d, file), "w") as f:
                json.dump(content, f)
        tok = AutoTokenizer.from_pretrained(d)
        layouts[name] = tok(texts, truncation=True, max_length=512)["input_ids"]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"texts": texts, "layouts": layouts}, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
