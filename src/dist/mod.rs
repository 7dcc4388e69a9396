//! Distributed primitives from PyTorch's c10d, through the C++ shim in csrc/: a TCPStore
//! rendezvous and a process group (Gloo on CPU, NCCL on CUDA) with in-place collectives.

mod check;
mod comm;
mod env;
mod ffi;
mod join;
pub mod keys;
pub mod position;
pub mod slurm;

pub use check::{check_collectives, CollectiveCheck};
pub use comm::Comm;
pub use env::{cores, threads_per_worker, var, DistEnv};
pub use join::{in_turn, BackendChoice, GroupArgs, Joined};

use crate::error::{Error, Result};
use std::ffi::CString;
use std::net::{IpAddr, UdpSocket};
use std::os::raw::c_char;
use std::ptr;
use std::time::Duration;
use tch::{Device, Tensor};

/// The collective backends a process group can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    /// The backends this binary was compiled with.
    pub fn compiled() -> Vec<Backend> {
        let mut out = vec![Backend::Gloo];
        // SAFETY: a pure function of the shim's compile-time flags.
        if unsafe { ffi::mb_has_nccl() } != 0 {
            out.push(Backend::Nccl);
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// Turns a shim return value (NULL or an owned message) into a Result.
fn check(err: *mut c_char) -> Result<()> {
    match crate::sys::take_error(err) {
        None => Ok(()),
        Some(message) => Err(Error::Dist(message)),
    }
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Dist(format!("{what} contains a NUL byte: {s:?}")))
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// A c10d TCPStore: rank 0 serves it, every rank connects to it.
pub struct Store {
    raw: *mut ffi::MbStore,
}

// SAFETY: c10d::TCPStore is internally synchronised; the handle is only freed in Drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Serves (when `is_server`) or joins the store at `host:port`; a server waits up to
    /// `timeout` for all `world_size` members (0: it does not wait, as a launcher's store).
    /// Port 0 with `is_server` picks a free port.
    pub fn tcp(host: &str, port: u16, is_server: bool, world_size: usize, timeout: Duration) -> Result<Store> {
        let host = c_string("store host", host)?;
        let world = i32::try_from(world_size).map_err(|_| Error::Dist(format!("world size {world_size} too large")))?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the shim writes `raw` only on success.
        check(unsafe {
            ffi::mb_store_tcp_new(host.as_ptr(), port, is_server.into(), world, millis(timeout), &mut raw)
        })?;
        Ok(Store { raw })
    }

    /// The same store seen through `prefix` on every key (c10d's PrefixStore).
    pub fn with_prefix(&self, prefix: &str) -> Result<Store> {
        let prefix = c_string("store prefix", prefix)?;
        let mut raw = ptr::null_mut();
        // SAFETY: live store, valid C string and out-pointer; the prefix store holds its own
        // reference to the base store.
        check(unsafe { ffi::mb_store_prefix_new(self.raw, prefix.as_ptr(), &mut raw) })?;
        Ok(Store { raw })
    }

    pub fn port(&self) -> u16 {
        // SAFETY: `raw` is a live store.
        unsafe { ffi::mb_store_port(self.raw) }
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = c_string("store key", key)?;
        // SAFETY: live store, valid key and buffer.
        check(unsafe { ffi::mb_store_set(self.raw, key.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// Blocks until `key` exists (up to the store's timeout) and returns its value.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key = c_string("store key", key)?;
        let (mut buf, mut len) = (ptr::null_mut(), 0usize);
        // SAFETY: live store; on success the shim hands us a malloc'd buffer of `len` bytes.
        check(unsafe { ffi::mb_store_get(self.raw, key.as_ptr(), &mut buf, &mut len) })?;
        let value = unsafe { std::slice::from_raw_parts(buf, len) }.to_vec();
        unsafe { crate::sys::ffi::mb_string_free(buf.cast()) };
        Ok(value)
    }
}

impl Store {
    /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = c_string("store key", key)?;
        let mut out = 0;
        // SAFETY: live store, valid key and out-pointer.
        check(unsafe { ffi::mb_store_add(self.raw, key.as_ptr(), delta, &mut out) })?;
        Ok(out)
    }

    /// Whether `key` exists, without waiting for it.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let key = c_string("store key", key)?;
        let mut out = 0;
        // SAFETY: live store, valid key and out-pointer.
        check(unsafe { ffi::mb_store_check(self.raw, key.as_ptr(), &mut out) })?;
        Ok(out != 0)
    }

    /// The value at `key` when it exists, without waiting.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.contains(key)? {
            true => self.get(key).map(Some),
            false => Ok(None),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by mb_store_tcp_new, freed once.
        unsafe { ffi::mb_store_free(self.raw) }
    }
}

/// How Gloo chooses the network device it binds to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlooDevice {
    /// c10d's default: the address this host's name resolves to.
    Default,
    /// The given hostname or IP address.
    Host(String),
    /// The given network interface (like GLOO_SOCKET_IFNAME).
    Interface(String),
}

impl GlooDevice {
    /// GLOO_SOCKET_IFNAME when set; otherwise the local address that routes to the master,
    /// so a multi-homed node binds where its peers can reach it.
    pub fn for_master(master_addr: &str, master_port: u16) -> GlooDevice {
        if let Some(ifname) = std::env::var("GLOO_SOCKET_IFNAME").ok().filter(|s| !s.is_empty()) {
            return GlooDevice::Interface(ifname.split(',').next().unwrap_or_default().to_string());
        }
        match local_ip_towards(master_addr, master_port) {
            Some(ip) => GlooDevice::Host(ip.to_string()),
            None => GlooDevice::Default,
        }
    }
}

