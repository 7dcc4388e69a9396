//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The embedded default model, from the environment or the `.env` that setup.sh wrote.
pub fn default_model() -> PathBuf {
    medbert::settings::load_dotenv().expect(".env is readable");
    let dir = std::env::var_os(medbert::settings::MODEL_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .expect("MEDBERT_MODEL is not set: run scripts/setup.sh (or scripts/test.sh) first");
    assert!(dir.join("model.safetensors").is_file(), "{} has no model.safetensors", dir.display());
    dir
}

/// The default model with dropout off, so runs with different batch shapes can agree.
pub fn model_without_dropout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = default_model();
        let dir = fixture("nodropout");
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

/// The venv's Python, which carries the reference implementation (torch, transformers).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("MEDBERT_VENV").map_or_else(|| manifest_dir().join(".venv"), PathBuf::from);
    let python = venv.join("bin/python");
    assert!(python.is_file(), "{} missing: run scripts/setup.sh first", python.display());
    python
}

/// Runs a reference script from tests/reference with the venv's Python; panics with its
/// stderr on failure.
pub fn run_reference(script: &str, args: &[&Path]) {
    let out = Command::new(venv_python())
        .arg(manifest_dir().join("tests/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("start the venv's python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// This test binary's scratch directory: `target/tmp/<binary>`, emptied when the binary starts,
/// so runs never pile up (statics are not dropped at exit, so a TempDir here would leak).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("tests");
        let name = stem.split('-').next().unwrap_or(stem);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    })
}

