//! Data-parallel training and evaluation with real worker processes (Gloo on 127.0.0.1),
//! against single-process runs of the same work.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Tensor;

/// Synthetic training and validation files of `sizes` questions in fixture `name`.
fn task_files(name: &str, sizes: (usize, usize), seed: u64) -> (PathBuf, PathBuf) {
    let dir = common::fixture(name);
    let (train, valid) = (dir.join("train.json"), dir.join("valid.json"));
    common::synthetic_task(&train, sizes.0, seed);
    common::synthetic_task(&valid, sizes.1, seed + 1);
    (train, valid)
}

/// Training and (odd-sized) validation data.
fn data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| task_files("ddp-data", (64, 37), 21))
}

/// `medbert train` flags for a run of `steps` steps at `batch` questions per process.
fn train_flags(out: &Path, batch: usize, steps: usize) -> Vec<String> {
    flags_on(data(), out, batch, steps)
}

/// As `train_flags`, on the given training and validation files.
fn flags_on((train, valid): &(PathBuf, PathBuf), out: &Path, batch: usize, steps: usize) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--max-steps",
        &steps.to_string(),
        "--per-device-train-batch-size",
        &batch.to_string(),
        "--learning-rate",
        "1e-4",
        "--adam-epsilon",
        "1e-6",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--logging-steps",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, path) in [
        ("--model", common::model_without_dropout()),
        ("--train-file", train.as_path()),
        ("--validation-file", valid.as_path()),
        ("--output-dir", out),
    ] {
        flags.push(flag.into());
        flags.push(path.display().to_string());
    }
    flags
}

/// One compute thread per process, in the launcher's runs and the single-process runs they are
/// compared with alike, so that results differ only by what the group changes (the
/// launcher's own default is tested in tests/launcher.rs).
fn launcher(launch: &[&str]) -> Command {
    let mut cmd = common::launcher(launch);
    cmd.env("OMP_NUM_THREADS", "1");
    cmd
}

fn single(flags: &[String]) -> Output {
    let out = Command::new(common::medbert_bin()).arg("train").args(flags).env("OMP_NUM_THREADS", "1").output();
    out.unwrap()
}

fn weights(run: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(run.join("final/model.safetensors")).unwrap().into_iter().collect()
}

fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    a.iter().map(|(n, t)| (common::max_abs_diff(t, &b[n]), n.clone())).fold((0.0, String::new()), |acc, x| {
        if x.0 > acc.0 {
            x
        } else {
            acc
        }
    })
}

/// The uninterrupted 2-process run (4 questions per process, 8 per step), shared by tests. Its
/// all-reduces start from the autograd hooks during backward; the runs compared with it take
/// the default here (after backward: 2 processes of 1 thread on this machine's cores).
fn two_process_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = common::fixture("ddp-two");
        let flags = train_flags(&out, 4, 8);
        let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
        let extra = ["--verify-sync", "1", "--save-steps", "4", "--record-questions", "--ddp-overlap", "true"];
        launch.extend(flags.iter().map(String::as_str).chain(extra));
        common::assert_success(&launcher(&launch).output().unwrap());
        out
    })
}

/// The 1-process reference: 8 questions per step.
fn one_process_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = common::fixture("ddp-one");
        let mut flags = train_flags(&out, 8, 8);
        flags.extend(["--save-steps", "2", "--record-questions"].map(String::from));
        common::assert_success(&single(&flags));
        out
    })
}

#[test]
fn two_processes_train_like_one_with_the_same_global_batch() {
    let one = one_process_run();
    let two = two_process_run();
    // --verify-sync 1 checked every step that both ranks hold bitwise identical parameters.
    let (diff, name) = max_diff(&weights(one), &weights(two));
    assert!(diff < 1e-5, "2 processes differ from 1 by {diff:e} at {name}");
    let (s1, s2) = (common::summary(one), common::summary(two));
    assert_eq!(s2["world_size"], 2);
    assert_eq!(s1["final_eval"]["questions"], 37);
    assert_eq!(s1["final_eval"]["correct"], s2["final_eval"]["correct"]);
    // Rank 0 alone wrote: one metrics line per step and evaluation, no duplicates.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().map(|_| 0))
        .collect();
    assert_eq!(steps.len(), 8, "{metrics}");
}

#[test]
fn accumulation_micro_steps_stay_local_and_the_group_matches_one_process() {
    let out = common::scratch("ddp-accumulate");
    let mut flags = train_flags(&out, 2, 8);
    flags.extend(["--gradient-accumulation-steps", "2", "--verify-sync", "1"].map(String::from));
    let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
    launch.extend(flags.iter().map(String::as_str));
    common::assert_success(&launcher(&launch).output().unwrap());
    let (diff, name) = max_diff(&weights(one_process_run()), &weights(&out));
    assert!(diff < 1e-5, "2 processes x 2 micro-steps x 2 questions differ from 1 x 8 by {diff:e} at {name}");
}

/// `medbert eval` of `model` on the validation data, on one process or `nproc` launched ones:
/// the JSON line it prints.
fn evaluate(model: &Path, nproc: Option<&str>) -> serde_json::Value {
    let (_, valid) = data();
    let mut flags = vec!["eval".to_string(), "--device".into(), "cpu".into()];
    flags.extend(["--model".into(), model.display().to_string()]);
    flags.extend(["--validation-file".into(), valid.display().to_string()]);
    flags.extend(["--cache-dir".into(), model.with_extension("eval-cache").display().to_string()]);
    flags.extend(["--per-device-eval-batch-size".into(), "5".into()]);
    let out = match nproc {
        None => Command::new(common::medbert_bin()).args(&flags).output().unwrap(),
        Some(n) => {
            let mut launch = vec!["--standalone", "--nproc-per-node", n, "--", common::medbert_bin()];
            launch.extend(flags.iter().map(String::as_str));
            launcher(&launch).output().unwrap()
        }
    };
    common::assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("\"questions\"")).unwrap_or_else(|| panic!("{text}"));
    serde_json::from_str(line.trim_start_matches(|c| c != '{')).unwrap()
}

