//! Training steps against torch + transformers in the venv.

mod common;

use medbert::model::{ChoiceBatch, ModelConfig, MultipleChoiceModel, CONFIG_FILE, WEIGHTS_FILE};
use medbert::train::batch_loss;
use medbert::train::optim::{clip_grad_norm, AdamW};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// MiniLM without dropout, from the pretrained weights and the reference's classifier.
fn reference_model(model_dir: &Path, start: &HashMap<String, Tensor>) -> MultipleChoiceModel {
    let config = ModelConfig::from_file(&model_dir.join(CONFIG_FILE)).unwrap().without_dropout();
    let mut model = MultipleChoiceModel::new(config, Device::Cpu).unwrap();
    model.load_weights(&model_dir.join(WEIGHTS_FILE)).unwrap();
    let vars = model.vs.variables();
    tch::no_grad(|| {
        for name in ["classifier.weight", "classifier.bias"] {
            vars[name].shallow_clone().copy_(&start[name]);
        }
    });
    model
}

/// The largest |ours - theirs| over the optimizer's variables, and where.
fn worst_param(opt: &AdamW, end: &HashMap<String, Tensor>, prefix: &str) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, var) in opt.variables() {
        let d = common::max_abs_diff(var, &end[&format!("{prefix}{name}")]);
        if d > worst.0 {
            worst = (d, name.to_string());
        }
    }
    worst
}

const LR: f64 = 5e-5;
const EPS: f64 = 1e-6;

/// Every `--lr-scheduler-type` gives transformers' learning rate at every step.
#[test]
fn every_schedule_matches_transformers() {
    use medbert::train::optim::{Schedule, SchedulerType};
    let dir = common::scratch("schedules");
    let out = dir.join("lrs.json");
    common::run_reference("schedules.py", &[&out]);
    let want: HashMap<String, Vec<f64>> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for (name, kind) in [
        ("linear", SchedulerType::Linear),
        ("cosine", SchedulerType::Cosine),
        ("constant", SchedulerType::Constant),
        ("constant_with_warmup", SchedulerType::ConstantWithWarmup),
        ("polynomial", SchedulerType::Polynomial),
    ] {
        let schedule = Schedule { kind, base_lr: 3e-5, warmup_steps: 7, total_steps: 40 };
        for (step, theirs) in want[name].iter().enumerate() {
            let ours = schedule.lr(step);
            assert!((ours - theirs).abs() <= 1e-12 * theirs.abs().max(1e-12), "{name} step {step}: {ours} vs {theirs}");
        }
    }
}

#[test]
fn an_adamw_step_matches_torch() {
    let out = common::scratch("adamw");
    let model_dir = common::default_model();
    common::run_reference("adamw_steps.py", &[&model_dir, &out]);
    let read =
        |f: &str| -> HashMap<String, Tensor> { Tensor::read_safetensors(out.join(f)).unwrap().into_iter().collect() };
    let (start, end) = (read("start.safetensors"), read("end.safetensors"));
    let batch = ChoiceBatch {
        input_ids: start["input_ids"].shallow_clone(),
        attention_mask: start["attention_mask"].shallow_clone(),
        token_type_ids: start["token_type_ids"].shallow_clone(),
    };

    // Forward and backward: logits, loss, clipped gradients.
    let model = reference_model(&model_dir, &start);
    let mut opt = AdamW::new(&model.vs, 0.01, (0.9, 0.999), EPS);
    assert_eq!(opt.variables().count(), 105);
    let (loss, logits) = batch_loss(&model, &batch, &start["labels"], true).unwrap();
    let d = common::max_abs_diff(&logits, &end["logits"]);
    assert!(d < 1e-5, "logits differ by {d:e}");
    let d = (loss.double_value(&[]) - end["loss"].double_value(&[0])).abs();
    assert!(d < 1e-5, "loss differs by {d:e}");
    opt.zero_grad().unwrap();
    loss.backward();
    let norm = clip_grad_norm(opt.variables().map(|(_, v)| v), 1.0).unwrap().double_value(&[]);
    let want = end["grad_norm.0"].double_value(&[0]);
    assert!((norm - want).abs() < 1e-5 * want.max(1.0), "grad norm {norm} vs {want}");
    let grad_diff =
        opt.variables().map(|(n, v)| common::max_abs_diff(&v.grad(), &end[&format!("grad.{n}")])).fold(0.0, f64::max);
    assert!(grad_diff < 1e-5, "gradients differ by {grad_diff:e}");

    // The whole step.
    opt.step(LR).unwrap();
    let (d, name) = worst_param(&opt, &end, "param.");
    assert!(d < 1e-5, "after the step {name} differs by {d:e}");

    // The optimizer alone, fed torch's own gradients: the update rule, not autograd noise.
    let model = reference_model(&model_dir, &start);
    let mut opt = AdamW::new(&model.vs, 0.01, (0.9, 0.999), EPS);
    let surrogate = opt
        .variables()
        .map(|(n, v)| (v * &end[&format!("grad.{n}")]).sum(tch::Kind::Float))
        .fold(Tensor::zeros([], (tch::Kind::Float, Device::Cpu)), |acc, t| acc + t);
    surrogate.backward();
    opt.step(LR).unwrap();
    let (d, name) = worst_param(&opt, &end, "param.");
    assert!(d < 1e-7, "with torch's gradients {name} differs by {d:e}");
}

