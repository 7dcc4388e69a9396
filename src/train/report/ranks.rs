//! Per-rank step times, for stragglers: each rank's compute time per optimizer step (from the
//! step's start until it enters the gradient all-reduce) and its wait in that all-reduce. At
//! every logging step the ranks share the medians of the steps since the last one, rank 0
//! logs the spread and warns when one rank stays slower than the others: its median compute
//! time above theirs by more than [`MARGIN`] (and [`MIN_GAP_MS`]) in [`WINDOWS`] logging
//! windows in a row. On CUDA these are host times (the device runs behind the host), so they
//! show a slow input pipeline or host; `--step-breakdown` synchronises and makes them the
//! device's.

use crate::dist::Comm;
use crate::error::Result;
use serde::Serialize;
use std::time::Instant;

/// How much slower than the others' median a rank's compute must be to count as straggling.
pub const MARGIN: f64 = 0.2;
/// ... and by at least this much, so that noise on very short steps is not a straggler.
pub const MIN_GAP_MS: f64 = 2.0;
/// Logging windows in a row a rank must straggle before rank 0 warns.
pub const WINDOWS: usize = 3;

/// One rank's step times over the run, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankStepTimes {
    pub rank: usize,
    pub node: usize,
    pub compute_ms_median: f64,
    pub compute_ms_p95: f64,
    pub allreduce_wait_ms_median: f64,
    pub allreduce_wait_ms_p95: f64,
}

/// This rank's step times, and rank 0's count of windows in a row each rank straggled.
pub(crate) struct RankTimes {
    compute: Vec<f64>,
    wait: Vec<f64>,
    /// Where the current logging window starts in `compute`.
    window_start: usize,
    started: Option<Instant>,
    waiting: Option<Instant>,
    /// Ranks per node, to name a rank's node.
    per_node: usize,
    streaks: Vec<usize>,
}

/// The spread of one logging window's median compute times.
pub(crate) struct Window {
    pub fastest_ms: f64,
    pub slowest_ms: f64,
    pub slowest_rank: usize,
}

impl RankTimes {
    pub fn new(world: usize, per_node: usize) -> RankTimes {
        RankTimes {
            compute: Vec::new(),
            wait: Vec::new(),
            window_start: 0,
            started: None,
            waiting: None,
            per_node: per_node.max(1),
            streaks: vec![0; world],
        }
    }

    pub fn step_started(&mut self) {
        self.started = Some(Instant::now());
    }

    pub fn wait_started(&mut self) {
        self.waiting = Some(Instant::now());
    }

    pub fn wait_ended(&mut self) {
        let now = Instant::now();
        let ms = |from: Option<Instant>| from.map_or(0.0, |t| (now - t).as_secs_f64() * 1e3);
        let waited = ms(self.waiting);
        self.compute.push(ms(self.started) - waited);
        self.wait.push(waited);
    }

    /// At a logging step (every rank calls it, a collective): every rank's median compute
    /// time since the last one; rank 0 warns of a rank that straggled [`WINDOWS`] windows in
    /// a row. None on one process or without steps in the window.
    pub fn window(&mut self, comm: &Comm) -> Result<Option<Window>> {
        let (world, rank) = (comm.world_size(), comm.rank());
        let steps = &self.compute[self.window_start..];
        self.window_start = self.compute.len();
        if world < 2 || steps.is_empty() {
            return Ok(None);
        }
        let mut medians = vec![0.0; world];
        medians[rank] = quantile(steps, 0.5);
        comm.sum(&mut medians)?;
        let slowest_rank = (0..world).max_by(|&a, &b| medians[a].total_cmp(&medians[b])).unwrap_or(0);
        let others: Vec<f64> = (0..world).filter(|&r| r != slowest_rank).map(|r| medians[r]).collect();
        let others = quantile(&others, 0.5);
        let slow = medians[slowest_rank];
        let straggling = slow > others * (1.0 + MARGIN) && slow - others > MIN_GAP_MS;
        for (r, streak) in self.streaks.iter_mut().enumerate() {
            *streak = if straggling && r == slowest_rank { *streak + 1 } else { 0 };
        }
        if comm.is_main() && self.streaks[slowest_rank] == WINDOWS {
            tracing::warn!(
                "rank {slowest_rank} (node {}) is a straggler: its compute takes {slow:.0} ms per step against \
                 {others:.0} ms on the other ranks (median), {WINDOWS} logging windows in a row; the others wait \
                 for it in every all-reduce",
                slowest_rank / self.per_node
            );
        }
        let fastest_ms = medians.iter().copied().fold(f64::INFINITY, f64::min);
        Ok(Some(Window { fastest_ms, slowest_ms: slow, slowest_rank }))
    }

    /// Every rank's step times over the run (every rank calls it, a collective); None on one
    /// process.
    pub fn summary(&self, comm: &Comm) -> Result<Option<Vec<RankStepTimes>>> {
        let (world, rank) = (comm.world_size(), comm.rank());
        if world < 2 {
            return Ok(None);
        }
        const FIELDS: usize = 4;
        let mut all = vec![0.0; world * FIELDS];
        let mine = [
            quantile(&self.compute, 0.5),
            quantile(&self.compute, 0.95),
            quantile(&self.wait, 0.5),
            quantile(&self.wait, 0.95),
        ];
        all[rank * FIELDS..(rank + 1) * FIELDS].copy_from_slice(&mine);
        comm.sum(&mut all)?;
        Ok(Some(
            all.chunks(FIELDS)
                .enumerate()
                .map(|(rank, f)| RankStepTimes {
                    rank,
                    node: rank / self.per_node,
                    compute_ms_median: f[0],
                    compute_ms_p95: f[1],
                    allreduce_wait_ms_median: f[2],
                    allreduce_wait_ms_p95: f[3],
                })
                .collect(),
        ))
    }
}

/// The `q` quantile of `values` (nearest rank; 0 for none).
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.95), 95.0);
        assert_eq!(quantile(&hundred, 0.5), 50.0);
    }
}
