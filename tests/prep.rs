//! `medbert prep` on the real MedMCQA dev split and on broken files.

mod common;

use medbert::data::CHOICES;
use medbert::prep::cache::PreparedCache;
use std::path::Path;
use std::process::{Command, Output};

fn prep(inputs: &[&Path], output: &Path, extra: &[&str]) -> Output {
    prep_with_model(&common::default_model(), inputs, output, extra)
}

fn prep_with_model(model: &Path, inputs: &[&Path], output: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(common::medbert_bin());
    cmd.arg("prep").arg("--output").arg(output).arg("--model").arg(model);
    for input in inputs {
        cmd.arg("--input").arg(input);
    }
    cmd.args(extra).output().expect("run medbert prep")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn dev_json_and_parquet_encode_to_identical_caches() {
    let data = common::medmcqa_dir();
    let dir = common::scratch("json_vs_parquet");
    let (a, b) = (dir.join("from_json"), dir.join("from_parquet"));
    common::assert_success(&prep(&[&data.join("dev.json")], &a, &[]));
    common::assert_success(&prep(&[&data.join("validation-00000-of-00001.parquet")], &b, &[]));
    let (a, b) = (PreparedCache::open(&a).unwrap(), PreparedCache::open(&b).unwrap());
    assert_eq!(a.len(), 4183);
    assert!(a.to_arrays().unwrap() == b.to_arrays().unwrap(), "the two conventions encode differently");
    let counts = &a.manifest.inputs[0].counts;
    assert_eq!(counts.answers, [1348, 1085, 925, 825], "answer distribution from the dataset README");
    assert_eq!(counts.duplicate_options, 21);
    assert_eq!(counts.labelled, 4183);
    assert_eq!(a.manifest.inputs[0].cop_base, 1);
    assert_eq!(b.manifest.inputs[0].cop_base, 0);
    assert_eq!(a.id(0).unwrap(), "45258d3d-b974-44dd-a161-c3fccbdadd88");
}

/// Parquet files as pandas and pyarrow write them (tests/reference/parquet_variants.py says
/// which quirk each imitates: small integer `cop`, categories, null and unused columns, every
/// compression codec, several row groups) encode to the same cache as the hub's file.
#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn parquet_files_as_pandas_writes_them_encode_as_the_hubs() {
    let data = common::medmcqa_dir();
    let hub = data.join("validation-00000-of-00001.parquet");
    let dir = common::scratch("parquet_variants");
    common::run_reference("parquet_variants.py", &[&hub, &data.join("dev.json"), &dir]);
    common::assert_success(&prep(&[&hub], &dir.join("hub"), &[]));
    let expected = PreparedCache::open(&dir.join("hub")).unwrap().to_arrays().unwrap();
    for name in ["int8", "uint8", "codecs-snappy", "codecs-brotli", "codecs-lz4", "codecs-none"] {
        let out = dir.join(format!("from-{name}"));
        common::assert_success(&prep(&[&dir.join(format!("{name}.parquet"))], &out, &[]));
        let cache = PreparedCache::open(&out).unwrap();
        assert_eq!(cache.len(), 4183, "{name}");
        assert!(cache.to_arrays().unwrap() == expected, "{name} encodes differently from the hub's file");
    }
}

#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn token_ids_match_the_python_tokenizer() {
    let data = common::medmcqa_dir();
    let dir = common::scratch("python_ids");
    let cache_dir = dir.join("cache");
    common::assert_success(&prep(&[&data.join("dev.json")], &cache_dir, &["--max-length", "64"]));
    let reference = dir.join("reference.json");
    let dev = data.join("dev.json");
    common::run_reference(
        "tokenize_sample.py",
        &[&common::default_model(), &dev, Path::new("41"), Path::new("64"), &reference],
    );
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let cache = PreparedCache::open(&cache_dir).unwrap();
    let (ids, offsets) = (cache.input_ids().unwrap(), cache.offsets().unwrap());
    let index = reference["index"].as_array().unwrap();
    assert!(index.len() > 100, "sample too small");
    for (k, q) in index.iter().enumerate() {
        let q = q.as_u64().unwrap() as usize;
        for c in 0..CHOICES {
            let s = q * CHOICES + c;
            let ours: Vec<i64> = ids[offsets[s] as usize..offsets[s + 1] as usize].iter().map(|&t| t.into()).collect();
            let theirs: Vec<i64> =
                reference["ids"][k][c].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(ours, theirs, "question {q}, option {c}");
        }
    }
}

