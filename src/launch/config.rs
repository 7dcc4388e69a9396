//! medbert-run's flags and the decisions they lead to (torchrun's `config_from_args`): which
//! nodes, which rendezvous, which command, how many workers and threads. What the decisions
//! read of the machine ([`Host`]) is passed in, so that they are tested without it.

use super::rendezvous::elastic::{Elastic, RdzvConf};
use super::{LaunchConfig, Supervision, WorkerSpec};
use crate::dist::slurm::SlurmTask;
use crate::dist::{threads_per_worker, var};
use crate::error::{Error, Result};
use clap::{CommandFactory, Parser};
use std::path::PathBuf;
use std::time::Duration;

/// The master's address when neither the flags nor Slurm give one.
pub const DEFAULT_MASTER_ADDR: &str = "127.0.0.1";
/// The static rendezvous's port when neither the flags nor Slurm give one (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// The port of `--rdzv-endpoint HOST` without one (torchrun's).
pub const DEFAULT_RDZV_PORT: u16 = 29400;

/// Start a group of workers with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
/// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_*).
///
/// With only training flags it runs `medbert train FLAGS` in every worker; anything after
/// `--` is run instead, e.g. `medbert-run --standalone --nproc-per-node 2 -- medbert dist-check`.
/// The group is all-or-nothing: when a worker fails, the others get SIGTERM, then SIGKILL
/// after --term-timeout, and the first failing rank is reported. SIGTERM, SIGUSR1 and SIGINT
/// sent to the launcher are forwarded to the workers: `medbert train` saves a checkpoint at
/// the end of its step and exits with 75, and so does the launcher (README: Preemption).
#[derive(Parser, Debug)]
#[command(name = "medbert-run", version, verbatim_doc_comment)]
pub struct RunArgs {
    /// Workers on this node: a number, `gpu` (one per CUDA device), `cpu` (one per core) or
    /// `auto` (gpu when CUDA is available, else cpu).
    #[arg(long, default_value = "1")]
    nproc_per_node: String,
    /// Number of nodes N [default: 1; under `srun --ntasks-per-node 1`, SLURM_NNODES], or
    /// MIN:MAX for an elastic job (with --rdzv-backend c10d): node ranks are assigned at each
    /// round's rendezvous, a node that stops sending heartbeats is dropped and the others go
    /// on from the newest checkpoint at the smaller world size, a node that asks to join is
    /// admitted at the group's next checkpoint (choose --save-steps by what a lost node may
    /// cost). The launcher at --rdzv-endpoint hosts the store and is node 0: its loss ends
    /// the job. Rounds for lost and joining nodes do not count against --max-restarts.
    #[arg(long, value_name = "N|MIN:MAX", value_parser = node_count)]
    nnodes: Option<NodeCount>,
    /// This node's rank in a static job, 0..nnodes [default: 0; under srun, SLURM_NODEID].
    #[arg(long)]
    node_rank: Option<usize>,
    /// Address of the node that hosts rank 0 (the rendezvous store) [default: 127.0.0.1; under
    /// srun, the first host of SLURM_JOB_NODELIST].
    #[arg(long)]
    master_addr: Option<String>,
    /// Port of the rendezvous store on the master node [default: 29500; under srun, 15000 plus
    /// the last four digits of SLURM_JOB_ID].
    #[arg(long)]
    master_port: Option<u16>,
    /// Single-node job on 127.0.0.1 with a free port (ignores --master-addr/--master-port).
    #[arg(long)]
    standalone: bool,
    /// Restart the whole group up to this many times after a failure.
    #[arg(long, default_value_t = 0)]
    max_restarts: usize,
    /// Seconds between checks of the workers' state.
    #[arg(long, default_value_t = 0.1)]
    monitor_interval: f64,
    /// Seconds between SIGTERM and SIGKILL when stopping the group after a failure.
    #[arg(long, default_value_t = 5.0)]
    term_timeout: f64,
    /// Seconds the workers have, after a signal to the launcher (forwarded to them) or to a
    /// worker, to save a checkpoint and exit before SIGKILL; a second signal to the launcher
    /// kills them at once. Above the workers' --save-on-signal-timeout (25 s), so that they
    /// give up first.
    #[arg(long, default_value_t = 30.0)]
    signal_timeout: f64,
    /// When no worker of this node has finished an optimizer step for this many seconds
    /// (set-up, evaluation and saving not counted), print where every worker is and stop the
    /// group as after a failure [default: off: a healthy step can take minutes on a large
    /// model; the workers' --ddp-timeout (30 min) bounds a hang in a collective, and the same
    /// table is printed then]. A few times the slowest step is a good value.
    #[arg(long, value_name = "SECONDS")]
    hang_timeout: Option<f64>,
    /// Also write each worker's output to DIR/attempt<K>_rank<R>.log.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Job id given to workers as TORCHELASTIC_RUN_ID [default: none; under srun, SLURM_JOB_ID].
    #[arg(long, alias = "rdzv-id")]
    run_id: Option<String>,
    /// Rendezvous backend, as torchrun's: c10d (node 0's launcher hosts the store at
    /// --rdzv-endpoint) or static (the same, at --master-addr/--master-port).
    #[arg(long, value_enum, default_value = "static")]
    rdzv_backend: RdzvBackend,
    /// HOST[:PORT] of the rendezvous store (torchrun's form; instead of --master-addr and
    /// --master-port, port 29400 when not given).
    #[arg(long, value_name = "HOST[:PORT]")]
    rdzv_endpoint: Option<String>,
    /// Elastic rendezvous settings, torchrun's keys: join_timeout (600: seconds a round waits
    /// for MIN nodes before the job fails), last_call_timeout (30: seconds the first round
    /// waits for more than MIN), keep_alive_interval (5: seconds between heartbeats),
    /// keep_alive_max_attempt (3: heartbeats missed before a node is lost), is_host (whether
    /// this launcher hosts the store; by default when the endpoint is this machine's).
    #[arg(long, value_name = "KEY=VALUE,...", default_value = "")]
    rdzv_conf: String,
    /// Training flags for `medbert train`.
    #[arg(allow_hyphen_values = true, num_args = 0.., value_name = "TRAIN_FLAGS")]
    train_flags: Vec<String>,
    /// A command each worker runs instead of `medbert train`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RdzvBackend {
    C10d,
    Static,
}

