//! Batches from a prepared cache: dynamic padding equal to the tokenizer's own padded batch.

mod common;

use medbert::batch::{collate, question_lengths};
use medbert::prep::cache::PreparedCache;
use medbert::prep::{self, PrepOptions};

const QUESTIONS: [(&str, [&str; 4], i64); 3] = [
    ("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"], 2),
    (
        "Drug of choice for absence seizures in children is",
        ["Ethosuximide", "Phenytoin", "Carbamazepine", "Phenobarbitone"],
        0,
    ),
    (
        "Most common site of carcinoma of the oesophagus in India:",
        ["Upper third", "Middle third", "Lower third", "Gastro-oesophageal junction"],
        1,
    ),
];

#[test]
fn collate_pads_like_the_tokenizer_and_keeps_labels() {
    let dir = common::scratch("batch");
    let input = dir.join("q.json");
    let lines: Vec<String> = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, (q, o, label))| {
            serde_json::json!({"id": format!("q{i}"), "question": q, "opa": o[0], "opb": o[1], "opc": o[2], "opd": o[3], "cop": label + 1})
                .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let opts = PrepOptions::new(vec![input], dir.join("cache"), common::default_model(), 128);
    prep::run(&opts).unwrap();
    let cache = PreparedCache::open(&opts.output).unwrap();

    let order = [2usize, 0];
    let (batch, labels) = collate(&cache, &order).unwrap();
    let tokenizer = medbert::encode::load_tokenizer(&common::default_model(), 128).unwrap();
    let picked: Vec<(&str, &[&str])> = order.iter().map(|&i| (QUESTIONS[i].0, &QUESTIONS[i].1[..])).collect();
    let want = medbert::batch::pad_all(&medbert::encode::encode_questions(&tokenizer, &picked).unwrap());
    assert!(batch.input_ids.equal(&want.input_ids), "input_ids differ");
    assert!(batch.attention_mask.equal(&want.attention_mask), "attention_mask differs");
    assert!(batch.token_type_ids.equal(&want.token_type_ids), "token_type_ids differ");
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [1, 2]);

    let lengths = question_lengths(&cache).unwrap();
    let longest = batch.input_ids.size()[2] as u32;
    assert_eq!(lengths[2].max(lengths[0]), longest, "padding is to the longest sequence in the batch");
    assert!(collate(&cache, &[3]).is_err());
}