#[test]
fn evaluation_over_two_and_three_processes_counts_exactly_like_one() {
    let model = two_process_run().join("final");
    let one = evaluate(&model, None);
    assert_eq!(one["questions"], 37);
    for n in ["2", "3"] {
        let many = evaluate(&model, Some(n));
        assert_eq!((&many["questions"], &many["correct"]), (&one["questions"], &one["correct"]), "{n} processes");
        let (a, b) = (many["loss"].as_f64().unwrap(), one["loss"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{n} processes: loss {a} vs {b}");
    }
}

/// The launcher's worker processes (children of `launcher_pid` running medbert).
/// The pid of the launcher's worker whose environment says RANK=`rank`.
fn worker_of_rank(launcher_pid: u32, rank: usize) -> i32 {
    worker_in_round(launcher_pid, rank, None).unwrap_or_else(|| panic!("no worker of rank {rank}"))
}

/// The pid of the launcher's worker of `rank`, of restart round `round` when given.
fn worker_in_round(launcher_pid: u32, rank: usize, round: Option<usize>) -> Option<i32> {
    let out = Command::new("pgrep").args(["-P", &launcher_pid.to_string()]).output().unwrap();
    let children: Vec<i32> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    let mut wanted = vec![format!("RANK={rank}")];
    wanted.extend(round.map(|r| format!("TORCHELASTIC_RESTART_COUNT={r}")));
    children.into_iter().find(|pid| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        wanted.iter().all(|w| environ.split(|&b| b == 0).any(|var| var == w.as_bytes()))
    })
}

/// Starts a 2-process run of 8 steps saving every 4, SIGKILLs one worker as soon as
/// checkpoint-4 exists, and returns the launcher's output and the time from the kill to its exit.
fn run_and_kill_a_worker(out: &Path, max_restarts: &str) -> (Output, Duration) {
    let flags = train_flags(out, 4, 8);
    let mut launch = vec!["--standalone", "--nproc-per-node", "2", "--max-restarts", max_restarts];
    launch.extend(flags.iter().map(String::as_str).chain(["--save-steps", "4"]));
    let child = launcher(&launch).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn();
    let mut child = child.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !out.join("checkpoint-4/trainer_state.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint-4 after 300 s");
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            panic!("the run ended before checkpoint-4:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = worker_of_rank(child.id(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let output = child.wait_with_output().unwrap();
    (output, killed.elapsed())
}

#[test]
fn a_killed_worker_brings_the_group_down_and_a_restart_resumes_to_the_same_weights() {
    let out = common::scratch("ddp-killed");
    let (output, took) = run_and_kill_a_worker(&out, "0");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(10), "teardown took {took:?}");
    assert!(
        stderr.contains("rank 1 failed first (signal 9 (SIGKILL))"),
        "the killed rank and its signal are not reported:\n{stderr}"
    );

    let out = common::scratch("ddp-restarted");
    let (output, _) = run_and_kill_a_worker(&out, "1");
    common::assert_success(&output);
    let (diff, name) = max_diff(&weights(&out), &weights(two_process_run()));
    assert!(diff == 0.0, "the restarted run differs from an uninterrupted one by {diff:e} at {name}");
}

/// Two tasks started as `srun --ntasks 2` starts them (Slurm's variables, no launcher) join
/// through the first host of the node list and the job's port, and train exactly as the
/// same run under medbert-run.
#[test]
fn srun_tasks_train_like_the_launchers_workers() {
    let out = common::scratch("ddp-srun");
    let (job, _) = common::slurm_job_with_free_port();
    let flags = train_flags(&out, 4, 8);
    let tasks: Vec<std::process::Child> = (0..2)
        .map(|rank| {
            Command::new(common::medbert_bin())
                .arg("train")
                .args(&flags)
                .envs(common::srun_task_env(rank, 2, &job))
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for task in tasks {
        common::assert_success(&task.wait_with_output().unwrap());
    }
    assert_eq!(common::summary(&out)["world_size"], 2);
    let (diff, name) = max_diff(&weights(two_process_run()), &weights(&out));
    assert!(diff == 0.0, "srun's tasks differ from medbert-run's workers by {diff:e} at {name}");
}

/// The questions (training-cache indices) that `--record-questions` saw trained in `epoch`
/// at steps in `steps`, over every rank's file in `run`.
fn questions_trained(run: &Path, epoch: u64, steps: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(run).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("questions-rank") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let step = row["step"].as_u64().unwrap();
            if row["epoch"] == epoch && steps.contains(&step) {
                ids.extend(row["questions"].as_array().unwrap().iter().map(|q| q.as_u64().unwrap()));
            }
        }
    }
    ids.sort();
    ids
}

/// A new output directory holding a copy of `run`'s `checkpoint`.
fn copy_checkpoint(run: &Path, checkpoint: &str, name: &str) -> common::Scratch {
    let copy = common::scratch(name);
    let status = Command::new("cp").arg("-r").arg(run.join(checkpoint)).arg(&*copy).status().unwrap();
    assert!(status.success());
    copy
}

/// The last evaluation of a run equals a fresh `medbert eval` of its final weights.
fn assert_last_evaluation_is_reproduced(run: &Path) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last = text.lines().rev().find(|l| l.contains("eval_loss")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last).unwrap();
    let fresh = evaluate(&run.join("final"), None);
    assert_eq!(last["eval_accuracy"], fresh["accuracy"]);
    let (a, b) = (last["eval_loss"].as_f64().unwrap(), fresh["loss"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-6, "evaluated {a} during training, {b} afresh");
}

/// 96 training questions: one epoch is 12 steps of 8 (4 per process on 2).
fn epoch_data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| task_files("epoch-data", (96, 16), 25))
}