/// `--nnodes`: a fixed number of nodes, or an elastic range.
#[derive(Clone, Copy, Debug)]
enum NodeCount {
    Fixed(usize),
    Range(usize, usize),
}

fn node_count(text: &str) -> std::result::Result<NodeCount, String> {
    let number = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("{s:?} is not a number"));
    let count = match text.split_once(':') {
        Some((min, max)) => NodeCount::Range(number(min)?, number(max)?),
        None => NodeCount::Fixed(number(text)?),
    };
    match count {
        NodeCount::Fixed(0) => Err("expected at least 1 node".into()),
        NodeCount::Range(min, max) if min == 0 || min > max => {
            Err(format!("expected MIN:MAX with 0 < MIN <= MAX, got {text}"))
        }
        count => Ok(count),
    }
}

/// medbert-run's command line: its flags, each also spelled with underscores (torchrun's
/// `--nproc_per_node`).
pub fn command() -> clap::Command {
    crate::settings::both_spellings(RunArgs::command())
}

/// What the decisions read of this machine and this process's environment.
pub struct Host {
    pub cores: usize,
    /// The CUDA devices visible; asked only for `--nproc-per-node gpu|auto`.
    pub gpus: fn() -> usize,
    /// Whether the user set OMP_NUM_THREADS (then the workers inherit it).
    pub omp_threads_set: bool,
    /// This task of an `srun` step, if it is one.
    pub slurm: Option<SlurmTask>,
    /// The `medbert` binary the workers run for training flags.
    pub medbert: PathBuf,
}

impl Host {
    pub fn this_machine() -> Result<Host> {
        let slurm = SlurmTask::from_lookup(|name| std::env::var(name).ok())
            .map_err(|e| Error::Input(format!("reading Slurm's variables: {e}")))?;
        let exe = std::env::current_exe().map_err(|e| Error::Input(format!("the launcher's own path: {e}")))?;
        Ok(Host {
            cores: crate::dist::cores(),
            gpus: || usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
            omp_threads_set: std::env::var_os(var::OMP_NUM_THREADS).is_some(),
            slurm,
            medbert: exe.with_file_name("medbert"),
        })
    }
}

fn refuse<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Input(message.into()))
}

/// The nodes of the job: from the flags, else from Slurm when the launcher is the one task on
/// each node of an `srun` step, else torchrun's defaults.
struct Nodes {
    nnodes: usize,
    node_rank: usize,
    master_addr: String,
    master_port: u16,
    run_id: String,
}

