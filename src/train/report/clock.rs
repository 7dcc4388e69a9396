//! `--step-breakdown`: where an optimizer step's time goes, phase by phase.

use std::time::{Duration, Instant};
use tch::Device;

/// The phases of an optimizer step, in the order they run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Phase {
    /// Collating, uploading, the forward pass and the loss, of every micro-batch.
    Forward,
    /// The backward passes (with overlap, the all-reduces they start run beside them).
    Backward,
    /// Waiting for the gradient all-reduces after backward.
    AllReduce,
    /// Unscaling, clipping, the AdamW step and zeroing the gradients.
    Optimizer,
}

/// Mean milliseconds per optimizer step of each phase, the first step (allocation, warm-up)
/// left out.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub all_reduce_wait: f64,
    pub optimizer: f64,
    /// The steps these are means of.
    pub steps: usize,
}

/// Wall time per phase. On CUDA the device is synchronised at every phase boundary, so that a
/// phase's time is its kernels' and not their launches': that costs some throughput, so the
/// breakdown is off unless asked for.
pub(crate) struct StepClock {
    device: Device,
    mark: Instant,
    totals: [Duration; 4],
    steps: usize,
}

impl StepClock {
    pub(crate) fn new(device: Device) -> StepClock {
        StepClock { device, mark: Instant::now(), totals: [Duration::ZERO; 4], steps: 0 }
    }

    fn sync(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }

    /// A step begins.
    pub(crate) fn start(&mut self) {
        self.sync();
        self.mark = Instant::now();
    }

    /// `phase` ran since the last mark.
    pub(crate) fn lap(&mut self, phase: Phase) {
        self.sync();
        if self.steps > 0 {
            self.totals[phase as usize] += self.mark.elapsed();
        }
        self.mark = Instant::now();
    }

    /// A step ended.
    pub(crate) fn step_done(&mut self) {
        self.steps += 1;
    }

    pub(crate) fn means(&self) -> StepTimes {
        let counted = self.steps.saturating_sub(1);
        let ms = |d: Duration| if counted == 0 { 0.0 } else { d.as_secs_f64() * 1e3 / counted as f64 };
        let [forward, backward, all_reduce, optimizer] = self.totals;
        StepTimes {
            forward: ms(forward),
            backward: ms(backward),
            all_reduce_wait: ms(all_reduce),
            optimizer: ms(optimizer),
            steps: counted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lap goes to its own phase, the first step left out. Sleeps give lower bounds only,
    /// which still tell two phases apart when they are swapped.
    #[test]
    fn laps_go_to_their_phases_and_the_first_step_is_left_out() {
        let mut clock = StepClock::new(Device::Cpu);
        let nap = |ms| std::thread::sleep(Duration::from_millis(ms));
        for step in 0..3 {
            clock.start();
            nap(if step == 0 { 400 } else { 20 });
            clock.lap(Phase::Forward);
            nap(60);
            clock.lap(Phase::Backward);
            clock.lap(Phase::AllReduce);
            nap(5);
            clock.lap(Phase::Optimizer);
            clock.step_done();
        }
        let t = clock.means();
        assert_eq!(t.steps, 2);
        assert!(t.forward >= 20.0 && t.forward < 200.0, "{t:?}");
        assert!(t.backward >= 60.0 && t.optimizer >= 5.0 && t.all_reduce_wait >= 0.0, "{t:?}");
    }
}
