//! Data parallelism as PyTorch's DistributedDataParallel does it, over a c10d process group:
//! identical start (names and shapes checked, then rank 0's values broadcast), gradients
//! averaged in flat buckets with one asynchronous all-reduce each, started from autograd hooks
//! while backward still runs, and an optional parameter checksum. With one process every
//! operation is a no-op. Collectives on plain values are `dist::Comm`'s.

use crate::dist::{keys, Comm, ProcessGroup, Work};
use crate::error::{Error, Result};
use crate::sys::GradHooks;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_CAP_MB: f64 = 25.0;

/// Parameters (by index, in `order`) packed into buckets of at most `cap_bytes` each (a
/// parameter larger than the cap gets a bucket of its own), as PyTorch's Reducer assigns them.
pub fn buckets(order: impl IntoIterator<Item = usize>, sizes: &[usize], cap_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for i in order {
        match out.last_mut() {
            Some(last) if bytes + sizes[i] <= cap_bytes => last.push(i),
            _ => {
                out.push(vec![i]);
                bytes = 0;
            }
        }
        bytes += sizes[i];
    }
    out
}

pub struct Ddp {
    comm: Comm,
    reducer: Option<Arc<Reducer>>,
    /// With overlap: the hooks that tell the reducer which gradients are ready.
    hooks: Option<GradHooks>,
}

impl Ddp {
    /// Data parallelism over `comm`'s processes: gradients once `attach` has run.
    pub fn new(comm: &Comm) -> Ddp {
        Ddp { comm: comm.clone(), reducer: None, hooks: None }
    }

    /// Takes charge of `params` (name, variable) in the optimizer's order: checks that every
    /// rank holds the same names and shapes, copies rank 0's values everywhere, and (with
    /// `overlap`) hooks every parameter so that a bucket's all-reduce starts as soon as
    /// backward has produced its last gradient.
    pub fn attach(&mut self, params: &[(&str, &Tensor)], bucket_cap_mb: f64, overlap: bool) -> Result<()> {
        let Some(pg) = self.comm.group() else { return Ok(()) };
        check_same_parameters(&self.comm, params)?;
        tch::no_grad(|| -> Result<()> {
            let mut flat = Tensor::cat(&params.iter().map(|(_, t)| t.detach().view(-1)).collect::<Vec<_>>(), 0);
            pg.broadcast(&mut [&mut flat], 0)?.wait()?;
            copy_from_flat(&flat, params.iter().map(|(_, t)| (t.numel(), t.shallow_clone())));
            Ok(())
        })?;
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let sizes: Vec<usize> = tensors.iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).collect();
        let cap_bytes = (bucket_cap_mb * 1024.0 * 1024.0).max(1.0) as usize;
        let mut state = State::default();
        if !overlap {
            // Without hooks, the buckets follow the reverse of the optimizer's order.
            state.set_buckets(buckets((0..sizes.len()).rev(), &sizes, cap_bytes), tensors.len());
        }
        let reducer = Arc::new(Reducer { pg: pg.clone(), params: tensors, sizes, cap_bytes, state: Mutex::new(state) });
        if overlap {
            let ready = Arc::clone(&reducer);
            self.hooks = Some(GradHooks::install(&reducer.params, move |i| ready.ready(i))?);
        }
        self.reducer = Some(reducer);
        Ok(())
    }

    /// Says that the next backward pass ends an accumulation group: its gradients are to be
    /// reduced (buckets start during backward). Micro-steps before it stay local.
    pub fn prepare_sync(&self) {
        if let Some(r) = &self.reducer {
            r.lock().armed = true;
        }
    }

    /// Replaces each gradient by its mean over the ranks: starts the buckets backward did not
    /// (all of them without overlap), waits for every all-reduce and copies the results back.
    pub fn average_gradients(&self) -> Result<()> {
        if let Some(hooks) = &self.hooks {
            hooks.check()?;
        }
        match &self.reducer {
            Some(r) => r.finish(),
            None => Ok(()),
        }
    }

    /// Bucket count and the mean time per synchronised step spent waiting for communication
    /// after backward (what overlap did not hide).
    pub fn exposed_communication(&self) -> Option<(usize, Duration)> {
        let r = self.reducer.as_ref()?;
        let s = r.lock();
        Some((s.buckets.len(), s.exposed / s.steps.max(1) as u32))
    }

    /// Errors on every rank, naming `step` and the first differing parameter, when the
    /// parameters are not bitwise identical across ranks.
    pub fn verify_sync(&self, step: usize, params: &[(&str, &Tensor)]) -> Result<()> {
        let Some(pg) = self.comm.group() else { return Ok(()) };
        let local = tch::no_grad(|| Tensor::stack(&params.iter().map(|(_, p)| checksum(p)).collect::<Vec<_>>(), 0));
        let mut reference = local.copy();
        pg.broadcast(&mut [&mut reference], 0)?.wait()?;
        let differs: Vec<bool> = Vec::try_from(local.ne_tensor(&reference).to_device(Device::Cpu))?;
        let first = differs.iter().position(|&d| d);
        if self.comm.any(first.is_some())? {
            let which = match first {
                Some(i) => format!("`{}` on rank {} differs from rank 0", params[i].0, pg.rank()),
                None => format!("rank {} matches rank 0; another rank differs", pg.rank()),
            };
            return Err(Error::Dist(format!("--verify-sync: parameters differ across ranks at step {step} ({which})")));
        }
        Ok(())
    }
}