/// The source address the kernel would use to reach `addr` (a UDP connect sends nothing).
fn local_ip_towards(addr: &str, port: u16) -> Option<IpAddr> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect((addr, port)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// A c10d process group. Collectives run in place on the given tensors.
pub struct ProcessGroup {
    raw: *mut ffi::MbPg,
    rank: usize,
    world_size: usize,
    backend: Backend,
    /// Where this group's collectives take their tensors: the CPU for Gloo, this rank's GPU
    /// for NCCL (which accepts only CUDA tensors).
    device: Device,
    // c10d holds its own reference to the store; ours serves `store()` for rendezvous checks.
    store: Store,
}

// SAFETY: c10d backends may be driven from any thread, and their collectives may be issued
// from several (Gloo and NCCL enqueue under their own locks); the handle is only freed in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    pub fn gloo(store: Store, rank: usize, world_size: usize, device: &GlooDevice, timeout: Duration) -> Result<Self> {
        let (kind, name) = match device {
            GlooDevice::Default => (ffi::GLOO_DEFAULT, String::new()),
            GlooDevice::Host(h) => (ffi::GLOO_HOSTNAME, h.clone()),
            GlooDevice::Interface(i) => (ffi::GLOO_INTERFACE, i.clone()),
        };
        let name = c_string("gloo device", &name)?;
        let mut raw = ptr::null_mut();
        // SAFETY: live store, valid strings and out-pointer.
        check(unsafe {
            ffi::mb_pg_gloo_new(
                store.raw,
                rank as i32,
                world_size as i32,
                kind,
                name.as_ptr(),
                millis(timeout),
                &mut raw,
            )
        })?;
        Ok(ProcessGroup { raw, rank, world_size, backend: Backend::Gloo, device: Device::Cpu, store })
    }

    /// An NCCL group whose rank works on CUDA device `gpu`.
    pub fn nccl(store: Store, rank: usize, world_size: usize, gpu: usize, timeout: Duration) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: live store and out-pointer.
        check(unsafe { ffi::mb_pg_nccl_new(store.raw, rank as i32, world_size as i32, millis(timeout), &mut raw) })?;
        Ok(ProcessGroup { raw, rank, world_size, backend: Backend::Nccl, device: Device::Cuda(gpu), store })
    }

    /// Rendezvous through the TCPStore at the master from `env`, then build the group. As with
    /// torchrun's env:// rendezvous: when the launcher hosts the store
    /// (TORCHELASTIC_USE_AGENT_STORE), every rank is a client and each restart attempt keeps
    /// its keys under `/worker/attempt_<n>`; otherwise rank 0 serves the store.
    pub fn init(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        let store = match env.agent_store {
            true => Store::tcp(&env.master_addr, env.master_port, false, 0, timeout)?
                .with_prefix(&keys::attempt(env.restart_count))?,
            false => Store::tcp(&env.master_addr, env.master_port, env.rank == 0, env.world_size, timeout)?,
        };
        match backend {
            Backend::Gloo => {
                let device = GlooDevice::for_master(&env.master_addr, env.master_port);
                ProcessGroup::gloo(store, env.rank, env.world_size, &device, timeout)
            }
            Backend::Nccl => ProcessGroup::nccl(store, env.rank, env.world_size, env.local_rank, timeout),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The device that tensors of host values (counts, flags, orders) go to for a collective.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Starts an in-place sum over all ranks; the result is valid after `Work::wait`.
    pub fn allreduce_sum(&self, tensors: &mut [&mut Tensor]) -> Result<Work> {
        let mut ptrs: Vec<ffi::MbTensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut raw = ptr::null_mut();
        // SAFETY: live group; the shim copies the tensor handles (refcounted) before returning.
        check(unsafe { ffi::mb_pg_allreduce_sum(self.raw, ptrs.as_mut_ptr(), ptrs.len(), &mut raw) })?;
        Ok(Work { raw })
    }

    /// Starts an in-place broadcast of `root`'s tensors to every rank.
    pub fn broadcast(&self, tensors: &mut [&mut Tensor], root: usize) -> Result<Work> {
        let mut ptrs: Vec<ffi::MbTensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut raw = ptr::null_mut();
        // SAFETY: as in allreduce_sum.
        check(unsafe { ffi::mb_pg_broadcast(self.raw, ptrs.as_mut_ptr(), ptrs.len(), root as i32, &mut raw) })?;
        Ok(Work { raw })
    }

    /// Blocks until every rank has reached the barrier.
    pub fn barrier(&self) -> Result<()> {
        let mut raw = ptr::null_mut();
        // SAFETY: live group and out-pointer.
        check(unsafe { ffi::mb_pg_barrier(self.raw, &mut raw) })?;
        Work { raw }.wait()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by mb_pg_*_new, freed once; `store` is dropped after this body runs.
        unsafe { ffi::mb_pg_free(self.raw) }
    }
}

/// A pending collective.
pub struct Work {
    raw: *mut ffi::MbWork,
}

// SAFETY: c10d::Work is waited on from whichever thread holds it.
unsafe impl Send for Work {}

impl Work {
    /// Blocks until the collective finishes; a peer failure or timeout is an error.
    pub fn wait(self) -> Result<()> {
        // SAFETY: live work handle; Drop frees it afterwards.
        check(unsafe { ffi::mb_work_wait(self.raw) })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // SAFETY: created by a collective, freed once.
        unsafe { ffi::mb_work_free(self.raw) }
    }
}