/// The flags of a run as users give them: one epoch (--num-train-epochs, no --max-steps) at 4
/// questions per process, a checkpoint every 4 steps, the questions recorded.
fn epoch_flags(out: &Path) -> Vec<String> {
    let mut flags = flags_on(epoch_data(), out, 4, 0);
    let at = flags.iter().position(|f| f == "--max-steps").unwrap();
    flags.splice(at..at + 2, ["--num-train-epochs".to_string(), "1".to_string()]);
    flags.extend(["--save-steps", "4", "--record-questions"].map(String::from));
    flags
}

/// The epoch run on 2 processes, uninterrupted.
fn two_process_epoch() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = common::fixture("ddp-epoch-two");
        let flags = epoch_flags(&out);
        let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
        launch.extend(flags.iter().map(String::as_str));
        common::assert_success(&launcher(&launch).output().unwrap());
        out
    })
}

/// `flags` with `flag` set to `value` (replaced where given, else added).
fn with_flag(mut flags: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match flags.iter().position(|f| f == flag) {
        Some(at) => flags[at + 1] = value.to_string(),
        None => flags.extend([flag.to_string(), value.to_string()]),
    }
    flags
}

/// Epoch 0's questions in steps 1 to `last` over the records of `first` (steps 1 to `at`) and
/// of `rest` (the steps after), each exactly once.
fn assert_epoch_once(first: &Path, at: u64, rest: &Path, last: u64, questions: u64) {
    let mut epoch = questions_trained(first, 0, 1..=at);
    epoch.extend(questions_trained(rest, 0, at + 1..=last));
    epoch.sort();
    assert_eq!(epoch, (0..questions).collect::<Vec<u64>>(), "the epoch's questions, each once");
}

/// Two processes stopped after checkpoint-4 go on as one with the same flags: the checkpoint's
/// global batch is kept (two micro-batches of 4), so the epoch's other 64 questions are
/// trained, each once, in the 8 planned steps, to the uninterrupted run's weights.
#[test]
fn a_checkpoint_resumed_on_fewer_processes_keeps_its_global_batch_and_its_epoch() {
    let two = two_process_epoch();
    let copy = copy_checkpoint(two, "checkpoint-4", "ddp-two-to-one");
    let out = single(&[epoch_flags(&copy), vec!["--resume".into()]].concat());
    common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for said in [
        "resuming on 1 process(es), the checkpoint was written by 2",
        "the global batch stays the checkpoint's 8 questions per optimizer step: 2 micro-batch(es) of 4",
    ] {
        assert!(stderr.contains(said), "{said:?} not said:\n{stderr}");
    }
    assert_eq!(common::summary(&copy)["steps"], 12);
    assert_epoch_once(two, 4, &copy, 12, 96);
    let (diff, name) = max_diff(&weights(two), &weights(&copy));
    assert!(diff < 1e-5, "resumed on 1 process, the weights differ from 2 processes' by {diff:e} at {name}");
}

/// A resume whose batch flags differ from the checkpoint's takes them (2 questions per step
/// instead of 8), and plans the rest of the epoch anew: 32 steps for its other 64 questions,
/// none dropped.
#[test]
fn batch_flags_that_change_the_global_batch_win_and_the_epoch_is_still_trained_whole() {
    let two = two_process_epoch();
    let copy = copy_checkpoint(two, "checkpoint-4", "ddp-two-to-one-smaller");
    let flags = with_flag(epoch_flags(&copy), "--per-device-train-batch-size", "2");
    let out = single(&[flags, vec!["--resume".into()]].concat());
    common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for said in ["the global batch changes from 8 to 2 questions per optimizer step", "36 in all, not 12"] {
        assert!(stderr.contains(said), "{said:?} not said:\n{stderr}");
    }
    assert_eq!(common::summary(&copy)["steps"], 36);
    assert_epoch_once(two, 4, &copy, 36, 96);
}

/// One process stopped after checkpoint-2 goes on as three with another global batch: the
/// rest of the epoch is shared among them, each question once, and the change is explained.
#[test]
fn a_one_process_checkpoint_resumes_on_three_processes() {
    let one = one_process_run();
    let copy = copy_checkpoint(one, "checkpoint-2", "ddp-one-to-three");
    let mut launch = vec!["--standalone", "--nproc-per-node", "3"];
    let mut flags = train_flags(&copy, 4, 8);
    flags.extend(["--record-questions", "--resume"].map(String::from));
    launch.extend(flags.iter().map(String::as_str));
    let out = launcher(&launch).output().unwrap();
    common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for said in ["resuming on 3 process(es), the checkpoint was written by 1", "global batch changes from 8 to 12"] {
        assert!(stderr.contains(said), "{said:?} not said:\n{stderr}");
    }

    // 16 questions in steps 1-2, then 48 in four steps of 12; steps 7 and 8 start epoch 1.
    let mut epoch = questions_trained(one, 0, 1..=2);
    epoch.extend(questions_trained(&copy, 0, 3..=8));
    epoch.sort();
    assert_eq!(epoch, (0..64).collect::<Vec<u64>>(), "the epoch's questions, each once");
    assert_eq!(questions_trained(&copy, 1, 7..=8).len(), 24, "epoch 1 begins at step 7");
    assert_last_evaluation_is_reproduced(&copy);
}