/// PyTorch's Reducer in small: buckets of parameters in the order backward produces their
/// gradients (observed on the first synchronised step and taken from rank 0, so every rank
/// issues the same collectives in the same order), each all-reduced once complete.
struct Reducer {
    pg: Arc<ProcessGroup>,
    /// The parameters, in the optimizer's order (the hooks' indices).
    params: Vec<Tensor>,
    sizes: Vec<usize>,
    cap_bytes: usize,
    state: Mutex<State>,
}

// SAFETY: hooks call `ready` from autograd's threads. `params` are tensor handles that are
// only read (libtorch's reference counts are atomic) and everything mutable is in `state`,
// behind its mutex; the process group is Sync.
unsafe impl Sync for Reducer {}

#[derive(Default)]
struct State {
    /// The next backward ends an accumulation group.
    armed: bool,
    /// Hook order seen while the buckets are not laid out yet.
    seen: Vec<usize>,
    /// Parameter indices per bucket, in launch order.
    buckets: Vec<Vec<usize>>,
    bucket_of: Vec<usize>,
    /// Gradients each bucket still waits for in this backward.
    remaining: Vec<usize>,
    /// The next bucket to launch (buckets start in order on every rank).
    next: usize,
    launched: Vec<(Work, Tensor)>,
    error: Option<Error>,
    exposed: Duration,
    steps: usize,
}

impl State {
    fn set_buckets(&mut self, buckets: Vec<Vec<usize>>, params: usize) {
        self.bucket_of = vec![0; params];
        for (b, bucket) in buckets.iter().enumerate() {
            for &p in bucket {
                self.bucket_of[p] = b;
            }
        }
        self.remaining = buckets.iter().map(Vec::len).collect();
        self.buckets = buckets;
    }
}