/// Model directories with a vocab.txt and no tokenizer.json, as most medical BERTs of
/// 2019-2021 were uploaded, with the settings files such directories carry (added tokens,
/// special tokens, case, accents, CJK; tests/reference/bert_tokenizer_layouts.py makes them
/// and says what each imitates): medbert's tokenizer gives the ids transformers'
/// BertTokenizer gives, on every 41st question of the real dev split with each option and on
/// texts with special tokens written out, accents and CJK characters.
#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn vocab_txt_directories_tokenize_as_transformers_bert_tokenizer() {
    let data = common::medmcqa_dir();
    let dir = common::scratch("bert_tokenizer_layouts");
    let vocab = common::default_model().join("vocab.txt");
    common::run_reference("bert_tokenizer_layouts.py", &[&vocab, &data.join("dev.json"), Path::new("41"), &dir]);
    assert_ids_as_reference(&dir, 5);
}

/// Each layout directory under `dir` tokenizes every text of the reference script's
/// reference.json ({"texts", "layouts": {name: ids per text}}) to transformers' ids; `layouts`
/// directories in all.
fn assert_ids_as_reference(dir: &Path, layouts: usize) {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let texts: Vec<&str> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(texts.len() > 400, "sample too small");
    let expected_layouts = reference["layouts"].as_object().unwrap();
    assert_eq!(expected_layouts.len(), layouts);
    for (name, expected) in expected_layouts {
        let tokenizer = medbert::encode::load_tokenizer(&dir.join(name), 512).unwrap();
        for (k, text) in texts.iter().enumerate() {
            let ours: Vec<u64> = tokenizer.encode(*text, true).unwrap().get_ids().iter().map(|&i| i.into()).collect();
            let theirs: Vec<u64> = expected[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(ours, theirs, "layout {name}, text {k}: {text:?}");
        }
    }
}

/// Byte-level BPE directories without tokenizer.json (tests/reference/bpe_tokenizer_layouts.py
/// builds them, a vocabulary trained on the dev split, and says what each imitates): medbert's
/// tokenizer gives the ids transformers' RobertaTokenizer gives, on every 41st question of the
/// real dev split with each option and on texts with special tokens, accents, CJK characters
/// and odd spacing.
#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn vocab_json_directories_tokenize_as_transformers_roberta_tokenizer() {
    let data = common::medmcqa_dir();
    let dir = common::scratch("bpe_tokenizer_layouts");
    common::run_reference("bpe_tokenizer_layouts.py", &[&data.join("dev.json"), Path::new("41"), &dir]);
    assert_ids_as_reference(&dir, 3);
}

const GOOD: &str = r#"{"id": "q1", "question": "Which vitamin deficiency causes scurvy?", "opa": "A", "opb": "B12", "opc": "C", "opd": "D", "cop": 3}
{"id": "q2", "question": "Drug of choice for absence seizures", "opa": "Ethosuximide", "opb": "Phenytoin", "opc": "Valproate", "opd": "Valproate", "cop": 1, "choice_type": "multi", "subject_name": "Pharmacology"}
"#;

