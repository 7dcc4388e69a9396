//! medbert-run as a user drives it: environment, prefixed output, all-or-nothing teardown,
//! restarts and signal forwarding, with real worker processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn launcher(args: &[&str], worker: &[&str]) -> Command {
    let mut cmd = common::launcher(args);
    cmd.arg("--").args(worker);
    cmd
}

fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A shell line that waits until `path` exists: how a test's workers wait for each other.
fn until_exists(path: impl std::fmt::Display) -> String {
    format!("while [ ! -e {path} ]; do sleep 0.05; done")
}

/// A launcher's stderr as it comes, so a test can act once it said something.
struct Said {
    lines: mpsc::Receiver<String>,
    seen: String,
}

impl Said {
    /// Starts `cmd` with its output piped, its stderr read as it comes.
    fn spawn(cmd: &mut Command) -> (Child, Said) {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stream = BufReader::new(child.stderr.take().expect("stderr piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || stream.lines().map_while(|l| l.ok()).try_for_each(|l| tx.send(l)));
        (child, Said { lines, seen: String::new() })
    }

    /// Waits for a line holding `what`; says what it said instead when it ended or a minute
    /// passed without it.
    fn wait_for(&mut self, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen += &(line.clone() + "\n");
            if line.contains(what) {
                return Ok(());
            }
        }
        Err(format!("never said {what:?}; said:\n{}", self.seen))
    }

    /// Everything it said, once it exited.
    fn all(mut self) -> String {
        self.seen.extend(self.lines.iter().map(|l| l + "\n"));
        self.seen
    }
}

#[test]
fn workers_get_torchrun_variables_and_prefixed_output() {
    let script = "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR $MASTER_PORT \
                  $OMP_NUM_THREADS $TORCHELASTIC_RESTART_COUNT $TORCHELASTIC_MAX_RESTARTS";
    let out = launcher(&["--nproc-per-node", "2", "--master-port", "29123"], &sh(script)).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let cores = std::thread::available_parallelism().unwrap().get();
    let omp = (cores / 2).max(1);
    for rank in 0..2 {
        let want = format!("[rank{rank}]: {rank} {rank} 2 2 0 127.0.0.1 29123 {omp} 0 0");
        assert!(stdout.lines().any(|l| l == want), "missing {want:?} in:\n{stdout}");
    }
}

/// torchrun's spellings: underscores or dashes, and the c10d rendezvous at HOST:PORT.
#[test]
fn both_spellings_and_the_rdzv_endpoint_work_as_in_torchrun() {
    let script = sh("echo $WORLD_SIZE $MASTER_ADDR:$MASTER_PORT $TORCHELASTIC_RUN_ID");
    let port = common::free_port().to_string();
    let endpoint = format!("127.0.0.1:{port}");
    for flags in [
        vec!["--nproc_per_node", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", &endpoint, "--rdzv_id", "job"],
        vec!["--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", &endpoint, "--rdzv-id", "job"],
    ] {
        let out = launcher(&flags, &script).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{flags:?}: {stderr}");
        assert_eq!(stdout.matches(&format!(" 2 127.0.0.1:{port} job")).count(), 2, "{flags:?}: {stdout}");
    }
}

/// Under `srun --ntasks-per-node 1` the launcher takes its nodes, master and job id from
/// Slurm; as one of several tasks on a node it refuses, saying how to start it.
#[test]
fn under_srun_the_launcher_takes_the_job_from_slurm() {
    let (job, port) = common::slurm_job_with_free_port();
    let script = sh("echo $GROUP_WORLD_SIZE $WORLD_SIZE $MASTER_ADDR:$MASTER_PORT $TORCHELASTIC_RUN_ID");
    let out = launcher(&["--nproc-per-node", "2"], &script).envs(common::srun_task_env(0, 1, &job)).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(&format!(" 1 2 localhost:{port} {job}")).count(), 2, "{stdout}");

    let out = launcher(&["--nproc-per-node", "2"], &script).envs(common::srun_task_env(1, 2, &job)).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("start it with `srun --ntasks-per-node 1`"), "{}", text(&out).1);
}

