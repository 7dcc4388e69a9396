//! Data-parallel training and evaluation with real worker processes (Gloo on 127.0.0.1),
//! against single-process runs of the same work.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Tensor;

/// The default model with dropout off, so runs with different batch shapes can agree.
fn model_without_dropout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = common::default_model();
        let dir = common::fixture("nodropout");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        config["hidden_dropout_prob"] = 0.0.into();
        config["attention_probs_dropout_prob"] = 0.0.into();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        for file in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(file), dir.join(file)).unwrap();
        }
        dir
    })
}

/// Training and (odd-sized) validation data.
fn data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = common::fixture("ddp-data");
        let (train, valid) = (dir.join("train.json"), dir.join("valid.json"));
        common::synthetic_task(&train, 64, 21);
        common::synthetic_task(&valid, 37, 22);
        (train, valid)
    })
}

/// `medbert train` flags for a run of `steps` steps at `batch` questions per process.
fn train_flags(out: &Path, batch: usize, steps: usize) -> Vec<String> {
    let (train, valid) = data();
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
        ("--model", model_without_dropout()),
        ("--train-file", train.as_path()),
        ("--validation-file", valid.as_path()),
        ("--output-dir", out),
    ] {
        flags.push(flag.into());
        flags.push(path.display().to_string());
    }
    flags
}

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
    a.iter()
        .map(|(n, t)| ((t - &b[n]).abs().max().double_value(&[]), n.clone()))
        .fold((0.0, String::new()), |acc, x| if x.0 > acc.0 { x } else { acc })
}

/// The uninterrupted 2-process run (4 questions per process, 8 per step), shared by tests.
fn two_process_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = common::fixture("ddp-two");
        let flags = train_flags(&out, 4, 8);
        let mut launch = vec!["--standalone", "--nproc-per-node", "2"];
        let extra = ["--verify-sync", "1", "--save-steps", "4", "--record-questions"];
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

/// Two processes stopped after checkpoint-4 go on as one (with accumulation keeping the
/// global batch): the epoch's other half, each question once, to the same weights.
#[test]
fn a_two_process_checkpoint_resumes_on_one_process() {
    let two = two_process_run();
    let copy = copy_checkpoint(two, "checkpoint-4", "ddp-two-to-one");
    let mut flags = train_flags(&copy, 4, 8);
    flags.extend(["--gradient-accumulation-steps", "2", "--record-questions", "--resume"].map(String::from));
    let out = single(&flags);
    common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming on 1 process(es), the checkpoint was written by 2"), "{stderr}");
    assert!(!stderr.contains("global batch changes"), "{stderr}");

    let mut epoch = questions_trained(two, 0, 1..=4);
    epoch.extend(questions_trained(&copy, 0, 5..=8));
    epoch.sort();
    assert_eq!(epoch, (0..64).collect::<Vec<u64>>(), "the epoch's questions, each once");
    let (diff, name) = max_diff(&weights(two), &weights(&copy));
    assert!(diff < 1e-5, "resumed on 1 process, the weights differ from 2 processes' by {diff:e} at {name}");
    assert_last_evaluation_is_reproduced(&copy);
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

/// Two network namespaces joined by a veth pair, deleted on drop.
struct TwoHosts {
    names: [String; 2],
    addrs: [String; 2],
}

impl TwoHosts {
    /// Two hosts, or a test failure (the tests that call this are ignored unless built as root).
    fn create() -> TwoHosts {
        assert!(nix::unistd::geteuid().is_root(), "network namespaces need root: build and run the tests as root");
        // Tests run in parallel: each pair gets its own names and subnet.
        static PAIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let hosts = TwoHosts {
            names: [format!("mb{id}a"), format!("mb{id}b")],
            addrs: [format!("10.231.{n}.1"), format!("10.231.{n}.2")],
        };
        let [a, b] = &hosts.names;
        let (va, vb) = (format!("v{id}a"), format!("v{id}b"));
        let (cidr_a, cidr_b) = (format!("{}/24", hosts.addrs[0]), format!("{}/24", hosts.addrs[1]));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", &cidr_a, "dev", &va],
            vec!["-n", b, "addr", "add", &cidr_b, "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(&step).output().expect("run ip (iproute2)");
            assert!(out.status.success(), "ip {}: {}", step.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        hosts
    }

    fn exec(&self, host: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[host], program]);
        cmd
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Starts `medbert-run` for 2 nodes x 1 process in `hosts` with the standard flags plus `extra`.
fn start_two_nodes(hosts: &TwoHosts, out: &Path, extra: &[&str]) -> Vec<std::process::Child> {
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
    let hosts = TwoHosts::create();
    let out = common::scratch("ddp-two-nodes");
    let _ = wait_all(start_two_nodes(&hosts, &out, &[]));
    let (diff, name) = max_diff(&weights(&out), &weights(two_process_run()));
    assert!(diff == 0.0, "2 nodes x 1 process differ from 1 node x 2 processes by {diff:e} at {name}");
}

#[cfg_attr(not(as_root), ignore = "needs root for network namespaces (CI runs as root)")]
#[test]
fn a_worker_killed_on_the_second_node_restarts_both_nodes_and_the_run_resumes() {
    let hosts = TwoHosts::create();
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