/// Starts `medbert-run` for 2 nodes x 1 process in `hosts` with the standard flags plus `extra`.
fn start_two_nodes(hosts: &common::Hosts, out: &Path, extra: &[&str]) -> Vec<std::process::Child> {
    let flags = train_flags(out, 4, 8);
    let port = common::free_port().to_string();
    (0..2)
        .map(|node| {
            let rank = node.to_string();
            let launch = [
                "--nnodes",
                "2",
                "--node-rank",
                &rank,
                "--nproc-per-node",
                "1",
                "--master-addr",
                &hosts.addrs[0],
                "--master-port",
                &port,
            ];
            let mut cmd = hosts.exec(node, env!("CARGO_BIN_EXE_medbert-run"));
            cmd.args(launch).args(extra).args(&flags).args(["--verify-sync", "1", "--save-steps", "4"]);
            cmd.env("OMP_NUM_THREADS", "1").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect()
}

/// Waits for every node's launcher to succeed; returns their stderr.
fn wait_all(nodes: Vec<std::process::Child>) -> Vec<String> {
    let mut texts = Vec::new();
    for (node, child) in nodes.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "node {node}:\n{text}");
        texts.push(text);
    }
    texts
}

#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn two_nodes_in_network_namespaces_train_like_one_node_with_two_processes() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("ddp-two-nodes");
    let _ = wait_all(start_two_nodes(&hosts, &out, &[]));
    let (diff, name) = max_diff(&weights(&out), &weights(two_process_run()));
    assert!(diff == 0.0, "2 nodes x 1 process differ from 1 node x 2 processes by {diff:e} at {name}");
}