impl Reducer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A hook: parameter `index` has its gradient for this backward.
    fn ready(&self, index: usize) {
        let mut s = self.lock();
        if !s.armed {
            return;
        }
        if s.buckets.is_empty() {
            s.seen.push(index);
            return;
        }
        let b = s.bucket_of[index];
        s.remaining[b] = s.remaining[b].saturating_sub(1);
        while s.next < s.buckets.len() && s.remaining[s.next] == 0 {
            self.launch(&mut s);
        }
    }

    fn launch(&self, s: &mut State) {
        let b = s.next;
        s.next += 1;
        match self.start(&s.buckets[b]) {
            Ok(pending) => s.launched.push(pending),
            Err(e) => {
                s.error.get_or_insert(e);
            }
        }
    }

    /// Flattens a bucket's gradients, divided by the world size, and starts their sum.
    fn start(&self, bucket: &[usize]) -> Result<(Work, Tensor)> {
        let scale = 1.0 / self.pg.world_size() as f64;
        tch::no_grad(|| {
            let grads: Vec<Tensor> = bucket.iter().map(|&i| grad_or_zeros(&self.params[i]).view(-1)).collect();
            let mut flat = Tensor::cat(&grads, 0) * scale;
            let work = self.pg.allreduce_sum(&mut [&mut flat])?;
            Ok((work, flat))
        })
    }

    /// Lays the buckets out in the order this backward produced gradients, as rank 0 saw it.
    fn lay_out(&self, s: &mut State) -> Result<()> {
        let mut order: Vec<usize> = Vec::with_capacity(self.params.len());
        let mut placed = vec![false; self.params.len()];
        for i in s.seen.iter().copied().chain(0..self.params.len()) {
            if !std::mem::replace(&mut placed[i], true) {
                order.push(i);
            }
        }
        let mut t =
            Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.pg.device());
        self.pg.broadcast(&mut [&mut t], 0)?.wait()?;
        let order: Vec<usize> =
            Vec::<i64>::try_from(&t.to_device(Device::Cpu))?.into_iter().map(|i| i as usize).collect();
        s.set_buckets(buckets(order, &self.sizes, self.cap_bytes), self.params.len());
        s.seen.clear();
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        let started = Instant::now();
        let mut s = self.lock();
        if s.buckets.is_empty() {
            self.lay_out(&mut s)?;
        }
        while s.next < s.buckets.len() {
            self.launch(&mut s);
        }
        let launched = std::mem::take(&mut s.launched);
        (s.armed, s.next) = (false, 0);
        s.remaining = s.buckets.iter().map(Vec::len).collect();
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        tch::no_grad(|| -> Result<()> {
            for (k, ((work, flat), bucket)) in launched.into_iter().zip(&s.buckets).enumerate() {
                crate::dist::position::waiting_for(k);
                work.wait()?;
                copy_from_flat(&flat, bucket.iter().map(|&i| (self.params[i].numel(), self.params[i].grad())));
            }
            Ok(())
        })?;
        s.exposed += started.elapsed();
        s.steps += 1;
        Ok(())
    }
}

/// Copies consecutive slices of `flat` into the (element count, target) parts, in order; an
/// undefined target (a parameter without a gradient) keeps its slice unused.
fn copy_from_flat(flat: &Tensor, parts: impl Iterator<Item = (usize, Tensor)>) {
    let mut offset = 0;
    for (numel, mut target) in parts {
        let n = numel as i64;
        if target.defined() {
            target.copy_(&flat.narrow(0, offset, n).view_as(&target));
        }
        offset += n;
    }
}

fn grad_or_zeros(p: &Tensor) -> Tensor {
    let g = p.grad();
    if g.defined() {
        g
    } else {
        p.zeros_like()
    }
}

/// A position-weighted sum: sensitive to any change, including swapped elements.
fn checksum(p: &Tensor) -> Tensor {
    let flat = p.detach().to_kind(Kind::Double).view(-1);
    let weights = Tensor::arange(flat.numel() as i64, (Kind::Double, flat.device())).remainder(97.0) + 1.0;
    (flat * weights).sum(Kind::Double)
}

/// Fails fast when ranks disagree on the parameter list: every rank compares its names and
/// shapes with rank 0's (through the store) and names the first difference.
fn check_same_parameters(comm: &Comm, params: &[(&str, &Tensor)]) -> Result<()> {
    let Some(pg) = comm.group() else { return Ok(()) };
    let mine: Vec<(String, Vec<i64>)> = params.iter().map(|(n, t)| (n.to_string(), t.size())).collect();
    let encoded = serde_json::to_vec(&mine).map_err(|e| Error::Dist(e.to_string()))?;
    if comm.is_main() {
        pg.store().set(keys::worker::DDP_PARAMETERS, &encoded)?;
    }
    let theirs: Vec<(String, Vec<i64>)> = serde_json::from_slice(&pg.store().get(keys::worker::DDP_PARAMETERS)?)
        .map_err(|e| Error::Dist(e.to_string()))?;
    let mismatch = first_difference(&theirs, &mine);
    match (comm.any(mismatch.is_some())?, mismatch) {
        (_, Some(what)) => Err(Error::Dist(format!("rank {} parameters differ from rank 0's: {what}", pg.rank()))),
        (true, None) => Err(Error::Dist("another rank's parameters differ from rank 0's".into())),
        (false, None) => Ok(()),
    }
}