/// A launcher flag among the training flags is the launcher's error, not the workers'.
#[test]
fn a_launcher_flag_after_the_training_flags_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_medbert-run"))
        .args(["--standalone", "--learning-rate", "1e-4", "--nproc_per_node", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--nproc_per_node is a launcher flag but comes after the training flags"));
}

#[test]
fn user_omp_num_threads_is_kept() {
    let mut cmd = launcher(&["--standalone", "--nproc-per-node", "2"], &sh("echo threads=$OMP_NUM_THREADS"));
    let out = cmd.env("OMP_NUM_THREADS", "7").output().unwrap();
    assert_eq!(text(&out).0.matches("threads=7").count(), 2, "{:?}", text(&out));
}

#[test]
fn a_failing_worker_takes_the_group_down_and_is_named() {
    let script = "if [ $RANK = 1 ]; then sleep 0.3; exit 3; fi; exec sleep 60";
    let started = Instant::now();
    let out = launcher(&["--standalone", "--nproc-per-node", "3"], &sh(script)).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1 failed first (exit code 3)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "teardown took {:?}", started.elapsed());
}

/// The processes whose process group is `group` (from /proc: `pgrp` is field 5 of `stat`).
fn members_of_group(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `comm` (field 2) may hold spaces: the fields after its closing parenthesis.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(2).and_then(|g| g.parse::<i32>().ok()) == Some(group)
        })
        .collect()
}

/// A worker whose child outlives it (a shell stopped by SIGTERM leaves its `sleep` running and
/// holding the output pipe) is torn down with its whole process group, at once.
/// "At once": well before the SIGKILL deadline, which is long so that a loaded machine's slow
/// start-up is not mistaken for waiting on it.
fn assert_worker_trees_are_torn_down(worker: &[&str]) {
    const TERM_TIMEOUT_S: u64 = 20;
    let started = Instant::now();
    let term_timeout = TERM_TIMEOUT_S.to_string();
    let out =
        launcher(&["--standalone", "--nproc-per-node", "2", "--term-timeout", &term_timeout], worker).output().unwrap();
    let took = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1 failed first (exit code 3)"), "{stderr}");
    assert!(took < Duration::from_secs(TERM_TIMEOUT_S), "teardown took {took:?}:\n{stderr}");
    let groups: Vec<i32> = stdout.lines().filter_map(|l| l.split_once("group ")?.1.trim().parse().ok()).collect();
    assert_eq!(groups.len(), 2, "each worker reports its process group:\n{stdout}");
    for group in groups {
        let left = members_of_group(group);
        assert!(left.is_empty(), "processes {left:?} of worker group {group} survived");
    }
}

