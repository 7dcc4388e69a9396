//! Data parallelism as PyTorch's DistributedDataParallel does it, over a c10d process group:
//! identical start (names and shapes checked, then rank 0's values broadcast), gradients
//! averaged in flat buckets with one asynchronous all-reduce each, exact sums for metrics, and
//! an optional parameter checksum. With one process every operation is a no-op.

use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_CAP_MB: f64 = 25.0;

/// The trainable parameters, split into buckets of at most `cap_bytes` in reverse order (the
/// order backward produces gradients in, as PyTorch's Reducer assigns them).
pub fn buckets(sizes: &[usize], cap_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut end = sizes.len();
    while end > 0 {
        let mut start = end - 1;
        let mut bytes = sizes[start];
        while start > 0 && bytes + sizes[start - 1] <= cap_bytes {
            start -= 1;
            bytes += sizes[start];
        }
        out.push(start..end);
        end = start;
    }
    out
}

pub struct Ddp {
    pg: Option<ProcessGroup>,
    /// Index ranges into the parameter list, one per bucket.
    buckets: Vec<std::ops::Range<usize>>,
}

impl Ddp {
    /// One process: nothing to synchronise.
    pub fn single() -> Ddp {
        Ddp { pg: None, buckets: Vec::new() }
    }

    /// Data parallelism over `pg` (one process when None). Collectives on plain values work
    /// at once; gradients once `attach` has run.
    pub fn from_group(pg: Option<ProcessGroup>) -> Ddp {
        Ddp { pg, buckets: Vec::new() }
    }

    /// Takes charge of `params` (name, variable) in the optimizer's order: checks that every
    /// rank holds the same names and shapes, copies rank 0's values everywhere, and lays out
    /// the gradient buckets.
    pub fn attach(&mut self, params: &[(&str, &Tensor)], bucket_cap_mb: f64) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        check_same_parameters(pg, params)?;
        tch::no_grad(|| -> Result<()> {
            let mut flat = Tensor::cat(&params.iter().map(|(_, t)| t.detach().view(-1)).collect::<Vec<_>>(), 0);
            pg.broadcast(&mut [&mut flat], 0)?.wait()?;
            let mut offset = 0;
            for (_, t) in params {
                let n = t.numel() as i64;
                t.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(t));
                offset += n;
            }
            Ok(())
        })?;
        let sizes: Vec<usize> = params.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).collect();
        let cap = (bucket_cap_mb * 1024.0 * 1024.0).max(1.0) as usize;
        self.buckets = buckets(&sizes, cap);
        if pg.rank() == 0 {
            tracing::info!(buckets = self.buckets.len(), cap_mb = bucket_cap_mb, world = pg.world_size(), "DDP ready");
        }
        Ok(())
    }

    pub fn world_size(&self) -> usize {
        self.pg.as_ref().map_or(1, ProcessGroup::world_size)
    }
    pub fn rank(&self) -> usize {
        self.pg.as_ref().map_or(0, ProcessGroup::rank)
    }
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Replaces each gradient by its mean over the ranks. Every bucket's all-reduce is started
    /// before the first is waited on, so communication overlaps the flattening of the next.
    pub fn average_gradients(&self, params: &[&Tensor]) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let scale = 1.0 / pg.world_size() as f64;
        tch::no_grad(|| -> Result<()> {
            let mut pending = Vec::with_capacity(self.buckets.len());
            for range in &self.buckets {
                let grads: Vec<Tensor> = params[range.clone()].iter().map(|p| grad_or_zeros(p)).collect();
                let mut flat = Tensor::cat(&grads.iter().map(|g| g.view(-1)).collect::<Vec<_>>(), 0) * scale;
                let work = pg.allreduce_sum(&mut [&mut flat])?;
                pending.push((work, flat, range.clone()));
            }
            for (work, flat, range) in pending {
                work.wait()?;
                let mut offset = 0;
                for p in &params[range] {
                    let mut grad = p.grad();
                    let n = p.numel() as i64;
                    if grad.defined() {
                        grad.copy_(&flat.narrow(0, offset, n).view_as(&grad));
                    }
                    offset += n;
                }
            }
            Ok(())
        })
    }

    /// Sums `values` over the ranks in place (f64: exact for counts below 2^53).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let mut t = Tensor::from_slice(values);
        pg.allreduce_sum(&mut [&mut t])?.wait()?;
        values.copy_from_slice(&Vec::<f64>::try_from(&t)?);
        Ok(())
    }

    /// Errors on every rank, naming `step` and the first differing parameter, when the
    /// parameters are not bitwise identical across ranks.
    pub fn verify_sync(&self, step: usize, params: &[(&str, &Tensor)]) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let local = tch::no_grad(|| Tensor::stack(&params.iter().map(|(_, p)| checksum(p)).collect::<Vec<_>>(), 0));
        let mut reference = local.copy();
        pg.broadcast(&mut [&mut reference], 0)?.wait()?;
        let differs: Vec<bool> = Vec::try_from(local.ne_tensor(&reference))?;
        let first = differs.iter().position(|&d| d);
        let mut flag = [f64::from(u8::from(first.is_some()))];
        self.sum(&mut flag)?;
        if flag[0] > 0.0 {
            let which = match first {
                Some(i) => format!("`{}` on rank {} differs from rank 0", params[i].0, pg.rank()),
                None => format!("rank {} matches rank 0; another rank differs", pg.rank()),
            };
            return Err(Error::Dist(format!("--verify-sync: parameters differ across ranks at step {step} ({which})")));
        }
        Ok(())
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
fn check_same_parameters(pg: &ProcessGroup, params: &[(&str, &Tensor)]) -> Result<()> {
    let mine: Vec<(String, Vec<i64>)> = params.iter().map(|(n, t)| (n.to_string(), t.size())).collect();
    let encoded = serde_json::to_vec(&mine).map_err(|e| Error::Dist(e.to_string()))?;
    const KEY: &str = "medbert/ddp/parameters";
    if pg.rank() == 0 {
        pg.store().set(KEY, &encoded)?;
    }
    let theirs: Vec<(String, Vec<i64>)> =
        serde_json::from_slice(&pg.store().get(KEY)?).map_err(|e| Error::Dist(e.to_string()))?;
    let mismatch = first_difference(&theirs, &mine);
    let mut flag = [f64::from(u8::from(mismatch.is_some()))];
    let mut t = Tensor::from_slice(&flag);
    pg.allreduce_sum(&mut [&mut t])?.wait()?;
    flag[0] = t.double_value(&[0]);
    match (mismatch, flag[0] > 0.0) {
        (Some(what), _) => Err(Error::Dist(format!("rank {} parameters differ from rank 0's: {what}", pg.rank()))),
        (None, true) => Err(Error::Dist("another rank's parameters differ from rank 0's".into())),
        (None, false) => Ok(()),
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

    #[test]
    fn buckets_cover_every_parameter_in_reverse_within_the_cap() {
        let sizes = [4, 4, 10, 3, 3, 3];
        let b = buckets(&sizes, 8);
        assert_eq!(b, vec![4..6, 3..4, 2..3, 0..2]);
        assert_eq!(buckets(&sizes, 1000), vec![0..6]);
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