impl Nodes {
    fn new(args: &RunArgs, slurm: Option<&SlurmTask>) -> Result<Nodes> {
        if let Some(task) = slurm.filter(|t| t.local_world_size != 1) {
            return refuse(format!(
                "medbert-run is one of {} tasks on this node of an srun step: start it with `srun --ntasks-per-node 1`, \
                 or let srun start `medbert train` once per GPU without medbert-run",
                task.local_world_size
            ));
        }
        let (master_addr, master_port) = match slurm {
            Some(task) => task.rendezvous(args.master_addr.clone(), args.master_port),
            None => (
                args.master_addr.clone().unwrap_or(DEFAULT_MASTER_ADDR.into()),
                args.master_port.unwrap_or(DEFAULT_MASTER_PORT),
            ),
        };
        let flag_nodes = args.nnodes.map(|n| match n {
            NodeCount::Fixed(n) | NodeCount::Range(_, n) => n,
        });
        Ok(Nodes {
            nnodes: flag_nodes.or(slurm.map(|t| t.nnodes)).unwrap_or(1),
            node_rank: args.node_rank.or(slurm.map(|t| t.node_rank)).unwrap_or(0),
            master_addr,
            master_port,
            run_id: args.run_id.clone().or(slurm.map(|t| t.job_id.clone())).unwrap_or("none".into()),
        })
    }
}

/// What to launch, from the flags (torchrun's `config_from_args`) and, under `srun`, Slurm's
/// description of this task.
pub fn config_from_args(args: RunArgs, host: &Host) -> Result<LaunchConfig> {
    check_flag_order(&args)?;
    let nodes = Nodes::new(&args, host.slurm.as_ref())?;
    let elastic = elastic(&args)?;
    let nproc = nproc_per_node(&args.nproc_per_node, host)?;
    if elastic.is_none() && (nodes.nnodes == 0 || nodes.node_rank >= nodes.nnodes) {
        return refuse(format!("--node-rank {} must be below --nnodes {}", nodes.node_rank, nodes.nnodes));
    }
    let (master_addr, master_port) = rendezvous_address(&args, &nodes, elastic.is_some())?;
    let program = match args.command.is_empty() {
        false => args.command,
        true => [host.medbert.to_string_lossy().into_owned(), "train".to_string()]
            .into_iter()
            .chain(args.train_flags)
            .collect(),
    };
    Ok(LaunchConfig {
        elastic,
        spec: WorkerSpec {
            nnodes: nodes.nnodes,
            node_rank: nodes.node_rank,
            nproc_per_node: nproc,
            master_addr,
            master_port,
            max_restarts: args.max_restarts,
            run_id: nodes.run_id,
        },
        program,
        supervision: Supervision {
            monitor_interval: Duration::from_secs_f64(args.monitor_interval.max(0.001)),
            term_timeout: Duration::from_secs_f64(args.term_timeout.max(0.0)),
            signal_timeout: Duration::from_secs_f64(args.signal_timeout.max(0.0)),
            hang_timeout: args.hang_timeout.map(|s| Duration::from_secs_f64(s.max(0.0))),
            positions: None,
            log_dir: args.log_dir,
        },
        omp_threads: (!host.omp_threads_set).then(|| threads_per_worker(host.cores, nproc)),
    })
}

/// Training flags or a command, not both; no launcher flag among the training flags (it would
/// be handed to the workers).
fn check_flag_order(args: &RunArgs) -> Result<()> {
    // Once training flags have begun, clap keeps a later `--` among them.
    if !args.command.is_empty() && !args.train_flags.is_empty() || args.train_flags.iter().any(|a| a == "--") {
        return refuse("give training flags or a command after `--`, not both");
    }
    let command = command();
    let names: Vec<&str> = command
        .get_arguments()
        .flat_map(|a| a.get_long().into_iter().chain(a.get_all_aliases().unwrap_or_default()))
        .collect();
    let ours =
        |flag: &str| flag.strip_prefix("--").and_then(|f| f.split('=').next()).is_some_and(|f| names.contains(&f));
    match args.train_flags.iter().find(|f| ours(f.as_str())) {
        Some(misplaced) => refuse(format!(
            "{misplaced} is a launcher flag but comes after the training flags (from {:?} on): put the launcher's flags first",
            args.train_flags[0]
        )),
        None => Ok(()),
    }
}

/// `--nnodes MIN:MAX` with the c10d rendezvous and its `--rdzv-conf`; None for a static job.
fn elastic(args: &RunArgs) -> Result<Option<Elastic>> {
    match args.nnodes {
        Some(NodeCount::Range(min, max)) => {
            if args.rdzv_backend != RdzvBackend::C10d || args.rdzv_endpoint.is_none() {
                return refuse(format!(
                    "--nnodes {min}:{max} (an elastic job) needs --rdzv-backend c10d --rdzv-endpoint HOST[:PORT]"
                ));
            }
            if args.node_rank.is_some() {
                return refuse(format!(
                    "--node-rank: in an elastic job (--nnodes {min}:{max}) node ranks are assigned at each rendezvous"
                ));
            }
            Ok(Some(Elastic { min_nodes: min, max_nodes: max, conf: RdzvConf::parse(&args.rdzv_conf)? }))
        }
        _ if !args.rdzv_conf.is_empty() => refuse("--rdzv-conf is for an elastic job (--nnodes MIN:MAX)"),
        _ => Ok(None),
    }
}