/// A directory shared by this binary's tests (a fixture built once): it stays until the
/// binary's next run empties the scratch directory.
pub fn fixture(name: &str) -> PathBuf {
    let dir = scratch_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// One test's own directory under the scratch directory: removed when the test passes (runs
/// write checkpoints of hundreds of MB), kept for inspection when it fails.
pub struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

/// A fresh directory `name` for one test; see [`Scratch`].
pub fn scratch(name: &str) -> Scratch {
    let dir = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Scratch(dir)
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

pub fn medbert_bin() -> &'static str {
    env!("CARGO_BIN_EXE_medbert")
}

/// The real MedMCQA data directory from MEDMCQA_DIR. Tests that call this carry
/// `#[cfg_attr(not(medmcqa_dir), ignore = ...)]`: without the variable at build time they are
/// reported as ignored with the reason; run anyway, or with it set but unreadable, they fail.
pub fn medmcqa_dir() -> PathBuf {
    let dir = std::env::var_os("MEDMCQA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .expect("MEDMCQA_DIR is not set (scripts/test.sh and CI set it to ../shared/data/medmcqa)");
    for file in ["dev.json", "validation-00000-of-00001.parquet"] {
        let path = dir.join(file);
        assert!(std::fs::metadata(&path).is_ok(), "MEDMCQA_DIR is set but {} is unreadable", path.display());
    }
    dir
}

/// A task a model can only solve by reading: the answer is the option naming the word the
/// question asks for, at a random position.
pub fn synthetic_task(path: &std::path::Path, n: usize, seed: u64) {
    const WORDS: [&str; 24] = [
        "liver",
        "kidney",
        "heart",
        "lung",
        "brain",
        "spleen",
        "femur",
        "tibia",
        "retina",
        "cochlea",
        "thyroid",
        "pancreas",
        "aorta",
        "trachea",
        "bladder",
        "uterus",
        "prostate",
        "cornea",
        "pituitary",
        "adrenal",
        "colon",
        "stomach",
        "tongue",
        "skin",
    ];
    let mut state = seed;
    let mut next = |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let mut lines = Vec::new();
    for i in 0..n {
        let mut picks: Vec<&str> = Vec::new();
        while picks.len() < 4 {
            let w = WORDS[next(WORDS.len())];
            if !picks.contains(&w) {
                picks.push(w);
            }
        }
        let answer = next(4);
        let q = format!("Which option names the {}?", picks[answer]);
        lines.push(
            serde_json::json!({"id": format!("s{seed}-{i}"), "question": q, "opa": picks[0], "opb": picks[1],
                "opc": picks[2], "opd": picks[3], "cop": answer + 1})
            .to_string(),
        );
    }
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// tests/fixtures/hub_server.py serving `root` on a loopback port; killed on drop.
pub struct HubServer {
    child: std::process::Child,
    pub endpoint: String,
}

impl HubServer {
    pub fn start(root: &Path) -> HubServer {
        use std::io::BufRead;
        let mut child = Command::new(venv_python())
            .arg(manifest_dir().join("tests/fixtures/hub_server.py"))
            .arg(root)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start hub_server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("hub_server.py printed {line:?}"));
        HubServer { child, endpoint: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The summary.json a training run wrote to its output directory.
pub fn summary(output_dir: &Path) -> serde_json::Value {
    let path = output_dir.join("summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A Slurm job id whose derived rendezvous port (15000 plus its last four digits) is free.
pub fn slurm_job_with_free_port() -> (String, u16) {
    let start = std::process::id() as u64 % 10_000;
    (0..10_000u64)
        .map(|k| 4_700_000 + (start + k) % 10_000)
        .map(|id| (id.to_string(), 15_000 + (id % 10_000) as u16))
        .find(|&(_, port)| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port in 15000-24999")
}

/// The variables `srun` gives task `rank` of `ntasks` on one node called localhost.
pub fn srun_task_env(rank: usize, ntasks: usize, job: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_STEP_ID", "0".into()),
        ("SLURM_PROCID", rank.to_string()),
        ("SLURM_NTASKS", ntasks.to_string()),
        ("SLURM_LOCALID", rank.to_string()),
        ("SLURM_NODEID", "0".into()),
        ("SLURM_NNODES", "1".into()),
        ("SLURM_TASKS_PER_NODE", ntasks.to_string()),
        ("SLURM_JOB_NODELIST", "localhost".into()),
        ("SLURM_JOB_ID", job.into()),
    ]
}

/// Asserts that a command exited 0, showing its status and stderr when it did not; returns
/// its stderr (the log).
pub fn assert_success(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    stderr
}

/// `medbert train` on the CPU: `model`, `train_file` and `output_dir` given; more flags with
/// `.args(...)`.
pub fn train_command(model: &Path, train_file: &Path, output_dir: &Path) -> Command {
    let mut cmd = Command::new(medbert_bin());
    cmd.args(["train", "--device", "cpu", "--model"]).arg(model);
    cmd.arg("--train-file").arg(train_file).arg("--output-dir").arg(output_dir);
    cmd
}

/// `medbert-run` with `launch` (its own flags), without the caller's OMP_NUM_THREADS: the
/// workers get the launcher's own (the node's cores split among them), as a user's do, unless
/// a test sets it.
pub fn launcher(launch: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medbert-run"));
    cmd.args(launch).env_remove("OMP_NUM_THREADS");
    cmd
}

/// The largest elementwise difference between two tensors of the same shape.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Network namespaces, each a host with one address on a bridge of their own (in a namespace
/// of its own too, so the machine's network is left alone); deleted on drop.
pub struct Hosts {
    names: Vec<String>,
    pub addrs: Vec<String>,
}

impl Hosts {
    /// `n` hosts, or a test failure (the tests that call this are ignored unless built as root).
    pub fn create(n: usize) -> Hosts {
        assert!(nix::unistd::geteuid().is_root(), "network namespaces need root: build and run the tests as root");
        // Tests run in parallel: each set gets its own names and subnet.
        static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let set = SETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{}{set}", std::process::id() % 100_000);
        let switch = format!("mb{id}s");
        let mut hosts = Hosts { names: vec![switch.clone()], addrs: Vec::new() };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "sw0", "up"]);
        for h in 0..n {
            let (name, here, there) = (format!("mb{id}h{h}"), format!("v{id}h{h}"), format!("v{id}s{h}"));
            let addr = format!("10.231.{set}.{}", h + 1);
            ip(&["netns", "add", &name]);
            hosts.names.push(name.clone());
            ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
            ip(&["link", "set", &here, "netns", &name]);
            ip(&["link", "set", &there, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &there, "master", "sw0", "up"]);
            ip(&["-n", &name, "addr", "add", &format!("{addr}/24"), "dev", &here]);
            ip(&["-n", &name, "link", "set", &here, "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            hosts.addrs.push(addr);
        }
        hosts
    }

    /// `program` run on `host` (`ip netns exec` execs it: the child's pid is the program's).
    pub fn exec(&self, host: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[host + 1], program]);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}
