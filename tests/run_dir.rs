//! The output directory belongs to one run: another run is refused unless it overwrites or
//! resumes, the arguments are saved, and a resume is checked against them (through the binary).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test's directory with 16 questions in it: 4 optimizer steps per epoch at batch 4.
fn data(name: &str) -> (common::Scratch, PathBuf) {
    let dir = common::scratch(name);
    let file = dir.join("d.json");
    common::synthetic_task(&file, 16, 11);
    (dir, file)
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    common::train_command(&common::default_model(), data, out)
        .args(["--per-device-train-batch-size", "4", "--logging-steps", "1", "--validation-file"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The steps of the training-loss rows.
fn loss_steps(out: &Path) -> Vec<u64> {
    metrics(out).iter().filter(|r| r.get("loss").is_some()).map(|r| r["step"].as_u64().unwrap()).collect()
}

fn eval_rows(out: &Path) -> Vec<(u64, f64)> {
    metrics(out)
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["epoch"].as_f64().unwrap()))
        .collect()
}

#[test]
fn an_output_dir_holding_another_run_is_refused_unless_overwritten() {
    let (root, data) = data("guard");
    let out = root.join("run");
    common::assert_success(&train(&data, &out, &["--max-steps", "2", "--save-steps", "1"]));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("training_args.json")).unwrap()).unwrap();
    assert_eq!(saved["arguments"]["max_steps"], 2);
    assert_eq!(saved["world_size"], 1);
    assert_eq!(saved["train_data"].as_str().map(str::len), Some(64), "a sha256 fingerprint: {saved}");
    let resolved = &saved["resolved"];
    assert_eq!((&resolved["precision"], &resolved["inputs"]["device"]), (&"fp32".into(), &"cpu".into()), "{saved}");
    assert_eq!(resolved["progress"], "a log line per logging step");
    assert!(resolved["ddp_backend"].is_null() && resolved["inputs"]["train_cache"].is_string(), "{saved}");

    let again = train(&data, &out, &["--max-steps", "3"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("holds another run") && stderr(&again).contains("--overwrite-output-dir"));
    assert_eq!(loss_steps(&out), [1, 2], "the refused run wrote");

    common::assert_success(&train(&data, &out, &["--max-steps", "3", "--overwrite-output-dir"]));
    let steps = loss_steps(&out);
    assert_eq!(steps, [1, 2, 3], "only the new run's rows");
    assert!(!out.join("checkpoint-1").exists() && !out.join("checkpoint-2").exists(), "old checkpoints kept");
    assert!(out.join("prepared").is_dir(), "prepared caches are kept");

    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let refused = train(&data, &file, &["--max-steps", "1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("is a file, not a directory"), "{}", stderr(&refused));
}

#[test]
fn a_resume_refuses_order_changing_settings_and_lists_the_others() {
    let (root, data) = data("resume-check");
    let out = root.join("run");
    common::assert_success(&train(&data, &out, &["--max-steps", "4", "--save-steps", "2"]));

    let reseeded = train(&data, &out, &["--max-steps", "6", "--resume", "--seed", "7"]);
    assert_eq!(reseeded.status.code(), Some(2));
    assert!(stderr(&reseeded).contains("seed: 42 -> 7"), "{}", stderr(&reseeded));
    let grouped = train(&data, &out, &["--max-steps", "6", "--resume", "--group-by-length"]);
    assert_eq!(grouped.status.code(), Some(2));
    assert!(stderr(&grouped).contains("group_by_length: false -> true"), "{}", stderr(&grouped));

    // HfArgumentParser's spelling, with an underscore, works too.
    let faster = train(&data, &out, &["--max_steps", "6", "--resume", "--learning_rate", "1e-4"]);
    common::assert_success(&faster);
    assert!(stderr(&faster).contains("learning_rate: 0.00005 -> 0.0001"), "{}", stderr(&faster));
    assert_eq!(common::summary(&out)["steps"], 6);
}

#[test]
fn resume_from_checkpoint_continues_from_the_given_directory() {
    let (root, data) = data("resume-from");
    let first = root.join("first");
    common::assert_success(&train(&data, &first, &["--max-steps", "4", "--save-steps", "2"]));
    let second = root.join("second");
    let checkpoint = first.join("checkpoint-2");
    let out = train(&data, &second, &["--max-steps", "4", "--resume-from-checkpoint", checkpoint.to_str().unwrap()]);
    common::assert_success(&out);
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    let steps = loss_steps(&second);
    assert_eq!(steps, [3, 4], "continues after step 2");
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert!(weights(&first) == weights(&second), "the resumed run ends elsewhere than the uninterrupted one");

    let missing = train(&data, &root.join("third"), &["--resume-from-checkpoint", "/nonexistent"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--resume-from-checkpoint /nonexistent: no trainer_state.json"));
}

/// The checkpoint at the end of an epoch is written after the epoch's evaluation: resuming from
/// it does not evaluate again. An evaluation of a run cut mid-epoch logs the real fraction.
#[test]
fn a_resume_neither_repeats_nor_loses_an_evaluation() {
    let (root, data) = data("eval-order");
    let out = root.join("run");
    common::assert_success(&train(&data, &out, &["--num-train-epochs", "2", "--save-steps", "4"]));
    assert_eq!(eval_rows(&out), [(4, 1.0), (8, 2.0)]);
    let checkpoint = out.join("checkpoint-4");
    common::assert_success(&train(
        &data,
        &out,
        &["--num-train-epochs", "2", "--resume-from-checkpoint", checkpoint.to_str().unwrap()],
    ));
    assert_eq!(eval_rows(&out), [(4, 1.0), (8, 2.0)], "the resumed run evaluated again or lost one");

    let cut = root.join("cut");
    common::assert_success(&train(&data, &cut, &["--max-steps", "3"]));
    assert_eq!(eval_rows(&cut), [(3, 0.75)]);
}

#[test]
fn values_are_checked_before_any_work_and_named_with_where_they_came_from() {
    let (root, data) = data("values");
    let dir = root.join("cwd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "MEDBERT_WARMUP_RATIO=5\n").unwrap();
    let out = dir.join("run");
    let refused = common::train_command(&common::default_model(), &data, &out)
        .current_dir(&dir)
        .arg("--learning-rate=nan")
        .env("MEDBERT_MAX_STEPS", "0")
        .env_remove("MEDBERT_WARMUP_RATIO")
        .output()
        .unwrap();
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{text}");
    for line in [
        "--learning-rate nan (on the command line): must be a finite number",
        "--max-steps 0 (from the environment variable MEDBERT_MAX_STEPS): must be at least 1",
        "--warmup-ratio 5 (from MEDBERT_WARMUP_RATIO in ",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    let too_long = train(&data, &out, &["--max-length", "100000"]);
    assert_eq!(too_long.status.code(), Some(2));
    assert!(stderr(&too_long).contains("--max-length 100000 (on the command line): must not exceed the model's 512"));
    assert!(!out.exists(), "a refused run prepared its data");
}

#[test]
fn a_loss_that_turns_nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let (root, data) = data("nan");
    let out = root.join("run");
    let blown = train(&data, &out, &["--learning-rate", "1e10", "--max-steps", "6", "--save-steps", "1"]);
    let text = stderr(&blown);
    assert_eq!(blown.status.code(), Some(2), "{text}");
    assert!(text.contains("the training loss is not finite (NaN or infinite) at step 2"), "{text}");
    assert!(out.join("checkpoint-1/model.safetensors").is_file(), "the last good checkpoint is gone");
    assert!(!out.join("checkpoint-2").exists() && !out.join("final").exists(), "saved after the loss broke");
}

/// eval prepares raw files in the user's cache directory, predict beside its output: neither
/// writes into the current directory.
#[test]
fn eval_and_predict_keep_their_caches_out_of_the_current_directory() {
    let (root, data) = data("inference-caches");
    let cwd = root.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(common::medbert_bin())
            .current_dir(&cwd)
            .args(args)
            .arg("--device")
            .arg("cpu")
            .arg("--model")
            .arg(common::default_model())
            .env("XDG_CACHE_HOME", root.join("xdg"))
            .env_remove("MEDBERT_CACHE_DIR")
            .output()
            .unwrap();
        common::assert_success(&out);
    };
    run(&["eval", "--validation-file", data.to_str().unwrap()]);
    assert!(root.join("xdg/medbert/prepared/d/tokens.safetensors").is_file());
    let predictions = root.join("out/predictions.csv");
    run(&["predict", "--test-file", data.to_str().unwrap(), "--output", predictions.to_str().unwrap()]);
    assert!(root.join("out/prepared/d/tokens.safetensors").is_file());
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "something was written into the current directory");
}

/// .env.example with every commented setting uncommented, as its comments invite, read from the
/// current directory's .env by `eval`: `MEDBERT_CACHE_DIR=~/...` is the home directory's (not a
/// directory named `~` here), and no other line breaks the command.
#[test]
fn the_example_configuration_uncommented_works_and_its_tilde_is_home() {
    let (root, data) = data("env-example");
    let (cwd, home) = (root.join("cwd"), root.join("home"));
    std::fs::create_dir_all(&cwd).unwrap();
    let example = std::fs::read_to_string(common::manifest_dir().join(".env.example")).unwrap();
    let uncommented: Vec<&str> = example
        .lines()
        .map(|l| l.strip_prefix("# ").filter(|s| s.split_once('=').is_some_and(|(k, _)| !k.contains(' '))).unwrap_or(l))
        .collect();
    assert!(uncommented.iter().any(|l| l.starts_with("MEDBERT_CACHE_DIR=~/")), "the example's cache line moved");
    std::fs::write(cwd.join(".env"), uncommented.join("\n")).unwrap();
    let mut eval = Command::new(common::medbert_bin());
    eval.current_dir(&cwd).args(["eval", "--device", "cpu", "--validation-file"]).arg(&data);
    // The model is this machine's, as setup.sh writes it into .env; HOME is the test's own.
    eval.env("HOME", &home);
    for (key, _) in std::env::vars().filter(|(k, _)| uncommented.iter().any(|l| l.starts_with(&format!("{k}=")))) {
        eval.env_remove(key);
    }
    common::assert_success(&eval.env(medbert::settings::MODEL_VAR, common::default_model()).output().unwrap());
    assert!(home.join(".cache/medbert/prepared/d/tokens.safetensors").is_file(), "the cache is not under HOME");
    assert!(!cwd.join("~").exists(), "a directory named ~ was made");
}

/// Without a terminal (a log file, medbert-run's pipes) rank 0 logs a line per logging step
/// instead of drawing a bar, without colour codes; a RUST_LOG from `.env` is honoured.
#[test]
fn a_run_without_a_terminal_logs_plain_lines_per_logging_step() {
    let (root, data) = data("log-lines");
    let run = |cwd: &Path, out: &str| {
        let output = common::train_command(&common::default_model(), &data, &root.join(out))
            .current_dir(cwd)
            .args(["--per-device-train-batch-size", "4", "--max-steps", "4", "--logging-steps", "2"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        common::assert_success(&output);
        stderr(&output)
    };
    let text = run(&root, "plain");
    assert!(!text.contains('\u{1b}'), "colour codes in a log:\n{text}");
    for step in ["step 2/4 epoch 0.50 loss ", "step 4/4 epoch 1.00 loss "] {
        let line = text.lines().find(|l| l.contains(step)).unwrap_or_else(|| panic!("no {step:?} line:\n{text}"));
        for part in [" lr ", " grad_norm ", " q/s eta "] {
            assert!(line.contains(part), "{part:?} missing from {line:?}");
        }
    }
    let quiet = root.join("quiet");
    std::fs::create_dir_all(&quiet).unwrap();
    std::fs::write(quiet.join(".env"), "RUST_LOG=warn\n").unwrap();
    let text = run(&quiet, "quiet-run");
    assert!(!text.contains(" INFO "), "RUST_LOG=warn from .env was ignored:\n{text}");
}

/// `--eval-strategy` and `--save-strategy` as the HF Trainer spells them.
#[test]
fn eval_and_save_strategies_choose_when_each_happens() {
    let (root, data) = data("strategies");
    let by_epoch = root.join("by-epoch");
    common::assert_success(&train(
        &data,
        &by_epoch,
        &["--num-train-epochs", "2", "--eval-strategy", "no", "--save-strategy", "epoch"],
    ));
    assert_eq!(eval_rows(&by_epoch), []);
    assert!(by_epoch.join("checkpoint-4").is_dir() && by_epoch.join("checkpoint-8").is_dir());
    assert!(common::summary(&by_epoch)["best_checkpoint"].is_null(), "no evaluation, no best/");

    let by_steps = root.join("by-steps");
    common::assert_success(&train(
        &data,
        &by_steps,
        &["--max-steps", "8", "--eval-strategy", "steps", "--eval-steps", "3"],
    ));
    let steps: Vec<u64> = eval_rows(&by_steps).iter().map(|r| r.0).collect();
    assert_eq!(steps, [3, 6, 8], "every 3 steps and at the end, not at the epoch's end");
    assert!(!by_steps.join("checkpoint-8").exists(), "saved without a save strategy");

    let refused = train(&data, &root.join("refused"), &["--save-strategy", "steps"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("--save-strategy steps (on the command line): steps needs --save-steps"));
}

/// `--metric-for-best-model eval_accuracy` picks best/ by accuracy (higher is better by
/// default), the summary names it with its step, and `--load-best-model-at-end` makes final/
/// that checkpoint.
#[test]
fn the_best_model_follows_the_chosen_metric() {
    let (root, data) = data("best-metric");
    let out = root.join("run");
    let flags = ["--num-train-epochs", "3", "--metric-for-best-model", "eval_accuracy", "--load-best-model-at-end"];
    common::assert_success(&train(&data, &out, &[&flags[..], &["--learning-rate", "1e-4"]].concat()));
    let evals: Vec<(u64, f64)> = metrics(&out)
        .iter()
        .filter(|r| r.get("eval_accuracy").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["eval_accuracy"].as_f64().unwrap()))
        .collect();
    assert_eq!(evals.len(), 3);
    let best = evals.iter().fold(evals[0], |b, &e| if e.1 > b.1 { e } else { b });
    let summary = common::summary(&out);
    assert_eq!(summary["metric_for_best_model"], "accuracy");
    assert_eq!((summary["best_step"].as_u64().unwrap(), summary["best_metric"].as_f64().unwrap()), best);
    assert!(summary["final_eval_accuracy"].is_number() && summary["train_runtime"].as_f64().unwrap() > 0.0);
    let rows = metrics(&out);
    assert!(rows.iter().all(|r| r["timestamp"].as_f64().is_some_and(|t| t > 1.7e9)), "a row without a timestamp");
    assert!(rows.iter().filter(|r| r.get("eval_loss").is_some()).all(|r| r["eval_runtime"].as_f64().is_some()));
    let last = rows.last().unwrap();
    assert_eq!((last["step"].as_u64(), last["train_runtime"].as_f64()), (Some(12), summary["train_runtime"].as_f64()));
    let weights = |dir: &str| std::fs::read(out.join(dir).join("model.safetensors")).unwrap();
    assert!(weights("final") == weights("best"), "final/ is not the best checkpoint");

    let unknown = train(&data, &root.join("unknown"), &["--metric-for-best-model", "f1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("--metric-for-best-model f1 (on the command line): must be one of"));
}

/// TensorBoard's own reader's view of a log directory: the number of event files and every
/// scalar tag's `(step, value)` points.
fn tensorboard_scalars(logdir: &Path) -> (u64, HashMap<String, Vec<(u64, f64)>>) {
    let json = logdir.parent().unwrap().with_extension("scalars.json");
    common::run_reference("tensorboard_scalars.py", &[logdir, &json]);
    let read: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let points = |v: &serde_json::Value| {
        v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
    };
    let scalars = read["scalars"].as_object().unwrap().iter().map(|(tag, v)| (tag.clone(), points(v))).collect();
    (read["files"].as_u64().unwrap(), scalars)
}

/// `--report-to tensorboard`: the logged numbers reach TensorBoard under the HF Trainer's
/// names, in its default directory, and a resume replaces the steps it redoes there.
#[test]
fn tensorboard_receives_the_logged_metrics_and_a_resume_replaces_redone_steps() {
    let (root, data) = data("tensorboard");
    let out = root.join("run");
    let flags = ["--max-steps", "4", "--save-steps", "2", "--eval-steps", "2", "--report-to", "tensorboard"];
    common::assert_success(&train(&data, &out, &flags));
    let runs: Vec<PathBuf> = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let name = runs[0].file_name().unwrap().to_string_lossy().into_owned();
    let (date, time_host) = name.split_once('_').unwrap_or_default();
    let time = time_host.as_bytes();
    assert!(
        date.len() == 5 && time.len() > 9 && (time[2], time[5], time[8]) == (b'-', b'-', b'_'),
        "not <Mon><DD>_<HH>-<MM>-<SS>_<host>: {name}"
    );

    // A run interrupted after step 4 whose last checkpoint is step 2 redoes steps 3 and 4.
    let (logdir, checkpoint) = (runs[0].to_str().unwrap(), out.join("checkpoint-2"));
    let resume = ["--resume-from-checkpoint", checkpoint.to_str().unwrap(), "--logging-dir", logdir];
    common::assert_success(&train(&data, &out, &[&flags[..], &resume].concat()));

    let (files, scalars) = tensorboard_scalars(&runs[0]);
    assert_eq!(files, 2);
    let rows = metrics(&out);
    for (key, tag) in
        [("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("eval_accuracy", "eval/accuracy")]
    {
        let logged: Vec<(u64, f64)> =
            rows.iter().filter_map(|r| Some((r["step"].as_u64()?, r.get(key)?.as_f64()?))).collect();
        let shown = scalars.get(tag).unwrap_or_else(|| panic!("no {tag} in {:?}", scalars.keys()));
        assert_eq!(
            shown.iter().map(|p| p.0).collect::<Vec<_>>(),
            logged.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{tag}"
        );
        for ((step, a), (_, b)) in shown.iter().zip(&logged) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{tag} at step {step}: {a} shown, {b} logged");
        }
    }
    assert_eq!(scalars["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(
        ["train/grad_norm", "train/questions_per_second", "eval/loss", "train/train_runtime"]
            .iter()
            .all(|t| scalars.contains_key(*t)),
        "{:?}",
        scalars.keys()
    );
}

/// The disk fills while the first checkpoint is written (the output directory on a 4 MB
/// tmpfs, in a mount namespace of the run's own): the run stops with the cause said as a
/// sentence, not a Debug dump, and leaves no checkpoint and no staging directory behind.
#[cfg_attr(not(as_root), ignore = "needs root for a mount namespace (CI runs as root)")]
#[test]
fn a_disk_full_during_a_checkpoint_is_said_in_words_and_leaves_no_partial_checkpoint() {
    let (dir, file) = data("disk_full");
    let (small, listing) = (dir.join("small"), dir.join("listing.txt"));
    std::fs::create_dir_all(&small).unwrap();
    // The listing is taken inside the namespace, where the tmpfs is mounted, and written
    // outside it.
    let script = r#"mount -t tmpfs -o size=4m tmpfs "$SMALL" || exit 99
"$0" "$@"; code=$?; ls -A "$SMALL/out" > "$LISTING"; exit $code"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, common::medbert_bin()])
        .args(["train", "--device", "cpu", "--per-device-train-batch-size", "4", "--max-steps", "1"])
        .args(["--save-steps", "1", "--model"])
        .arg(common::default_model())
        .arg("--train-file")
        .arg(&file)
        .arg("--output-dir")
        .arg(small.join("out"))
        .env("SMALL", &small)
        .env("LISTING", &listing)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let last = text.lines().rfind(|l| l.contains("error")).unwrap_or_default();
    assert!(last.ends_with("No space left on device (os error 28)"), "{last}");
    assert!(!text.contains("IoError") && !text.contains("Os {"), "{text}");
    let left = std::fs::read_to_string(&listing).unwrap();
    assert!(!left.contains("checkpoint-") && !left.contains(".medbert-staged"), "left behind: {left}");
}

/// Every path under `dir`, sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(listing(&path));
        }
        out.push(path);
    }
    out.sort();
    out
}

/// An output directory the HF Trainer itself wrote (tests/reference/hf_trainer_checkpoint.py):
/// its checkpoints are not resumed (another trainer's optimizer state), with a sentence saying
/// what to do instead and nothing written; the advice (`--model checkpoint-N`) then works.
#[test]
fn an_hf_trainer_checkpoint_is_refused_for_resume_without_writing_and_fine_tunes_as_a_model() {
    let (dir, data) = data("hf-trainer");
    let hf = dir.join("hf");
    common::run_reference("hf_trainer_checkpoint.py", &[&common::default_model(), &hf]);
    let before = listing(&hf);
    let resumed = train(&data, &hf, &["--resume", "--max-steps", "3"]);
    let text = stderr(&resumed);
    assert_eq!(resumed.status.code(), Some(2), "{text}");
    assert!(text.contains("an HF Trainer checkpoint") && text.contains("--model"), "{text}");
    assert!(text.contains(&hf.join("checkpoint-2").display().to_string()), "the newest is named: {text}");
    assert_eq!(listing(&hf), before, "a refused run wrote nothing");
    let fresh = dir.join("fresh");
    let from = hf.join("checkpoint-1");
    let given = train(&data, &fresh, &["--resume-from-checkpoint", from.to_str().unwrap(), "--max-steps", "3"]);
    assert!(stderr(&given).contains("an HF Trainer checkpoint"), "{}", stderr(&given));
    assert!(!fresh.exists(), "a refused run made its output directory");
    let tuned = common::train_command(&hf.join("checkpoint-2"), &data, &dir.join("tuned"))
        .args(["--max-steps", "1", "--per-device-train-batch-size", "4"])
        .output()
        .unwrap();
    common::assert_success(&tuned);
}