#[test]
fn fine_tuning_learns_a_synthetic_task_and_saves_a_transformers_checkpoint() {
    let dir = common::scratch("learn");
    let (train, valid) = (dir.join("train.json"), dir.join("valid.json"));
    common::synthetic_task(&train, 256, 1);
    common::synthetic_task(&valid, 96, 2);
    let out = common::train_command(&common::default_model(), &train, &dir.join("run"))
        .args(["--num-train-epochs", "4", "--learning-rate", "1e-4", "--per-device-train-batch-size", "16"])
        .args(["--warmup-ratio", "0.1", "--logging-steps", "5", "--validation-file"])
        .arg(&valid)
        .output()
        .unwrap();
    common::assert_success(&out);
    let summary = common::summary(&dir.join("run"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("eval accuracy") && table.contains("curves.png"), "summary table:\n{table}");
    let png = std::fs::read(dir.join("run/curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "curves.png is not a drawn PNG");
    let accuracy =
        summary["final_eval"]["correct"].as_f64().unwrap() / summary["final_eval"]["questions"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "accuracy {accuracy} after fine-tuning: {summary}");
    assert_eq!(summary["steps"], 64);

    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.get("eval_accuracy").is_some()).count(), 4, "one evaluation per epoch");
    assert!(lines.iter().filter(|l| l.get("loss").is_some()).count() >= 12);

    // transformers loads the checkpoint and computes the same logits as we do.
    let ckpt = dir.join("run/final");
    let (model, report) = MultipleChoiceModel::from_dir(&ckpt, Device::Cpu).unwrap();
    assert!(report.initialised.is_empty(), "{report:?}");
    let tokenizer = medbert::encode::load_tokenizer(&ckpt, 128).unwrap();
    let batch = medbert::batch::pad_all(
        &medbert::encode::encode_questions(
            &tokenizer,
            &[("Which option names the liver?", &["heart", "liver", "skin", "colon"])],
        )
        .unwrap(),
    );
    let inputs = dir.join("inputs.safetensors");
    Tensor::write_safetensors(
        &[
            ("input_ids", &batch.input_ids),
            ("attention_mask", &batch.attention_mask),
            ("token_type_ids", &batch.token_type_ids),
        ],
        &inputs,
    )
    .unwrap();
    let theirs_path = dir.join("theirs.safetensors");
    common::run_reference("checkpoint_logits.py", &[&ckpt, &inputs, &theirs_path]);
    let theirs = &Tensor::read_safetensors(&theirs_path).unwrap()[0].1;
    let ours = tch::no_grad(|| model.forward(&batch, false)).unwrap();
    assert!(common::max_abs_diff(&ours, theirs) < 1e-5, "transformers computes other logits from our checkpoint");
    assert_eq!(ours.argmax(-1, false).int64_value(&[0]), 1, "the fine-tuned model answers the synthetic question");
}

#[test]
fn evaluation_is_deterministic_and_builds_no_graph() {
    let dir = common::scratch("eval_mode");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 20, 3);
    let opts = medbert::prep::PrepOptions::new(vec![data], dir.join("cache"), common::default_model(), 64);
    medbert::prep::run(&opts).unwrap();
    let cache = medbert::prep::cache::PreparedCache::open(&opts.output).unwrap();
    let (model, _) = MultipleChoiceModel::from_dir(&common::default_model(), Device::Cpu).unwrap();
    let evaluate = || {
        let single = medbert::dist::Comm::single();
        medbert::eval::evaluate(&model, &cache, None, 8, medbert::device::Precision::Fp32, &single).unwrap()
    };
    let (a, b) = (evaluate(), evaluate());
    assert_eq!(a, b, "two evaluations differ: dropout is on");
    assert_eq!(a.questions, 20);
    let (batch, _) = medbert::batch::collate(&cache, &[0, 1]).unwrap();
    let logits = tch::no_grad(|| model.forward(&batch, false)).unwrap();
    assert!(!logits.requires_grad(), "evaluation recorded an autograd graph");
}