/// Where the store is: 127.0.0.1 and a free port for `--standalone`, `--rdzv-endpoint`, else
/// the master of the nodes.
fn rendezvous_address(args: &RunArgs, nodes: &Nodes, elastic: bool) -> Result<(String, u16)> {
    match (args.standalone, &args.rdzv_endpoint) {
        (true, _) if nodes.nnodes != 1 || elastic => {
            refuse("--standalone is for a single node; use --master-addr or --rdzv-endpoint with several nodes")
        }
        (true, _) => Ok((DEFAULT_MASTER_ADDR.to_string(), 0)),
        (false, Some(endpoint)) => rdzv_endpoint(endpoint),
        (false, None) if args.rdzv_backend == RdzvBackend::C10d => {
            refuse("--rdzv-backend c10d needs --rdzv-endpoint HOST[:PORT]")
        }
        (false, None) => Ok((nodes.master_addr.clone(), nodes.master_port)),
    }
}

/// torchrun's HOST[:PORT] (an IPv6 address in brackets), port 29400 when not given.
fn rdzv_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            let port = port
                .parse()
                .map_err(|_| Error::Input(format!("--rdzv-endpoint {endpoint:?}: the port is not a number")))?;
            (host, port)
        }
        _ => (endpoint, DEFAULT_RDZV_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return refuse(format!("--rdzv-endpoint {endpoint:?}: expected HOST[:PORT]"));
    }
    Ok((host.to_string(), port))
}