#[test]
fn same_inputs_hit_the_cache_and_changed_options_rebuild_it() {
    let dir = common::scratch("cache_hit");
    let input = dir.join("train.json");
    std::fs::write(&input, GOOD).unwrap();
    let cache = dir.join("cache");
    let first = prep(&[&input], &cache, &[]);
    common::assert_success(&first);
    assert!(stdout(&first).contains("written"));
    let tokens = cache.join("tokens.safetensors");
    let modified = std::fs::metadata(&tokens).unwrap().modified().unwrap();

    let again = prep(&[&input], &cache, &[]);
    common::assert_success(&again);
    assert!(stdout(&again).contains("cache hit"), "{}", stdout(&again));
    assert_eq!(std::fs::metadata(&tokens).unwrap().modified().unwrap(), modified, "a hit rewrote the cache");

    let changed = prep(&[&input], &cache, &["--max-length", "16", "--pair"]);
    common::assert_success(&changed);
    assert!(stdout(&changed).contains("written"));
    let c = PreparedCache::open(&cache).unwrap();
    assert_eq!(c.manifest.encoding.max_length, 16);
    assert!(c.manifest.encoding.pair);
    assert!(c.token_type_ids().unwrap().contains(&1), "--pair gives the option segment type 1");
    assert_eq!(c.labels().unwrap(), [2, 0]);
    assert_eq!(c.manifest.subjects, ["Pharmacology"]);
    assert_eq!(c.subjects().unwrap(), [-1, 0]);
    let counts = &c.manifest.inputs[0].counts;
    assert_eq!((counts.multi, counts.duplicate_options), (1, 1));
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary directories left behind: {leftovers:?}");
}

#[test]
fn csv_and_unlabelled_test_files_are_read() {
    let dir = common::scratch("csv");
    let json = dir.join("a.json");
    std::fs::write(&json, GOOD).unwrap();
    let csv = dir.join("a.csv");
    std::fs::write(
        &csv,
        "id,question,opa,opb,opc,opd,cop,choice_type,subject_name\n\
         q1,Which vitamin deficiency causes scurvy?,A,B12,C,D,3,,\n\
         q2,Drug of choice for absence seizures,Ethosuximide,Phenytoin,Valproate,Valproate,1,multi,Pharmacology\n",
    )
    .unwrap();
    common::assert_success(&prep(&[&json], &dir.join("from_json"), &[]));
    common::assert_success(&prep(&[&csv], &dir.join("from_csv"), &[]));
    let (a, b) =
        (PreparedCache::open(&dir.join("from_json")).unwrap(), PreparedCache::open(&dir.join("from_csv")).unwrap());
    assert!(a.to_arrays().unwrap() == b.to_arrays().unwrap());

    let test = dir.join("test.json");
    std::fs::write(&test, GOOD.replace(", \"cop\": 3", "").replace(", \"cop\": 1", "")).unwrap();
    common::assert_success(&prep(&[&test], &dir.join("unlabelled"), &[]));
    assert_eq!(PreparedCache::open(&dir.join("unlabelled")).unwrap().labels().unwrap(), [-1, -1]);
}

/// Writes `content` as `name`, runs prep on it and returns (exit code, stderr); asserts
/// that no cache appeared.
fn broken(name: &str, content: &[u8]) -> (Option<i32>, String) {
    let dir = common::scratch(&format!("broken_{}", name.replace('.', "_")));
    let input = dir.join(name);
    std::fs::write(&input, content).unwrap();
    let out = prep(&[&input], &dir.join("cache"), &[]);
    assert!(!dir.join("cache").exists(), "{name}: a failed prep left a cache");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "{name}: temporary files left behind");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{name}: panic: {stderr}");
    (out.status.code(), stderr)
}