/// `medbert predict` writes one CSV row per question, quoted where an id needs it, with the
/// logits of our forward pass, their softmax, and the argmax as a 1-based option.
#[test]
fn predictions_are_a_quoted_csv_of_the_models_logits() {
    let dir = common::scratch("predict");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 6, 5);
    let ids = ["plain", "with,comma", "with \"quotes\"", "s5-3", "s5-4", "s5-5"];
    let text = std::fs::read_to_string(&data).unwrap();
    let lines: Vec<String> = text
        .lines()
        .zip(ids)
        .map(|(line, id)| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["id"] = id.into();
            v.to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    // A checkpoint with a classifier, so that the binary and this test load the same weights.
    let checkpoint = dir.join("model");
    let (model, _) = MultipleChoiceModel::from_dir(&common::default_model(), Device::Cpu).unwrap();
    medbert::train::checkpoint::save(&checkpoint, &model.vs, &common::default_model()).unwrap();
    let csv_path = dir.join("predictions.csv");
    let out = std::process::Command::new(common::medbert_bin())
        .args(["predict", "--device", "cpu", "--model"])
        .arg(&checkpoint)
        .arg("--test-file")
        .arg(&data)
        .arg("--cache-dir")
        .arg(dir.join("prepared"))
        .arg("--output")
        .arg(&csv_path)
        .output()
        .unwrap();
    common::assert_success(&out);

    let cache = medbert::prep::cache::PreparedCache::open(&dir.join("prepared/d")).unwrap();
    let (batch, _) = medbert::batch::collate(&cache, &(0..6).collect::<Vec<_>>()).unwrap();
    let logits: Vec<Vec<f32>> = Vec::try_from(tch::no_grad(|| model.forward(&batch, false)).unwrap()).unwrap();

    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[..3], ["id", "prediction", "p_opa"]);
    assert_eq!(header.len(), 10);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    for ((row, id), want) in rows.iter().zip(ids).zip(&logits) {
        assert_eq!(&row[0], id);
        let value = |i: usize| row[i].parse::<f64>().unwrap();
        let got: Vec<f64> = (6..10).map(value).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - f64::from(*w)).abs() < 1e-5, "{id}: logits {got:?} vs {want:?}");
        }
        let norm: f64 = got.iter().map(|l| l.exp()).sum();
        for (c, l) in got.iter().enumerate() {
            assert!((value(2 + c) - l.exp() / norm).abs() < 1e-5, "{id}: probability {c}");
        }
        let best = (0..4).max_by(|&a, &b| got[a].total_cmp(&got[b])).unwrap();
        assert_eq!(row[1].parse::<usize>().unwrap(), best + 1);
    }
}