#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_worker_killed_on_the_second_node_restarts_both_nodes_and_the_run_resumes() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("ddp-two-nodes-restart");
    let nodes = start_two_nodes(&hosts, &out, &["--max-restarts", "2"]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !out.join("checkpoint-4/trainer_state.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint-4 after 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // `ip netns exec` execs the launcher, so its pid is the child's.
    let kill = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    kill(worker_of_rank(nodes[1].id(), 1)).unwrap();
    // Node 1 fails again as soon as its next round starts, while node 0's workers are still
    // joining that round: both nodes must go on to the same third round.
    let restarted = loop {
        assert!(Instant::now() < deadline, "node 1 did not restart its worker");
        if let Some(pid) = worker_in_round(nodes[1].id(), 1, Some(1)) {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    kill(restarted).unwrap();
    for (node, text) in wait_all(nodes).iter().enumerate() {
        assert!(text.contains("restarting the group (2/2)"), "node {node} did not reach the third round:\n{text}");
    }
    let (diff, name) = max_diff(&weights(&out), &weights(two_process_run()));
    assert!(diff == 0.0, "the restarted 2-node run differs from an uninterrupted one by {diff:e} at {name}");
}

/// 144 training questions: at 4 per process and a checkpoint every 3 steps, the rest of the
/// epoch after any checkpoint of a 2- or a 3-process round is shared evenly by 2 and by 3
/// processes, so no round pads its shards with repeated questions.
fn elastic_data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| task_files("elastic-data", (144, 16), 23))
}

/// The training flags of every elastic run: 18 steps, at least one whole epoch on 2 or 3
/// processes, a checkpoint every 3 steps.
fn elastic_flags(out: &Path) -> Vec<String> {
    let mut flags = flags_on(elastic_data(), out, 4, 18);
    // A collective waiting on a hung peer gives up after a minute, not the default half hour.
    flags.extend(["--save-steps", "3", "--record-questions", "--ddp-timeout", "60"].map(String::from));
    flags
}

/// Quick heartbeats (a node is lost after 2 s) and a short first round.
const ELASTIC_CONF: &str = "last_call_timeout=2,keep_alive_interval=0.5,keep_alive_max_attempt=4,join_timeout=20";

/// `medbert-run --nnodes NODES` on `host` with one worker, rendezvous at host 0.
fn elastic_node(hosts: &common::Hosts, host: usize, nodes: &str, conf: &str, out: &Path) -> std::process::Child {
    elastic_node_with(hosts, host, nodes, conf, &elastic_flags(out))
}

/// As `elastic_node`, with the training flags `flags`.
fn elastic_node_with(
    hosts: &common::Hosts,
    host: usize,
    nodes: &str,
    conf: &str,
    flags: &[String],
) -> std::process::Child {
    let mut cmd = hosts.exec(host, env!("CARGO_BIN_EXE_medbert-run"));
    cmd.args(["--nnodes", nodes, "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--max-restarts", "0"]);
    cmd.args(["--rdzv-endpoint", &hosts.addrs[0], "--rdzv-conf", conf]).args(flags);
    cmd.env("OMP_NUM_THREADS", "1").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

/// Waits for `path` while the launchers run.
fn wait_for(path: &Path, nodes: &mut [std::process::Child]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no {} after 300 s", path.display());
        for (node, child) in nodes.iter_mut().enumerate() {
            assert!(child.try_wait().unwrap().is_none(), "node {node}'s launcher ended before {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A machine lost: `signal` to a launcher and to its workers (SIGKILL: a machine gone, its
/// sockets closed; SIGSTOP: a machine that hangs, its sockets open and silent).
fn signal_node(launcher: &std::process::Child, signal: nix::sys::signal::Signal) {
    let out = Command::new("pgrep").args(["-P", &launcher.id().to_string()]).output().unwrap();
    let send = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    send(launcher.id() as i32).unwrap();
    for worker in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()) {
        let _ = send(worker);
    }
}

fn kill_node(launcher: &mut std::process::Child) {
    signal_node(launcher, nix::sys::signal::Signal::SIGKILL);
    let _ = launcher.wait();
}

/// The checkpoint the last round of a launcher's output resumed from.
fn last_resumed_checkpoint(stderr: &str) -> String {
    let line = stderr.lines().rev().find(|l| l.contains("resuming checkpoint=")).expect("no resume");
    let path = line.split("checkpoint=").nth(1).unwrap().split_whitespace().next().unwrap();
    Path::new(path).file_name().unwrap().to_string_lossy().into_owned()
}

/// Epoch 0's questions over every rank's record, each exactly once.
fn assert_epoch_trained_once(out: &Path) {
    assert_eq!(questions_trained(out, 0, 1..=18), (0..144).collect::<Vec<u64>>(), "epoch 0's questions, each once");
}

/// Three nodes; one is lost (by `signal`) after a checkpoint. The other two go on at world
/// size 2 without using a restart (--max-restarts 0), every question of the epoch once, to
/// the weights of the run resumed by hand from the same checkpoint on two processes.
fn lose_a_node_of_three(name: &str, signal: nix::sys::signal::Signal) -> Vec<String> {
    let hosts = common::Hosts::create(3);
    let out = common::scratch(name);
    let mut nodes: Vec<_> = (0..3).map(|h| elastic_node(&hosts, h, "2:3", ELASTIC_CONF, &out)).collect();
    wait_for(&out.join("checkpoint-3/trainer_state.json"), &mut nodes);
    // Lost after the step that follows the checkpoint, which every rank recorded: the lost
    // rank's record of it no longer counts once the others go back to the checkpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    while questions_trained(&out, 0, 4..=4).len() < 3 * 4 {
        assert!(Instant::now() < deadline, "step 4 not recorded by every rank");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal_node(&nodes[2], signal);
    let mut lost = nodes.pop().unwrap();
    let stderr = wait_all(nodes);
    kill_node(&mut lost);
    for said in ["round 0: 3 node(s), world size 3", "round 1: 2 node(s), world size 2", "goes on without them"] {
        assert!(stderr[0].contains(said), "{said:?} not said:\n{}", stderr[0]);
    }
    assert!(!stderr[0].contains("restarting the group"), "a lost node used a restart:\n{}", stderr[0]);
    assert_eq!(common::summary(&out)["world_size"], 2);
    assert_epoch_trained_once(&out);

    let checkpoint = last_resumed_checkpoint(&stderr[0]);
    let by_hand = copy_checkpoint(&out, &checkpoint, &format!("{name}-by-hand"));
    let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
    let flags = elastic_flags(&by_hand);
    launch.extend(flags.iter().map(String::as_str).chain(["--resume"]));
    common::assert_success(&launcher(&launch).output().unwrap());
    let (diff, name) = max_diff(&weights(&out), &weights(&by_hand));
    assert!(diff == 0.0, "the elastic run differs from {checkpoint} resumed by hand by {diff:e} at {name}");
    stderr
}

#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_killed_node_leaves_the_others_training_at_a_smaller_world_size() {
    lose_a_node_of_three("elastic-killed", nix::sys::signal::Signal::SIGKILL);
}

/// A node that hangs keeps its sockets open: the others' collectives wait on it, and only its
/// silent heartbeat tells the coordinator, which ends the round.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_hung_node_is_dropped_when_its_heartbeat_stops() {
    let stderr = lose_a_node_of_three("elastic-hung", nix::sys::signal::Signal::SIGSTOP);
    assert!(stderr[0].contains("sent no heartbeat for 2s: it is lost"), "{}", stderr[0]);
}

/// Resumes a copy of the elastic run `out`'s `checkpoint` by hand on `nproc` processes, with
/// the epoch flags and `flag` set to `value`, and asserts the elastic run ended at its weights
/// bit for bit.
fn assert_resumed_by_hand_alike(out: &Path, checkpoint: &str, nproc: &str, (flag, value): (&str, &str)) {
    let by_hand = copy_checkpoint(out, checkpoint, &format!("{}-by-hand", out.file_name().unwrap().to_string_lossy()));
    let flags = [with_flag(epoch_flags(&by_hand), flag, value), vec!["--resume".into()]].concat();
    let mut launch = vec!["--standalone", "--nproc-per-node", nproc];
    launch.extend(flags.iter().map(String::as_str));
    common::assert_success(&launcher(&launch).output().unwrap());
    let (diff, name) = max_diff(&weights(out), &weights(&by_hand));
    assert!(diff == 0.0, "the elastic run differs from {checkpoint} resumed by hand by {diff:e} at {name}");
}

/// The issue's shrink: a `--nnodes 1:2` job of one epoch (96 questions, 8 per step on two
/// nodes) loses a node after checkpoint-4. The survivor goes on alone with the checkpoint's
/// global batch (accumulation 2, chosen by itself): the epoch's 12 steps, every question once,
/// and the weights of the checkpoint resumed by hand with --gradient-accumulation-steps 2.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn an_elastic_shrink_keeps_the_global_batch_and_trains_the_whole_epoch() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("elastic-shrink-epoch");
    let mut nodes: Vec<_> =
        (0..2).map(|h| elastic_node_with(&hosts, h, "1:2", ELASTIC_CONF, &epoch_flags(&out))).collect();
    wait_for(&out.join("checkpoint-4/trainer_state.json"), &mut nodes);
    kill_node(&mut nodes[1]);
    let stderr = wait_all(nodes.drain(..1).collect());
    let said =
        ["round 1: 1 node(s), world size 1", "the global batch stays the checkpoint's 8", "2 micro-batch(es) of 4"];
    // Steps after the checkpoint that the lost node recorded were taken again by the survivor.
    let checkpoint = assert_resized_epoch(&out, &stderr[0], &said, 1, 12);
    assert_resumed_by_hand_alike(&out, &checkpoint, "1", ("--gradient-accumulation-steps", "2"));
}

/// A resized elastic run of one epoch (96 questions) at its end: what its first node said,
/// its world size and planned steps, every question once from the checkpoint it resumed
/// (returned) on.
fn assert_resized_epoch(out: &Path, stderr: &str, said: &[&str], world: u64, steps: u64) -> String {
    for said in said {
        assert!(stderr.contains(said), "{said:?} not said:\n{stderr}");
    }
    let summary = common::summary(out);
    assert_eq!((summary["world_size"].as_u64(), summary["steps"].as_u64()), (Some(world), Some(steps)));
    let checkpoint = last_resumed_checkpoint(stderr);
    let at: u64 = checkpoint.trim_start_matches("checkpoint-").parse().unwrap();
    assert_epoch_once(out, at, out, steps, 96);
    checkpoint
}

/// The grow: a `--nnodes 1:2` job starts alone (4 questions per step); a second node joins
/// after checkpoint-4 and is admitted at the next checkpoint. The two go on with the
/// checkpoint's global batch (2 questions each): the epoch's 24 steps, every question once,
/// and the weights of the checkpoint resumed by hand on two processes with
/// --per-device-train-batch-size 2.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn an_elastic_grow_keeps_the_global_batch_and_trains_the_whole_epoch() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("elastic-grow-epoch");
    let mut nodes = vec![elastic_node_with(&hosts, 0, "1:2", ELASTIC_CONF, &epoch_flags(&out))];
    wait_for(&out.join("checkpoint-4/trainer_state.json"), &mut nodes);
    nodes.push(elastic_node_with(&hosts, 1, "1:2", ELASTIC_CONF, &epoch_flags(&out)));
    let stderr = wait_all(nodes);
    let said =
        ["round 1: 2 node(s), world size 2", "the global batch stays the checkpoint's 4", "1 micro-batch(es) of 2"];
    let checkpoint = assert_resized_epoch(&out, &stderr[0], &said, 2, 24);
    assert_resumed_by_hand_alike(&out, &checkpoint, "2", ("--per-device-train-batch-size", "2"));
}

