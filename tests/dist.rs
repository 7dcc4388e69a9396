//! The c10d shim across real processes: Gloo over a TCPStore on 127.0.0.1.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const NUMEL: i64 = 100_003;

fn dist_check(world: usize, rank: usize, port: u16, dump: &Path, timeout_s: u64) -> Command {
    let mut cmd = Command::new(common::medbert_bin());
    cmd.args(["dist-check", "--numel", &NUMEL.to_string(), "--timeout", &timeout_s.to_string(), "--dump"])
        .arg(dump)
        .env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    cmd
}

fn run_group(world: usize, dump: &Path) -> Vec<Output> {
    let port = common::free_port();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            dist_check(world, rank, port, dump, 60)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn medbert")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn check_group(world: usize) {
    let dump = common::scratch_dir().join(format!("world{world}"));
    for (rank, out) in run_group(world, &dump).iter().enumerate() {
        assert!(out.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let base = Tensor::arange(NUMEL, (Kind::Float, Device::Cpu));
    let ranks_sum: f64 = (1..=world).map(|r| r as f64).sum();
    for rank in 0..world {
        let got: std::collections::HashMap<_, _> =
            Tensor::read_safetensors(dump.join(format!("rank{rank}.safetensors"))).unwrap().into_iter().collect();
        // Every rank contributed arange * (rank + 1); the sum is exact in f32 at this size.
        assert!(got["allreduce"].equal(&(&base * ranks_sum)), "rank {rank}: wrong all-reduce sum");
        // Rank r sent arange + 1000 r; after the broadcast every rank holds rank 0's values.
        assert!(got["broadcast"].equal(&base), "rank {rank}: broadcast did not deliver rank 0's values");
    }
}

#[test]
fn two_processes_allreduce_sum_and_broadcast_are_exact() {
    check_group(2);
}

#[test]
fn three_processes_allreduce_sum_and_broadcast_are_exact() {
    check_group(3);
}

#[test]
fn a_lone_rank_times_out_with_an_error_not_an_abort() {
    let dump = common::scratch_dir().join("lone");
    let started = Instant::now();
    let out = dist_check(2, 0, common::free_port(), &dump, 2).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected a clean error exit: {stderr}");
    assert!(stderr.contains("c10d:"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn a_malformed_launcher_variable_is_named() {
    let out = dist_check(2, 0, 1, &common::scratch_dir().join("bad"), 2).env("RANK", "two").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("RANK") && stderr.contains("\"two\""), "{stderr}");
}