/// Rank 1 fails once rank 0 has said its group and touched `$1`, and a second more for rank
/// 0's `sleep` to start.
fn rank1_fails_after_rank0() -> String {
    format!(r#"if [ "$RANK" = 1 ]; then {}; sleep 1; exit 3; fi"#, until_exists(r#""$1""#))
}

#[test]
fn a_worker_with_children_is_torn_down_with_its_process_group() {
    let dir = common::scratch("a_worker_with_children_is_torn_down_with_its_process_group");
    let said = dir.join("said");
    let script =
        format!(r#"echo group $(cut -d" " -f5 /proc/$$/stat); touch "$1"; {}; sleep 300"#, rank1_fails_after_rank0());
    assert_worker_trees_are_torn_down(&["sh", "-c", &script, "sh", said.to_str().unwrap()]);
}

#[test]
fn a_worker_wrapped_in_a_bash_script_is_torn_down_with_its_process_group() {
    let dir = common::scratch("a_worker_wrapped_in_a_bash_script_is_torn_down_with_its_process_group");
    let script = dir.join("script.sh");
    std::fs::write(
        &script,
        format!(
            "echo group $(cut -d' ' -f5 /proc/$$/stat)\nsleep 300 &\ntouch \"$1\"\n{}\nwait\n",
            rank1_fails_after_rank0()
        ),
    )
    .unwrap();
    let said = dir.join("said");
    assert_worker_trees_are_torn_down(&["bash", script.to_str().unwrap(), said.to_str().unwrap()]);
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_the_deadline() {
    let dir = common::scratch("a_worker_ignoring_sigterm_is_killed_after_the_deadline");
    let pid_file = dir.join("pid");
    // Rank 0 fails once rank 1 ignores SIGTERM (its pid file is written after the trap).
    let script = format!(
        "if [ $RANK = 0 ]; then {}; exit 4; fi; trap '' TERM; echo $$ > {}; while :; do sleep 0.1; done",
        until_exists(pid_file.display()),
        pid_file.display()
    );
    let started = Instant::now();
    let out =
        launcher(&["--standalone", "--nproc-per-node", "2", "--term-timeout", "1"], &sh(&script)).output().unwrap();
    let took = started.elapsed();
    assert!(text(&out).1.contains("rank 0 failed first (exit code 4)"), "{:?}", text(&out));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "took {took:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "worker {pid} survived");
}

#[test]
fn max_restarts_reruns_the_group_with_the_restart_count() {
    let script = "if [ $TORCHELASTIC_RESTART_COUNT = 0 ] && [ $RANK = 1 ]; then exit 5; fi; \
                  echo done attempt=$TORCHELASTIC_RESTART_COUNT";
    let out =
        launcher(&["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"], &sh(script)).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1 failed first (exit code 5)") && stderr.contains("restarting the group (1/1)"),
        "{stderr}"
    );
    assert_eq!(stdout.matches("done attempt=1").count(), 2, "{stdout}");

    let out =
        launcher(&["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"], &sh("exit 6")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("failed after 1 restart(s)"));
}

#[test]
fn sigterm_to_the_launcher_is_forwarded_to_the_workers() {
    let dir = common::scratch("sigterm_to_the_launcher_is_forwarded_to_the_workers");
    let script = format!("echo $$ > {}/$RANK; exec sleep 60", dir.display());
    let mut child = launcher(&["--standalone", "--nproc-per-node", "2"], &sh(&script))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while (0..2).any(|r| !dir.join(r.to_string()).exists()) {
        assert!(Instant::now() < until, "workers did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + nix::sys::signal::Signal::SIGTERM as i32));
    for rank in 0..2 {
        let pid = std::fs::read_to_string(dir.join(rank.to_string())).unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "rank {rank} survived");
    }
}

#[test]
fn launches_the_c10d_check_across_two_workers() {
    let out =
        launcher(&["--standalone", "--nproc-per-node", "2"], &[common::medbert_bin(), "dist-check", "--numel", "4096"])
            .output()
            .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for rank in 0..2 {
        assert!(stdout.contains(&format!("[rank{rank}]: rank {rank}/2 backend gloo: allreduce ok")), "{stdout}");
    }
}

#[test]
fn bad_usage_is_a_clear_error() {
    let out = launcher(&["--nproc-per-node", "zero"], &["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--nproc-per-node \"zero\""), "{:?}", text(&out));
    let out = launcher(&["--nnodes", "2", "--node-rank", "2"], &["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = launcher(&["--standalone", "--nnodes", "2"], &["true"]).output().unwrap();
    assert!(text(&out).1.contains("--standalone is for a single node"));
    let elastic = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:1"];
    for (flags, said) in [
        (vec!["--nnodes", "2:3"], "--nnodes 2:3 (an elastic job) needs --rdzv-backend c10d"),
        (vec!["--nnodes", "3:2"], "expected MIN:MAX with 0 < MIN <= MAX, got 3:2"),
        (
            [&["--nnodes", "1:2", "--rdzv-conf", "timeout=5"][..], &elastic].concat(),
            "--rdzv-conf \"timeout=5\": unknown key",
        ),
        (
            [&["--nnodes", "1:2", "--node-rank", "1"][..], &elastic].concat(),
            "node ranks are assigned at each rendezvous",
        ),
        (vec!["--nnodes", "2", "--rdzv-conf", "join_timeout=5"], "--rdzv-conf is for an elastic job"),
    ] {
        let out = launcher(&flags, &["true"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(text(&out).1.contains(said), "{flags:?}: {said:?} not said: {}", text(&out).1);
    }
}

/// Two launchers of an elastic job on one machine: the first hosts the store (the second
/// finds its port taken and joins it), node ranks come from the rendezvous, and a failing
/// worker restarts both nodes' workers (the other worker still runs, as in training, where
/// every rank waits for the others) as a restart counted against --max-restarts.
#[test]
fn elastic_launchers_get_node_ranks_at_the_rendezvous_and_count_a_failure_as_a_restart() {
    let endpoint = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--nnodes", "2:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", &endpoint, "--max-restarts", "1"];
    // In round 0 rank 1 fails, but only once rank 0 has said its line (the marker file): a
    // failure seen first would stop rank 0 before its shell got to `echo`.
    let dir = common::scratch("elastic_launchers_get_node_ranks_at_the_rendezvous_and_count_a_failure_as_a_restart");
    let said = dir.join("rank0-said");
    let script = format!(
        "echo node $GROUP_RANK of $GROUP_WORLD_SIZE, rank $RANK of $WORLD_SIZE, round $TORCHELASTIC_RESTART_COUNT; \
         [ $TORCHELASTIC_RESTART_COUNT = 0 ] || exit 0; \
         [ $RANK = 0 ] && {{ touch {said}; sleep 5; exit 0; }}; \
         {wait}; exit 4",
        said = said.display(),
        wait = until_exists(said.display())
    );
    let script = sh(&script);
    // The second starts once the first is up, so the first is the host.
    let (first, mut first_said) = Said::spawn(&mut launcher(&flags, &script));
    first_said.wait_for("elastic job of 2 to 2").unwrap();
    let second = launcher(&flags, &script).output().unwrap();
    let mut first = first.wait_with_output().unwrap();
    first.stderr = first_said.all().into_bytes();
    for (node, out) in [first, second].iter().enumerate() {
        let (stdout, stderr) = text(out);
        assert!(out.status.success(), "node {node}: {stderr}");
        for round in 0..2 {
            let want = format!("[rank{node}]: node {node} of 2, rank {node} of 2, round {round}");
            assert!(stdout.lines().any(|l| l == want), "node {node}: missing {want:?} in:\n{stdout}");
        }
        assert!(stderr.contains("restarting the group (1/1)"), "node {node}: {stderr}");
        assert_eq!(stderr.contains("(hosted by this launcher)"), node == 0, "node {node}: {stderr}");
    }
}

/// A launcher waiting to join when the job ends is told it ended: the host keeps the store
/// up until that launcher has left (torchrun's exit barrier), instead of closing it under it.
/// The waiting launcher is stopped (SIGSTOP) while the job ends, so it is slow to see the end.
#[test]
fn the_host_keeps_the_store_up_until_a_launcher_waiting_to_join_has_left() {
    let endpoint = format!("127.0.0.1:{}", common::free_port());
    let flags = [
        "--nnodes",
        "1:2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        &endpoint,
        "--rdzv-conf",
        "last_call_timeout=0.1,keep_alive_interval=0.5,keep_alive_max_attempt=40",
    ];
    // The worker ends once the test says so.
    let dir = common::scratch("the_host_keeps_the_store_up_until_a_launcher_waiting_to_join_has_left");
    let end = dir.join("end");
    let script = format!("echo working; {}", until_exists(end.display()));
    let (host, mut host_said) = Said::spawn(&mut launcher(&flags, &sh(&script)));
    host_said.wait_for("round 0: 1 node(s)").unwrap();
    let late = launcher(&flags, &sh("echo admitted")).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    host_said.wait_for("a node asks to join").unwrap();
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(late.id() as i32), sig).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    std::fs::write(&end, "").unwrap();
    let kept_up = host_said.wait_for("keeping the rendezvous store up until launcher(s) [1] leave the job");
    signal(nix::sys::signal::Signal::SIGCONT);
    kept_up.unwrap();

    let late_out = late.wait_with_output().unwrap();
    let (late_stdout, late_stderr) = text(&late_out);
    assert!(late_out.status.success(), "{late_stderr}");
    assert!(late_stderr.contains("the job finished before this node was admitted"), "{late_stderr}");
    assert!(!late_stdout.contains("admitted"), "{late_stdout}");
    let host_out = host.wait_with_output().unwrap();
    let host_stderr = host_said.all();
    assert!(host_out.status.success(), "{host_stderr}");
    assert!(text(&host_out).0.contains("[rank0]: working"));
}