/// `--nproc-per-node`: a number, or one worker per GPU or per core.
fn nproc_per_node(value: &str, host: &Host) -> Result<usize> {
    let n = match value {
        "gpu" => match (host.gpus)() {
            0 => return refuse("--nproc-per-node gpu: no CUDA device is visible"),
            n => n,
        },
        "cpu" => host.cores,
        "auto" => match (host.gpus)() {
            0 => host.cores,
            n => n,
        },
        n => n
            .parse()
            .map_err(|_| Error::Input(format!("--nproc-per-node {n:?}: expected a number, gpu, cpu or auto")))?,
    };
    if n == 0 {
        return refuse("--nproc-per-node must be at least 1");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host { cores: 8, gpus: || 0, omp_threads_set: false, slurm: None, medbert: "/opt/medbert".into() }
    }

    fn config(flags: &[&str], host: &Host) -> Result<LaunchConfig> {
        let matches = command().try_get_matches_from(std::iter::once("medbert-run").chain(flags.iter().copied()));
        let args =
            <RunArgs as clap::FromArgMatches>::from_arg_matches(&matches.expect("flags parse")).expect("flags parse");
        config_from_args(args, host)
    }

    fn refused(flags: &[&str]) -> String {
        config(flags, &host()).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{flags:?} was accepted"))
    }

    fn slurm(nnodes: usize, node_rank: usize, local_world_size: usize) -> SlurmTask {
        SlurmTask {
            rank: node_rank * local_world_size,
            world_size: nnodes * local_world_size,
            local_rank: 0,
            local_world_size,
            node_rank,
            nnodes,
            first_host: "gpu07".into(),
            job_id: "4242123".into(),
        }
    }

    #[test]
    fn torchruns_defaults_for_a_single_node() {
        let c = config(&["--output-dir", "run"], &host()).unwrap();
        assert_eq!(
            (c.spec.nnodes, c.spec.node_rank, c.spec.nproc_per_node, c.spec.master_addr.as_str(), c.spec.master_port),
            (1, 0, 1, DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT)
        );
        assert_eq!(c.program, ["/opt/medbert", "train", "--output-dir", "run"]);
        assert_eq!((c.spec.run_id.as_str(), c.omp_threads, c.elastic), ("none", Some(8), None));
    }

    #[test]
    fn standalone_picks_a_free_port_and_a_command_replaces_training() {
        let c = config(&["--standalone", "--nproc-per-node", "cpu", "--", "medbert", "dist-check"], &host()).unwrap();
        assert_eq!((c.spec.master_addr.as_str(), c.spec.master_port, c.spec.nproc_per_node), ("127.0.0.1", 0, 8));
        assert_eq!(c.program, ["medbert", "dist-check"]);
        assert_eq!(c.omp_threads, Some(1), "8 cores among 8 workers");
    }

    #[test]
    fn threads_are_the_users_when_omp_num_threads_is_set() {
        let h = Host { omp_threads_set: true, ..host() };
        assert_eq!(config(&["--nproc-per-node", "3"], &h).unwrap().omp_threads, None);
        assert_eq!(config(&["--nproc-per-node", "3"], &host()).unwrap().omp_threads, Some(2));
    }

    #[test]
    fn gpu_and_auto_count_cuda_devices() {
        let with_gpus = Host { gpus: || 4, ..host() };
        assert_eq!(config(&["--nproc-per-node", "gpu"], &with_gpus).unwrap().spec.nproc_per_node, 4);
        assert_eq!(config(&["--nproc-per-node", "auto"], &with_gpus).unwrap().spec.nproc_per_node, 4);
        assert_eq!(config(&["--nproc-per-node", "auto"], &host()).unwrap().spec.nproc_per_node, 8);
        assert!(refused(&["--nproc-per-node", "gpu"]).contains("no CUDA device is visible"));
        assert!(refused(&["--nproc-per-node", "two"]).contains("expected a number, gpu, cpu or auto"));
        assert!(refused(&["--nproc-per-node", "0"]).contains("at least 1"));
    }

    #[test]
    fn rdzv_endpoint_takes_torchruns_forms() {
        assert_eq!(rdzv_endpoint("node7").unwrap(), ("node7".into(), DEFAULT_RDZV_PORT));
        assert_eq!(rdzv_endpoint("node7:1234").unwrap(), ("node7".into(), 1234));
        assert_eq!(rdzv_endpoint("[fd00::7]:1234").unwrap(), ("fd00::7".into(), 1234));
        assert_eq!(rdzv_endpoint("fd00::7").unwrap(), ("fd00::7".into(), DEFAULT_RDZV_PORT));
        assert!(rdzv_endpoint("node7:http").unwrap_err().to_string().contains("the port is not a number"));
        let c = config(&["--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.9", "--nnodes", "2"], &host()).unwrap();
        assert_eq!((c.spec.master_addr.as_str(), c.spec.master_port), ("10.0.0.9", DEFAULT_RDZV_PORT));
    }

    #[test]
    fn elastic_ranges_need_the_c10d_rendezvous_and_no_node_rank() {
        let elastic = ["--nnodes", "1:3", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:5"];
        let c = config(&[&elastic[..], &["--rdzv-conf", "join_timeout=7"]].concat(), &host()).unwrap();
        let e = c.elastic.expect("an elastic job");
        assert_eq!((e.min_nodes, e.max_nodes, e.conf.join_timeout), (1, 3, Duration::from_secs(7)));
        assert!(refused(&["--nnodes", "1:3"]).contains("needs --rdzv-backend c10d --rdzv-endpoint"));
        assert!(refused(&[&elastic[..], &["--node-rank", "1"]].concat()).contains("assigned at each rendezvous"));
        assert!(refused(&["--rdzv-conf", "join_timeout=7"]).contains("is for an elastic job"));
        assert!(refused(&["--rdzv-backend", "c10d"]).contains("needs --rdzv-endpoint"));
    }

    #[test]
    fn node_ranks_and_misplaced_flags_are_refused() {
        assert!(refused(&["--nnodes", "2", "--node-rank", "2"]).contains("--node-rank 2 must be below --nnodes 2"));
        assert!(refused(&["--nnodes", "2", "--standalone"]).contains("--standalone is for a single node"));
        let late = refused(&["--output-dir", "run", "--nproc_per_node", "2"]);
        assert!(late.contains("--nproc_per_node is a launcher flag but comes after the training flags"), "{late}");
    }

    #[test]
    fn under_srun_the_nodes_come_from_slurm_and_flags_win() {
        let h = Host { slurm: Some(slurm(2, 1, 1)), ..host() };
        let c = config(&[], &h).unwrap();
        assert_eq!((c.spec.nnodes, c.spec.node_rank, c.spec.run_id.as_str()), (2, 1, "4242123"));
        assert_eq!((c.spec.master_addr.as_str(), c.spec.master_port), ("gpu07", 15000 + 2123));
        let c = config(&["--master-port", "777", "--run-id", "mine"], &h).unwrap();
        assert_eq!((c.spec.master_port, c.spec.run_id.as_str()), (777, "mine"));
        let several = Host { slurm: Some(slurm(2, 1, 4)), ..host() };
        let err = config(&[], &several).expect_err("refused").to_string();
        assert!(err.contains("one of 4 tasks on this node") && err.contains("--ntasks-per-node 1"), "{err}");
    }
}
