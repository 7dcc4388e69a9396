//! `medbert-run`: start one worker per device, like torchrun.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use medbert::dist::slurm::SlurmTask;
use medbert::launch::{self, Elastic, LaunchConfig, RdzvConf, Supervision, WorkerSpec};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// Start a group of workers with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
/// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_*).
///
/// With only training flags it runs `medbert train FLAGS` in every worker; anything after
/// `--` is run instead, e.g. `medbert-run --standalone --nproc-per-node 2 -- medbert dist-check`.
/// The group is all-or-nothing: when a worker fails, the others get SIGTERM, then SIGKILL
/// after --term-timeout, and the first failing rank is reported. SIGINT and SIGTERM sent to
/// the launcher are forwarded to the workers.
#[derive(Parser, Debug)]
#[command(name = "medbert-run", version, verbatim_doc_comment)]
struct Args {
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
    /// Seconds between SIGTERM and SIGKILL when stopping the group.
    #[arg(long, default_value_t = 5.0)]
    term_timeout: f64,
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

fn main() {
    let command = medbert::settings::both_spellings(Args::command());
    let args = Args::from_arg_matches(&command.clone().get_matches()).unwrap_or_else(|e| e.exit());
    let slurm = SlurmTask::from_lookup(|name| std::env::var(name).ok()).context("reading Slurm's variables");
    let launched = slurm.and_then(|slurm| config_from_args(args, &command, slurm)).and_then(|config| {
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
                .context("installing signal handlers")?;
        }
        Ok(launch::elastic_launch(config, &signal)?)
    });
    match launched {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("medbert-run: error: {err:#}");
            std::process::exit(2);
        }
    }
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

impl Nodes {
    fn new(args: &Args, slurm: Option<SlurmTask>) -> Result<Nodes> {
        let slurm = match slurm {
            Some(task) if task.local_world_size != 1 => bail!(
                "medbert-run is one of {} tasks on this node of an srun step: start it with `srun --ntasks-per-node 1`, \
                 or let srun start `medbert train` once per GPU without medbert-run",
                task.local_world_size
            ),
            slurm => slurm,
        };
        let (master_addr, master_port) = match &slurm {
            Some(task) => task.rendezvous(args.master_addr.clone(), args.master_port),
            None => (args.master_addr.clone().unwrap_or("127.0.0.1".into()), args.master_port.unwrap_or(29500)),
        };
        Ok(Nodes {
            nnodes: args
                .nnodes
                .map(|n| match n {
                    NodeCount::Fixed(n) | NodeCount::Range(_, n) => n,
                })
                .or(slurm.as_ref().map(|t| t.nnodes))
                .unwrap_or(1),
            node_rank: args.node_rank.or(slurm.as_ref().map(|t| t.node_rank)).unwrap_or(0),
            master_addr,
            master_port,
            run_id: args.run_id.clone().or(slurm.map(|t| t.job_id)).unwrap_or("none".into()),
        })
    }
}

/// What to launch, from the flags (torchrun's `config_from_args`) and, under `srun`, Slurm's
/// description of this task.
fn config_from_args(args: Args, command: &clap::Command, slurm: Option<SlurmTask>) -> Result<LaunchConfig> {
    // Once training flags have begun, clap keeps a later `--` among them.
    if !args.command.is_empty() && !args.train_flags.is_empty() || args.train_flags.iter().any(|a| a == "--") {
        bail!("give training flags or a command after `--`, not both");
    }
    // A launcher flag after the first training flag would be handed to the workers.
    let names: Vec<&str> = command
        .get_arguments()
        .flat_map(|a| a.get_long().into_iter().chain(a.get_all_aliases().unwrap_or_default()))
        .collect();
    let ours =
        |flag: &str| flag.strip_prefix("--").and_then(|f| f.split('=').next()).is_some_and(|f| names.contains(&f));
    if let Some(misplaced) = args.train_flags.iter().find(|f| ours(f.as_str())) {
        bail!(
            "{misplaced} is a launcher flag but comes after the training flags (from {:?} on): put the launcher's flags first",
            args.train_flags[0]
        );
    }
    let nodes = Nodes::new(&args, slurm)?;
    let elastic = match args.nnodes {
        Some(NodeCount::Range(min, max)) => {
            if args.rdzv_backend != RdzvBackend::C10d || args.rdzv_endpoint.is_none() {
                bail!("--nnodes {min}:{max} (an elastic job) needs --rdzv-backend c10d --rdzv-endpoint HOST[:PORT]");
            }
            if args.node_rank.is_some() {
                bail!(
                    "--node-rank: in an elastic job (--nnodes {min}:{max}) node ranks are assigned at each rendezvous"
                );
            }
            Some(Elastic { min_nodes: min, max_nodes: max, conf: RdzvConf::parse(&args.rdzv_conf)? })
        }
        _ if !args.rdzv_conf.is_empty() => bail!("--rdzv-conf is for an elastic job (--nnodes MIN:MAX)"),
        _ => None,
    };
    let program = match args.command.is_empty() {
        false => args.command,
        true => {
            let medbert = std::env::current_exe()?.with_file_name("medbert");
            [medbert.to_string_lossy().into_owned(), "train".to_string()].into_iter().chain(args.train_flags).collect()
        }
    };
    let nproc = nproc_per_node(&args.nproc_per_node)?;
    if elastic.is_none() && (nodes.nnodes == 0 || nodes.node_rank >= nodes.nnodes) {
        bail!("--node-rank {} must be below --nnodes {}", nodes.node_rank, nodes.nnodes);
    }
    let (master_addr, master_port) = match (args.standalone, &args.rdzv_endpoint) {
        (true, _) if nodes.nnodes != 1 || elastic.is_some() => {
            bail!("--standalone is for a single node; use --master-addr or --rdzv-endpoint with several nodes")
        }
        (true, _) => ("127.0.0.1".to_string(), 0),
        (false, Some(endpoint)) => rdzv_endpoint(endpoint)?,
        (false, None) if args.rdzv_backend == RdzvBackend::C10d => {
            bail!("--rdzv-backend c10d needs --rdzv-endpoint HOST[:PORT]")
        }
        (false, None) => (nodes.master_addr, nodes.master_port),
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
            log_dir: args.log_dir,
        },
        omp_threads: match std::env::var_os("OMP_NUM_THREADS") {
            Some(_) => None,
            None => Some(launch::omp_threads_per_worker(cores(), nproc)),
        },
    })
}

/// torchrun's HOST[:PORT] (an IPv6 address in brackets), port 29400 when not given.
fn rdzv_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            let port =
                port.parse().with_context(|| format!("--rdzv-endpoint {endpoint:?}: the port is not a number"))?;
            (host, port)
        }
        _ => (endpoint, 29400),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--rdzv-endpoint {endpoint:?}: expected HOST[:PORT]");
    }
    Ok((host.to_string(), port))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn nproc_per_node(value: &str) -> Result<usize> {
    let gpus = || usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let n = match value {
        "gpu" => match gpus() {
            0 => bail!("--nproc-per-node gpu: no CUDA device is visible"),
            n => n,
        },
        "cpu" => cores(),
        "auto" => match gpus() {
            0 => cores(),
            n => n,
        },
        n => n.parse().with_context(|| format!("--nproc-per-node {n:?}: expected a number, gpu, cpu or auto"))?,
    };
    if n == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    Ok(n)
}