#[test]
fn holdout_evaluates_the_last_questions_of_the_training_file() {
    let dir = common::scratch("holdout");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 40, 4);
    let run = |out: &str, extra: &[&str]| {
        common::train_command(&common::default_model(), &data, &dir.join(out))
            .args(["--max-steps", "2", "--per-device-train-batch-size", "8"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run("run", &["--holdout", "10"]);
    common::assert_success(&out);
    let summary = common::summary(&dir.join("run"));
    assert_eq!(summary["final_eval"]["questions"], 10);
    assert_eq!(summary["steps"], 2);
    // The baselines the accuracy is drawn against: chance, and always the commonest answer of
    // the 30 training questions, scored on the 10 held out.
    let cops: Vec<u64> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cop"].as_u64().unwrap())
        .collect();
    let count = |c: u64, qs: &[u64]| qs.iter().filter(|&&x| x == c).count();
    let commonest = (1..=4).max_by_key(|&c| (count(c, &cops[..30]), std::cmp::Reverse(c))).unwrap();
    let baselines = &summary["baselines"];
    assert_eq!(baselines[0]["accuracy"], 0.25);
    let name = baselines[1]["name"].as_str().unwrap();
    assert!(name.contains(["opa", "opb", "opc", "opd"][commonest as usize - 1]), "{name}");
    assert_eq!(baselines[1]["accuracy"].as_f64().unwrap(), count(commonest, &cops[30..]) as f64 / 10.0);
    let out = run("too-many", &["--holdout", "40"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--holdout 40 must be between 1 and 39"));
}

/// An interrupted run (SIGKILL after its first checkpoint) resumed with `--resume` ends
/// with bit-identical weights to an uninterrupted run, across an epoch boundary and with
/// gradient accumulation.
#[test]
fn a_killed_and_resumed_run_matches_an_uninterrupted_one_bitwise() {
    let dir = common::scratch("resume");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 40, 5);
    let command = |out: &str, extra: &[&str]| {
        let mut cmd = common::train_command(&common::default_model(), &data, &dir.join(out));
        cmd.args(["--max-steps", "8", "--save-steps", "2", "--save-total-limit", "2"])
            .args(["--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"])
            .args(["--learning-rate", "1e-4", "--warmup-steps", "2"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let whole = command("whole", &[]).output().unwrap();
    common::assert_success(&whole);

    let mut child = command("cut", &[]).spawn().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.join("cut/checkpoint-2").exists() {
        assert!(std::time::Instant::now() < until, "no checkpoint-2 appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.join("cut/final").exists(), "the run finished before it was killed");
    let kept: Vec<_> =
        std::fs::read_dir(dir.join("whole")).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(kept.iter().filter(|n| n.to_string_lossy().starts_with("checkpoint-")).count() == 2, "{kept:?}");

    let resumed = command("cut", &["--resume"]).output().unwrap();
    common::assert_success(&resumed);
    let read = |run: &str| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.join(run).join("final").join(WEIGHTS_FILE)).unwrap().into_iter().collect()
    };
    let (a, b) = (read("whole"), read("cut"));
    assert_eq!(a.len(), 105);
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs after resuming");
    }

    let none = command("empty", &["--resume"]).output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no checkpoint-<step>"));
}

/// A short batch laid out by --fixed-shapes (dummy and filler questions added, every
/// sequence widened) gives the real questions' logits, the loss and every gradient of the
/// batch as it came (MiniLM, dropout off: dropout draws its masks by shape).
#[test]
fn fixed_shapes_give_the_logits_loss_and_gradients_of_the_batch_as_it_came() {
    let model_dir = common::default_model();
    let config = ModelConfig::from_file(&model_dir.join(CONFIG_FILE)).unwrap().without_dropout();
    let mut model = MultipleChoiceModel::new(config, Device::Cpu).unwrap();
    model.load_weights(&model_dir.join(WEIGHTS_FILE)).unwrap();
    tch::manual_seed(7);
    let shape = [3, 4, 21];
    let lengths = Tensor::randint_low(5, 22, [3, 4, 1], (tch::Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(21, (tch::Kind::Int64, Device::Cpu))
        .view([1, 1, 21])
        .lt_tensor(&lengths)
        .to_kind(tch::Kind::Int64);
    let batch = ChoiceBatch {
        input_ids: Tensor::randint_low(1000, 20000, shape, (tch::Kind::Int64, Device::Cpu)) * &mask,
        token_type_ids: Tensor::zeros(shape, (tch::Kind::Int64, Device::Cpu)),
        attention_mask: mask,
    };
    let labels = Tensor::from_slice(&[2i64, 0, 3]);
    let step = |batch: &ChoiceBatch, labels: &Tensor| -> (Tensor, Tensor, HashMap<String, Tensor>) {
        let (loss, logits) = batch_loss(&model, batch, labels, true).unwrap();
        loss.backward();
        let grads = model.vs.variables().into_iter().map(|(n, v)| (n, v.grad().copy())).collect();
        model.vs.variables().values().for_each(|v| {
            let _ = v.grad().zero_();
        });
        (loss.detach(), logits.detach(), grads)
    };
    let (loss, logits, grads) = step(&batch, &labels);
    let shapes = medbert::batch::FixedShapes::new(8, 32);
    let (fixed_batch, fixed_labels) = shapes.apply(&batch, &labels).unwrap();
    assert_eq!(fixed_batch.input_ids.size(), [(8 + shapes.fillers) as i64, 4, 32]);
    let (fixed_loss, fixed_logits, fixed_grads) = step(&fixed_batch, &fixed_labels);
    assert!(common::max_abs_diff(&loss, &fixed_loss) < 1e-6, "loss {loss} vs {fixed_loss}");
    assert!(common::max_abs_diff(&logits, &fixed_logits.narrow(0, 0, 3)) < 1e-5, "the real questions' logits differ");
    for (name, g) in &grads {
        let scale = g.abs().max().double_value(&[]).max(1e-3);
        let diff = common::max_abs_diff(g, &fixed_grads[name]) / scale;
        assert!(diff < 1e-4, "{name}'s gradient differs by {diff:e} of its largest element");
    }
    assert!(grads["bert.embeddings.word_embeddings.weight"].abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
}

/// `medbert train --fixed-shapes` takes the same first step as without (its logged loss and
/// gradient norm; dropout off; the last batch of 10 questions in 4s is short), in fewer
/// batch shapes over two epochs.
#[test]
fn a_fixed_shape_run_logs_the_first_step_of_a_dynamic_one() {
    let dir = common::scratch("fixed-shapes-run");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 10, 6);
    let first_step = |out: &str, extra: &[&str]| -> (f64, f64, u64) {
        let mut cmd = common::train_command(common::model_without_dropout(), &data, &dir.join(out));
        cmd.args(["--per-device-train-batch-size", "4", "--logging-steps", "1"]).args(extra);
        common::assert_success(&cmd.output().unwrap());
        let text = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let row = rows.iter().find(|r| r["step"] == 1 && r.get("loss").is_some()).unwrap();
        let shapes = common::summary(&dir.join(out))["batch_shapes"].as_u64().unwrap();
        (row["loss"].as_f64().unwrap(), row["grad_norm"].as_f64().unwrap(), shapes)
    };
    let (loss, norm, shapes) = first_step("dynamic", &["--max-steps", "6"]);
    let (fixed_loss, fixed_norm, fixed_shapes) = first_step("fixed", &["--max-steps", "6", "--fixed-shapes"]);
    assert!(fixed_shapes < shapes, "{fixed_shapes} shapes with --fixed-shapes, {shapes} without");
    assert!((loss - fixed_loss).abs() < 1e-6, "loss {loss} vs {fixed_loss}");
    assert!((norm - fixed_norm).abs() < 1e-5 * norm, "gradient norm {norm} vs {fixed_norm}");
}

/// `--step-breakdown` reports each phase's mean time per step, the first step left out, and
/// the phases fit in the run's time (which phase gets which time: the clock's unit test).
#[test]
fn the_step_breakdown_times_each_phase_of_a_step() {
    let dir = common::scratch("step-breakdown");
    let data = dir.join("d.json");
    common::synthetic_task(&data, 16, 7);
    let out = dir.join("run");
    let mut cmd = common::train_command(&common::default_model(), &data, &out);
    cmd.args(["--max-steps", "4", "--per-device-train-batch-size", "4", "--step-breakdown"]);
    common::assert_success(&cmd.output().unwrap());
    let summary = common::summary(&out);
    let t = &summary["step_breakdown_ms"];
    assert_eq!(t["steps"], 3, "{t}");
    let ms = |phase: &str| t[phase].as_f64().unwrap_or_else(|| panic!("no {phase} in {t}"));
    for phase in ["forward", "backward", "optimizer"] {
        assert!(ms(phase) > 0.0, "{phase}: {t}");
    }
    assert!(ms("all_reduce_wait") >= 0.0);
    let phases = ms("forward") + ms("backward") + ms("all_reduce_wait") + ms("optimizer");
    assert!(phases * 3.0 / 1e3 <= summary["train_runtime"].as_f64().unwrap(), "{t} beyond the run's time");
}