/// The first difference between rank 0's parameter list and ours, in words.
pub fn first_difference(rank0: &[(String, Vec<i64>)], ours: &[(String, Vec<i64>)]) -> Option<String> {
    for (i, (a, b)) in rank0.iter().zip(ours).enumerate() {
        if a.0 != b.0 {
            return Some(format!("parameter {i} is `{}` here, `{}` on rank 0", b.0, a.0));
        }
        if a.1 != b.1 {
            return Some(format!("`{}` has shape {:?} here, {:?} on rank 0", a.0, b.1, a.1));
        }
    }
    (rank0.len() != ours.len()).then(|| format!("{} parameters here, {} on rank 0", ours.len(), rank0.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{GlooDevice, Store};

    /// Runs `f(rank, group)` on `world` threads, each a rank of one Gloo group on 127.0.0.1.
    fn on_ranks<T: Send>(world: usize, f: impl Fn(usize, ProcessGroup) -> T + Sync) -> Vec<T> {
        let timeout = Duration::from_secs(30);
        let server = Store::tcp("127.0.0.1", 0, true, 0, timeout).unwrap();
        let port = server.port();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let f = &f;
                    s.spawn(move || {
                        let store = Store::tcp("127.0.0.1", port, false, 0, timeout).unwrap();
                        let device = GlooDevice::Host("127.0.0.1".into());
                        f(rank, ProcessGroup::gloo(store, rank, world, &device, timeout).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Two accumulation micro-steps per optimizer step; rank r's gradients are (r + 1) and
    /// 2 (r + 1) per micro-step, so the averages over two ranks are 3 and 6 (1.5 and 3 if the
    /// first micro-step were reduced on its own).
    fn reduced_gradients(overlap: bool) -> Vec<(Vec<f32>, Vec<f32>, usize)> {
        on_ranks(2, |rank, pg| {
            let opts = (Kind::Float, Device::Cpu);
            let a = Tensor::zeros([3], opts).set_requires_grad(true);
            let b = Tensor::zeros([5], opts).set_requires_grad(true);
            let mut ddp = Ddp::new(&Comm::from_group(Some(pg)));
            // A cap below one parameter's size: one bucket per parameter.
            ddp.attach(&[("a", &a), ("b", &b)], 1e-6, overlap).unwrap();
            let scale = rank as f64 + 1.0;
            let mut out = Vec::new();
            for _step in 0..2 {
                for micro in 0..2 {
                    if micro == 1 {
                        ddp.prepare_sync();
                    }
                    ((&a * scale).sum(Kind::Float) + (&b * (2.0 * scale)).sum(Kind::Float)).backward();
                }
                ddp.average_gradients().unwrap();
                let buckets = ddp.exposed_communication().unwrap().0;
                out.push((Vec::try_from(a.grad()).unwrap(), Vec::try_from(b.grad()).unwrap(), buckets));
                crate::sys::reset_grads(&[&a, &b]).unwrap();
            }
            out
        })
        .into_iter()
        .flatten()
        .collect()
    }

    #[test]
    fn the_reducer_averages_each_accumulation_group_once_with_and_without_overlap() {
        for overlap in [true, false] {
            let steps = reduced_gradients(overlap);
            assert_eq!(steps.len(), 4, "two steps on two ranks");
            for (a, b, buckets) in steps {
                assert_eq!(a, [3.0; 3], "overlap {overlap}");
                assert_eq!(b, [6.0; 5], "overlap {overlap}");
                assert_eq!(buckets, 2, "overlap {overlap}");
            }
        }
    }

    #[test]
    fn buckets_cover_every_parameter_in_reverse_within_the_cap() {
        let sizes = [4, 4, 10, 3, 3, 3];
        let b = buckets((0..6).rev(), &sizes, 8);
        assert_eq!(b, vec![vec![5, 4], vec![3], vec![2], vec![1, 0]]);
        assert_eq!(buckets((0..6).rev(), &sizes, 1000), vec![vec![5, 4, 3, 2, 1, 0]]);
        assert_eq!(buckets([2, 0, 1], &sizes, 8), vec![vec![2], vec![0, 1]], "in the order given");
    }

    #[test]
    fn the_first_parameter_difference_is_named() {
        let a = vec![("x".to_string(), vec![2, 3]), ("y".to_string(), vec![3])];
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[1].1 = vec![4];
        assert_eq!(first_difference(&a, &b).unwrap(), "`y` has shape [4] here, [3] on rank 0");
        b[0].0 = "z".into();
        assert!(first_difference(&a, &b).unwrap().contains("`z` here, `x` on rank 0"));
        assert!(first_difference(&a, &a[..1]).unwrap().contains("1 parameters here, 2 on rank 0"));
    }
}