fn line(id: &str, cop: &str) -> String {
    format!(r#"{{"id": "{id}", "question": "Q {id}?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": {cop}}}"#)
}

#[test]
fn each_broken_input_fails_with_file_line_and_field() {
    let ok = line("q1", "1");
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("truncated.json", format!("{ok}\n{}", &line("q2", "2")[..40]), &["truncated.json:line 2", "malformed JSON"]),
        (
            "cop_range.json",
            format!("{ok}\n{}\n", line("q2", "5")),
            &["cop_range.json:line 2", "field `cop`", "5 is outside 1..=4"],
        ),
        ("cop_zero.json", format!("{ok}\n{}\n", line("q2", "0")), &[":line 2", "field `cop`", "0 is outside 1..=4"]),
        (
            "missing_opt.json",
            format!("{ok}\n{}\n", line("q2", "1").replace(r#""opc": "c", "#, "")),
            &[":line 2", "field `opc`", "missing"],
        ),
        (
            "empty_opt.json",
            format!("{ok}\n{}\n", line("q2", "1").replace(r#""opd": "d""#, r#""opd": " \t ""#)),
            &[":line 2", "field `opd`", "empty"],
        ),
        (
            "cop_type.json",
            format!("{ok}\n{}\n", line("q2", "\"two\"")),
            &[":line 2", "field `cop`", "expected an integer"],
        ),
        (
            "question_type.json",
            format!("{}\n", ok.replace(r#""Q q1?""#, "[1, 2]")),
            &[":line 1", "field `question`", "expected a string"],
        ),
        ("empty.json", String::new(), &["empty.json", "no questions"]),
        (
            "dup.json",
            format!("{ok}\n{}\n{}\n", line("q2", "2"), line("q1", "3")),
            &["dup.json:line 3", "field `id`", "duplicate id \"q1\"", "line 1"],
        ),
        ("no_cop.json", format!("{ok}\n{}\n", line("q2", "null")), &[":line 2", "field `cop`", "missing"]),
        ("array.json", "[1, 2]\n".to_string(), &[":line 1", "expected a JSON object"]),
        (
            "bad.csv",
            "id,question,opa,opb,opc,opd,cop\nq1,Q?,a,b,c,d,x\n".to_string(),
            &["bad.csv:row 1", "field `cop`", "\"x\""],
        ),
        (
            "nocol.csv",
            "id,question,opa,opb,opd,cop\nq1,Q?,a,b,d,1\n".to_string(),
            &["nocol.csv: field `opc`", "column missing"],
        ),
        ("notes.txt", ok.clone(), &["notes.txt", "unknown format"]),
    ];
    for (name, content, expected) in cases {
        let (code, stderr) = broken(name, content.as_bytes());
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("medbert: error")).count(), 1, "{name}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{name}: expected {e:?} in: {stderr}");
        }
    }
    let mut bytes = format!("{ok}\n").into_bytes();
    bytes.extend_from_slice(b"{\"id\": \"q2\", \"question\": \"caf\xe9\"}\n");
    let (code, stderr) = broken("latin1.json", &bytes);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("latin1.json:line 2") && stderr.contains("invalid UTF-8"), "{stderr}");
}

#[test]
fn huge_and_unicode_heavy_questions_encode() {
    let dir = common::scratch("unusual");
    let input = dir.join("odd.json");
    let huge = "the patient presents with fever ".repeat(3200);
    let unicode = "Ｃａｒｄｉａｃ\u{00a0}output ≥ 5 L/min — which ﬁnding? 患者 🫀 α-β\u{200b}";
    let rows = [
        line("q1", "1").replace("Q q1?", &huge),
        line("q2", "2").replace("Q q2?", unicode),
        line("q3", "3").replace(r#""opa": "a""#, "\"opa\": \"line\\nbreak\\tand\\u0007bell\""),
    ];
    std::fs::write(&input, rows.join("\n")).unwrap();
    assert!(huge.len() > 100_000);
    let out = prep(&[&input], &dir.join("cache"), &["--max-length", "32"]);
    common::assert_success(&out);
    let c = PreparedCache::open(&dir.join("cache")).unwrap();
    let offsets = c.offsets().unwrap();
    assert_eq!(offsets[1] - offsets[0], 32, "the huge question is truncated to --max-length");
    assert_eq!(c.manifest.lengths.truncated, 4);
    assert!(stdout(&out).contains("truncated 4 of 12"), "{}", stdout(&out));
}

/// Every sequence of the real dev split, as the cache holds it, equals the tokenizer's own
/// `encode` of the joined text (the cache tokenizes each question once and cuts it).
#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn cache_equals_the_tokenizers_own_encode_for_every_sequence() {
    let data = common::medmcqa_dir();
    let dev = data.join("dev.json");
    let dir = common::scratch("library_equivalence");
    let tokenizer = medbert::encode::load_tokenizer(&common::default_model(), 48).unwrap();
    let raw = medbert::data::read_file(&dev, medbert::data::Format::Jsonl).unwrap();
    let (questions, _) = medbert::data::validate(&dev, raw, 1, &mut medbert::data::IdRegistry::default()).unwrap();
    for (layout, flags) in [("joined", &[][..]), ("pair", &["--pair"][..])] {
        let out = dir.join(layout);
        let mut args = vec!["--max-length", "48"];
        args.extend_from_slice(flags);
        common::assert_success(&prep(&[&dev], &out, &args));
        let cache = PreparedCache::open(&out).unwrap();
        let (ids, types, offsets) =
            (cache.input_ids().unwrap(), cache.token_type_ids().unwrap(), cache.offsets().unwrap());
        for (qi, q) in questions.iter().enumerate() {
            for (c, option) in q.options.iter().enumerate() {
                let enc = if layout == "pair" {
                    tokenizer.encode((q.question.as_str(), option.as_str()), true).unwrap()
                } else {
                    tokenizer.encode(format!("{} {option}", q.question), true).unwrap()
                };
                let s = qi * CHOICES + c;
                let range = offsets[s] as usize..offsets[s + 1] as usize;
                let want: Vec<i32> = enc.get_ids().iter().map(|&t| t as i32).collect();
                let want_types: Vec<u8> = enc.get_type_ids().iter().map(|&t| t as u8).collect();
                assert_eq!(ids[range.clone()], want[..], "{layout}: question {qi} option {c}");
                assert_eq!(types[range], want_types[..], "{layout}: question {qi} option {c} type ids");
            }
        }
    }
}

#[test]
fn lemmatize_encodes_the_wordnet_lemmas() {
    let dir = common::scratch("lemmatize");
    let row = |q: &str, a: &str| {
        format!(r#"{{"id": "q1", "question": "{q}", "opa": "{a}", "opb": "b", "opc": "c", "opd": "d", "cop": 1}}"#)
    };
    let (inflected, lemmas) = (dir.join("inflected.json"), dir.join("lemmas.json"));
    std::fs::write(&inflected, row("Kidneys were enlarged with lesions", "Tubules")).unwrap();
    std::fs::write(&lemmas, row("kidney be enlarge with lesion", "tubule")).unwrap();
    common::assert_success(&prep(&[&inflected], &dir.join("a"), &["--lemmatize"]));
    common::assert_success(&prep(&[&lemmas], &dir.join("b"), &[]));
    let (a, b) = (PreparedCache::open(&dir.join("a")).unwrap(), PreparedCache::open(&dir.join("b")).unwrap());
    assert!(a.manifest.encoding.lemmatize && !b.manifest.encoding.lemmatize);
    assert_eq!(a.input_ids().unwrap(), b.input_ids().unwrap());
    common::assert_success(&prep(&[&inflected], &dir.join("c"), &[]));
    assert_ne!(PreparedCache::open(&dir.join("c")).unwrap().input_ids().unwrap(), a.input_ids().unwrap());
}

/// A WordPiece model that ships only vocab.txt (as many BioBERT checkpoints do) encodes as
/// its tokenizer.json does.
#[test]
fn a_vocab_txt_model_encodes_like_its_tokenizer_json() {
    let dir = common::scratch("vocab_only");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for file in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(common::default_model().join(file), model.join(file)).unwrap();
    }
    let input = dir.join("q.json");
    std::fs::write(&input, GOOD).unwrap();
    let run = |model_dir: &Path, out: &Path| {
        common::assert_success(&prep_with_model(model_dir, &[&input], out, &[]));
        PreparedCache::open(out).unwrap()
    };
    let a = run(&model, &dir.join("from_vocab"));
    let b = run(&common::default_model(), &dir.join("from_json"));
    assert!(a.manifest.encoding.tokenizer.ends_with("vocab.txt"));
    assert_eq!(a.input_ids().unwrap(), b.input_ids().unwrap());
    assert_eq!(a.token_type_ids().unwrap(), b.token_type_ids().unwrap());
}

/// A JSON Lines file that starts with a UTF-8 byte-order mark (as some Windows editors save
/// them) reads as the same questions as without it.
#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = common::scratch("bom");
    let plain = dir.join("plain.json");
    common::synthetic_task(&plain, 5, 9);
    let with_bom = dir.join("bom.json");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(std::fs::read(&plain).unwrap());
    std::fs::write(&with_bom, bytes).unwrap();
    for (input, name) in [(&plain, "a"), (&with_bom, "b")] {
        common::assert_success(&prep(&[input.as_path()], &dir.join(name), &[]));
    }
    let tokens = |name: &str| std::fs::read(dir.join(name).join(medbert::prep::cache::TOKENS_FILE)).unwrap();
    assert_eq!(tokens("a"), tokens("b"));
}

/// The hub's test split marks every question unanswered with `cop` -1 (its loading script
/// writes `cop - 1`, with 0 for the missing answers); the official test.json has no `cop`.
/// Either is a test file: prep and predict take it, train and eval refuse it; a file mixing
/// answered and unanswered rows is refused at its first unanswered row.
#[test]
fn unanswered_files_are_test_splits_that_only_predict_takes() {
    let dir = common::scratch("unanswered");
    let hub = dir.join("hub_test.json");
    std::fs::write(&hub, [line("t1", "-1"), line("t2", "-1")].join("\n")).unwrap();
    common::assert_success(&prep(&[&hub], &dir.join("hub"), &["--cop-base", "0"]));
    assert_eq!(PreparedCache::open(&dir.join("hub")).unwrap().labels().unwrap(), [-1, -1]);
    let (code, stderr) = code_and_stderr(&prep(&[&hub], &dir.join("one_based"), &[]));
    assert_eq!(code, Some(2), "-1 marks no answer only in the 0-based convention: {stderr}");
    assert!(stderr.contains("-1 is outside 1..=4"), "{stderr}");

    let mixed = dir.join("mixed.json");
    std::fs::write(&mixed, [line("m1", "0"), line("m2", "-1"), line("m3", "-1")].join("\n")).unwrap();
    let (code, stderr) = code_and_stderr(&prep(&[&mixed], &dir.join("mixed"), &["--cop-base", "0"]));
    assert_eq!(code, Some(2), "{stderr}");
    for part in ["mixed.json:line 2", "field `cop`", "-1 (no answer), but other rows have answers"] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }

    let test = dir.join("test.json");
    let no_cop = |id: &str| line(id, "1").replace(r#", "cop": 1"#, "");
    std::fs::write(&test, [no_cop("u1"), no_cop("u2")].join("\n")).unwrap();
    let labelled = dir.join("labelled.json");
    std::fs::write(&labelled, [line("l1", "1"), line("l2", "2")].join("\n")).unwrap();
    let medbert = |args: &[&str]| {
        let mut cmd = Command::new(common::medbert_bin());
        cmd.args(args).args(["--device", "cpu", "--model"]).arg(common::default_model());
        cmd.arg("--cache-dir").arg(dir.join("cache")).output().unwrap()
    };
    let train = |train: &Path, eval: &Path, out: &str| {
        let mut cmd = common::train_command(&common::default_model(), train, &dir.join(out));
        cmd.args(["--max-steps", "1", "--validation-file"]).arg(eval).output().unwrap()
    };
    let test_arg = test.to_str().unwrap();
    for (what, out) in [
        ("eval", medbert(&["eval", "--validation-file", test_arg])),
        ("train on it", train(&test, &labelled, "run_train")),
        ("evaluate on it", train(&labelled, &test, "run_eval")),
    ] {
        let (code, stderr) = code_and_stderr(&out);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        for part in [test_arg, "has no answers", "medbert predict"] {
            assert!(stderr.contains(part), "{what}: {part:?} missing: {stderr}");
        }
    }
    let csv = dir.join("predictions.csv");
    let out = medbert(&["predict", "--test-file", test_arg, "--output", csv.to_str().unwrap()]);
    common::assert_success(&out);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3, "a header and two predictions");
}

fn code_and_stderr(out: &Output) -> (Option<i32>, String) {
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}