/// A node of a `--nnodes 1:2` job preempted (SIGTERM to its launcher) mid-epoch: the group
/// saves a checkpoint at the step it agrees on, that node leaves with 75, and the other goes
/// on from the checkpoint alone with the same global batch: the epoch's 12 steps, every
/// question once, the weights of that checkpoint resumed by hand.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_preempted_node_of_an_elastic_job_saves_with_the_others_and_leaves() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("elastic-preempted");
    let mut nodes: Vec<_> =
        (0..2).map(|h| elastic_node_with(&hosts, h, "1:2", ELASTIC_CONF, &epoch_flags(&out))).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while questions_trained(&out, 0, 2..=2).len() < 2 * 4 {
        assert!(Instant::now() < deadline, "step 2 not recorded by both ranks");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(nodes[1].id() as i32, nix::sys::signal::Signal::SIGTERM);
    let leaving = nodes.pop().unwrap().wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&leaving.stderr);
    assert_eq!(leaving.status.code(), Some(75), "{said}");
    let step = preempted_at(&said);
    let stderr = wait_all(nodes);
    let said = [
        "the workers stopped at a checkpoint on another node's signal",
        "round 1: 1 node(s), world size 1",
        "the global batch stays the checkpoint's 8",
    ];
    let checkpoint = assert_resized_epoch(&out, &stderr[0], &said, 1, 12);
    assert_eq!(checkpoint, format!("checkpoint-{step}"));
    assert_resumed_by_hand_alike(&out, &checkpoint, "1", ("--gradient-accumulation-steps", "2"));
}

/// Two nodes of a 2:3 job; a third launcher starts mid-epoch and is admitted at the group's
/// next checkpoint; the epoch stays exact and the join uses no restart.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_node_that_joins_mid_epoch_is_admitted_at_the_next_checkpoint() {
    let hosts = common::Hosts::create(3);
    let out = common::scratch("elastic-join");
    let mut nodes: Vec<_> = (0..2).map(|h| elastic_node(&hosts, h, "2:3", ELASTIC_CONF, &out)).collect();
    wait_for(&out.join("checkpoint-3/trainer_state.json"), &mut nodes);
    nodes.push(elastic_node(&hosts, 2, "2:3", ELASTIC_CONF, &out));
    let stderr = wait_all(nodes);
    let said = [
        "round 0: 2 node(s), world size 2",
        "a node asks to join",
        "stopped at checkpoint-",
        "round 1: 3 node(s), world size 3",
        "resuming on 3 process(es), the checkpoint was written by 2",
    ];
    for said in said {
        assert!(stderr[0].contains(said), "{said:?} not said:\n{}", stderr[0]);
    }
    assert!(stderr[2].contains("this launcher is node 2"), "{}", stderr[2]);
    assert!(!stderr[0].contains("restarting the group"), "a join used a restart:\n{}", stderr[0]);
    assert_eq!(common::summary(&out)["world_size"], 3);
    assert_epoch_trained_once(&out);
}

/// A 2:3 job that loses one of its two nodes waits for another up to join_timeout, then
/// fails saying how many nodes it had.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_job_below_its_minimum_fails_after_the_join_timeout_naming_the_count() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("elastic-below-min");
    let conf = ELASTIC_CONF.replace("join_timeout=20", "join_timeout=4");
    let mut nodes: Vec<_> = (0..2).map(|h| elastic_node(&hosts, h, "2:3", &conf, &out)).collect();
    wait_for(&out.join("checkpoint-3/trainer_state.json"), &mut nodes);
    kill_node(&mut nodes[1]);
    let killed = Instant::now();
    let output = nodes.remove(0).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("round 1 had 1 of the 2 node(s) it needs (--nnodes 2:3) after join_timeout 4s"),
        "{stderr}"
    );
    // Lost after 2 s, then 4 s of waiting; the rest is the workers' teardown.
    assert!(killed.elapsed() < Duration::from_secs(20), "failed {:?} after the loss", killed.elapsed());
}

/// Starts the 2-process epoch run (no checkpoint of its own: `--save-steps` left out) in
/// `out`, and returns the launcher once rank 0 has recorded step `step`.
fn start_epoch_run_until_step(out: &Path, step: usize) -> std::process::Child {
    let flags = epoch_flags(out);
    let at = flags.iter().position(|f| f == "--save-steps").unwrap();
    let flags = [&flags[..at], &flags[at + 2..]].concat();
    let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
    launch.extend(flags.iter().map(String::as_str));
    let mut child =
        launcher(&launch).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let record = out.join("questions-rank0.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&record).map_or(0, |t| t.lines().count()) < step {
        assert!(Instant::now() < deadline, "step {step} not recorded after 300 s");
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            panic!("the run ended before step {step}:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// The step of the checkpoint a preempted run says it saved.
fn preempted_at(stderr: &str) -> usize {
    let line = stderr.lines().find(|l| l.contains("is saved; --resume goes on")).unwrap_or_else(|| panic!("{stderr}"));
    line.split("after step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap()
}

/// A run preempted mid-epoch (by `send` to its launcher), resumed with --resume: the
/// checkpoint is at the step the launcher said, the launcher exited with 75, and the resumed
/// run trains each question of the epoch once and ends at the uninterrupted run's weights.
fn preempt_and_resume(name: &str, send: impl FnOnce(&std::process::Child)) -> String {
    let out = common::scratch(name);
    let child = start_epoch_run_until_step(&out, 3);
    send(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    let step = preempted_at(&stderr);
    assert!((3..12).contains(&step), "saved after step {step}:\n{stderr}");
    assert!(out.join(format!("checkpoint-{step}/trainer_state.json")).is_file(), "{stderr}");
    assert!(!out.join("final").exists(), "a preempted run wrote final/");

    let flags = epoch_flags(&out);
    let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
    launch.extend(flags.iter().map(String::as_str).chain(["--resume"]));
    let resumed = common::assert_success(&launcher(&launch).output().unwrap());
    assert!(resumed.contains(&format!("checkpoint-{step}")), "{resumed}");
    assert_eq!(questions_trained(&out, 0, 1..=12), (0..96).collect::<Vec<u64>>(), "the epoch's questions, each once");
    let (diff, tensor) = max_diff(&weights(&out), &weights(two_process_epoch()));
    assert!(
        diff == 0.0,
        "preempted and resumed, the weights differ from an uninterrupted run's by {diff:e} at {tensor}"
    );
    stderr
}

#[test]
fn sigterm_to_the_launcher_saves_a_checkpoint_that_resumes_to_the_uninterrupted_weights() {
    let stderr = preempt_and_resume("preempt-launcher", |launcher| {
        signal(launcher.id() as i32, nix::sys::signal::Signal::SIGTERM)
    });
    assert!(stderr.contains("stopped by SIGTERM after step"), "{stderr}");
    assert!(stderr.contains("saved a checkpoint on signal 15"), "{stderr}");
}

/// Slurm's `--signal USR1@90` reaches one task; here it reaches one worker only: it tells
/// the others, they stop at the same step, and the launcher ends as preempted, not failed.
#[test]
fn sigusr1_to_one_worker_saves_a_checkpoint_for_the_whole_group() {
    let stderr = preempt_and_resume("preempt-worker", |launcher| {
        signal(worker_of_rank(launcher.id(), 1), nix::sys::signal::Signal::SIGUSR1)
    });
    assert!(stderr.contains("stopped by SIGUSR1 after step"), "rank 1 names its signal:\n{stderr}");
    assert!(stderr.contains("a worker's warning signal"), "{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
}

/// A second signal to the launcher ends the run at once, as a signal did before: the exit
/// status says so, and whatever checkpoint exists is whole (written aside, renamed in place).
#[test]
fn a_second_signal_ends_the_run_at_once_and_leaves_no_checkpoint_half_written() {
    let out = common::scratch("preempt-twice");
    let child = start_epoch_run_until_step(&out, 3);
    signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(20));
    let sent = Instant::now();
    signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + 15), "{stderr}");
    assert!(sent.elapsed() < Duration::from_secs(10), "stopped {:?} after the second signal", sent.elapsed());
    for entry in std::fs::read_dir(&*out).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("checkpoint-") {
            for file in ["trainer_state.json", "optimizer.safetensors", "model.safetensors", "config.json"] {
                assert!(path.join(file).is_file(), "{} lacks {file}", path.display());
            }
        }
    }
}

/// With --no-save-on-signal a signal ends `medbert train` at once, as before, and nothing is
/// saved.
#[test]
fn without_save_on_signal_a_signal_ends_the_run_at_once() {
    let out = common::scratch("preempt-off");
    let flags = [epoch_flags(&out), vec!["--no-save-on-signal".to_string()]].concat();
    let mut child = Command::new(common::medbert_bin())
        .arg("train")
        .args(&flags)
        .env("OMP_NUM_THREADS", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let record = out.join("questions-rank0.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&record).map_or(0, |t| t.lines().count()) < 2 {
        assert!(Instant::now() < deadline, "no step recorded after 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    let saved =
        std::fs::read_dir(&*out).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("checkpoint-"));
    assert!(!saved, "a checkpoint was saved");
}

/// The position file the launcher gave worker `pid`.
fn position_file(pid: i32) -> PathBuf {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let var = environ.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"MEDBERT_POSITION_FILE=")).unwrap();
    PathBuf::from(String::from_utf8_lossy(var).into_owned())
}

/// A worker that stops mid-step (SIGSTOP: a hung process keeps its sockets open and says
/// nothing): with --hang-timeout the launcher prints where every worker is, names the
/// stopped rank and its phase and the others' wait, and brings the group down, nothing left
/// running.
#[test]
fn a_hung_worker_is_named_with_its_phase_and_the_group_comes_down() {
    let out = common::scratch("hang-stopped");
    let flags = with_flag(epoch_flags(&out), "--num-train-epochs", "5");
    let mut launch = vec!["--standalone", "--nproc-per-node", "3", "--hang-timeout", "3"];
    launch.extend(flags.iter().map(String::as_str));
    let child =
        launcher(&launch).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let workers: Vec<i32> = loop {
        assert!(Instant::now() < deadline, "the 3 workers not found");
        let found: Vec<i32> = (0..3).filter_map(|rank| worker_in_round(child.id(), rank, None)).collect();
        if found.len() == 3 {
            break found;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (victim, file) = (workers[1], position_file(workers[1]));
    stop_in_forward(victim, &file, deadline);
    let stopped = Instant::now();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(30), "came down {:?} after the stop", stopped.elapsed());
    let named = format!("rank 1 (node 0, pid {victim}) has been in forward of step");
    for said in [named.as_str(), "ranks 0, 2 wait in the all-reduce of bucket", "no step finished for 3 s"] {
        assert!(stderr.contains(said), "{said:?} not said:\n{stderr}");
    }
    for pid in workers {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "worker {pid} still running");
    }
}

/// A worker slowed down (SIGSTOP and SIGCONT in turn, 60 ms stopped in every 100) is named
/// as the straggler by rank 0, and summary.json's per-rank step times show it.
#[test]
fn a_slowed_worker_is_named_as_the_straggler() {
    let out = common::scratch("straggler");
    let flags = with_flag(with_flag(epoch_flags(&out), "--num-train-epochs", "2"), "--logging-steps", "2");
    let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
    launch.extend(flags.iter().map(String::as_str));
    let child =
        launcher(&launch).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let file = out.join("questions-rank1.jsonl");
    while !file.exists() {
        assert!(Instant::now() < deadline, "rank 1 trained no step");
        std::thread::sleep(Duration::from_millis(5));
    }
    let slowed = worker_of_rank(child.id(), 1);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowing = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let send = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(slowed), s).is_ok();
            while !done.load(std::sync::atomic::Ordering::SeqCst) && send(nix::sys::signal::Signal::SIGSTOP) {
                std::thread::sleep(Duration::from_millis(60));
                send(nix::sys::signal::Signal::SIGCONT);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let output = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    slowing.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("rank 1 (node 0) is a straggler: its compute takes"), "{stderr}");
    assert!(!stderr.contains("rank 0 (node 0) is a straggler"), "{stderr}");
    let ranks = common::summary(&out)["per_rank_step_ms"].clone();
    let compute = |r: usize| ranks[r]["compute_ms_median"].as_f64().unwrap();
    assert!(compute(1) > 1.2 * compute(0), "{ranks}");
    assert!(
        ranks[0]["allreduce_wait_ms_median"].as_f64().unwrap() > ranks[1]["allreduce_wait_ms_median"].as_f64().unwrap(),
        "rank 0 waits for rank 1: {ranks}"
    );
}

/// Slurm signals every process of a job step: the launcher and its workers get SIGTERM at
/// once, and each worker a second time as the launcher forwards it. That is one warning: the
/// checkpoint is saved and the launcher exits with 75.
#[test]
fn a_signal_to_every_process_at_once_is_one_warning() {
    let out = common::scratch("preempt-everyone");
    let child = start_epoch_run_until_step(&out, 2);
    let workers: Vec<i32> = (0..2).map(|rank| worker_of_rank(child.id(), rank)).collect();
    for pid in workers.into_iter().chain([child.id() as i32]) {
        signal(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    let step = preempted_at(&stderr);
    assert!(out.join(format!("checkpoint-{step}/trainer_state.json")).is_file(), "{stderr}");
}

/// Stops rank 1's worker `victim` (SIGSTOP) in its forward pass of a step after the first, as
/// its position file shows it, before `deadline`.
fn stop_in_forward(victim: i32, file: &Path, deadline: Instant) {
    use medbert::dist::position::{Phase, Position};
    loop {
        assert!(Instant::now() < deadline, "rank 1 never seen in forward");
        let at = Position::read(file);
        if at.is_some_and(|p| p.phase == Phase::Forward && p.step >= 2) {
            signal(victim, nix::sys::signal::Signal::SIGSTOP);
            if Position::read(file) == at {
                break;
            }
            signal(victim, nix::sys::signal::Signal::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two nodes, a worker of the second stopped mid-forward: the first node's launcher, whose
/// own worker only waits, prints the whole job's table (the rows the second shares through
/// the store) and names the stopped rank on the other node.
#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn the_hang_table_covers_every_node_of_the_job() {
    let hosts = common::Hosts::create(2);
    let out = common::scratch("hang-two-nodes");
    let nodes = start_two_nodes(&hosts, &out, &["--hang-timeout", "3"]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let victim = loop {
        assert!(Instant::now() < deadline, "no worker on node 1");
        if let Some(pid) = worker_in_round(nodes[1].id(), 1, None) {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let file = position_file(victim);
    stop_in_forward(victim, &file, deadline);
    let outputs: Vec<Output> = nodes.into_iter().map(|n| n.wait_with_output().unwrap()).collect();
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    assert_eq!(outputs[0].status.code(), Some(1), "{stderr}");
    let named = format!("rank 1 (node 1, pid {victim}) has been in forward of step");
    for said in [named.as_str(), "rank 0 waits in the all-reduce of bucket"] {
        assert!(stderr.contains(said), "{said:?} not said by node 0:\n{stderr}");
    }
}
