//! AdamW, the HF Trainer's learning-rate schedules (linear, cosine, constant, constant with
//! warm-up, polynomial), and gradient clipping, as torch and the HF Trainer do them. The
//! update is torch's own fused kernel (`torch.optim.AdamW(fused=True)`, the HF Trainer's
//! default optimizer on torch 2.8+); the state lives here because tch's wrapper cannot save or
//! restore the moments, and an exact `--resume` needs them.

use crate::error::Result;
use crate::sys::{self, AdamWGroup, AdamWHyper};
use tch::{nn::VarStore, Kind, Tensor};

/// torch.optim.AdamW's update with the HF Trainer's parameter groups: no weight decay on
/// biases and LayerNorm weights.
pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken so far.
    pub step: i64,
}

struct Param {
    name: String,
    var: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied to this parameter, a float scalar on its device (the fused kernel's
    /// bias correction reads it there).
    steps: Tensor,
}

/// The HF Trainer's rule: biases and LayerNorm parameters take no weight decay.
pub fn takes_weight_decay(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl AdamW {
    pub fn new(vs: &VarStore, weight_decay: f64, (beta1, beta2): (f64, f64), eps: f64) -> AdamW {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, var)| Param {
                decay: takes_weight_decay(&name),
                exp_avg: var.zeros_like(),
                exp_avg_sq: var.zeros_like(),
                steps: Tensor::zeros([], (Kind::Float, var.device())),
                name,
                var,
            })
            .collect();
        AdamW { params, beta1, beta2, eps, weight_decay, step: 0 }
    }

    /// The trainable variables, in the optimizer's (name) order.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// One update at learning rate `lr` from the accumulated gradients; parameters without a
    /// gradient are left alone, as torch does.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.var.grad()).collect();
        for decay in [true, false] {
            let mut group =
                AdamWGroup { params: vec![], grads: vec![], exp_avgs: vec![], exp_avg_sqs: vec![], steps: vec![] };
            for (p, g) in self.params.iter().zip(&grads).filter(|(p, g)| p.decay == decay && g.defined()) {
                group.params.push(&p.var);
                group.grads.push(g);
                group.exp_avgs.push(&p.exp_avg);
                group.exp_avg_sqs.push(&p.exp_avg_sq);
                group.steps.push(&p.steps);
            }
            let weight_decay = if decay { self.weight_decay } else { 0.0 };
            let hyper = AdamWHyper { lr, beta1: self.beta1, beta2: self.beta2, weight_decay, eps: self.eps };
            tch::no_grad(|| sys::fused_adamw(&group, hyper))?;
        }
        Ok(())
    }

    /// Drops the gradients (torch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&mut self) -> Result<()> {
        sys::reset_grads(&self.params.iter().map(|p| &p.var).collect::<Vec<_>>())
    }

    /// The moments, named `exp_avg.<param>` and `exp_avg_sq.<param>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()),
                    (format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores moments saved by `state` (read from `file`) and the step count.
    pub fn load_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
        step: i64,
        file: &std::path::Path,
    ) -> Result<()> {
        for p in &mut self.params {
            for (key, dst) in
                [(format!("exp_avg.{}", p.name), &mut p.exp_avg), (format!("exp_avg_sq.{}", p.name), &mut p.exp_avg_sq)]
            {
                let src = state.get(&key).ok_or_else(|| crate::Error::MissingTensor {
                    path: file.to_path_buf(),
                    name: key.clone(),
                    shape: dst.size(),
                })?;
                tch::no_grad(|| dst.f_copy_(src))?;
            }
            let _ = p.steps.f_fill_(step as f64)?;
        }
        self.step = step;
        Ok(())
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// torch.nn.utils.clip_grad_norm_ does (its foreach kernels); returns the norm before clipping
/// as a 0-dim tensor, so that nothing waits for the device until it is read.
pub fn clip_grad_norm<'a>(vars: impl Iterator<Item = &'a Tensor>, max_norm: f64) -> Result<Tensor> {
    let grads: Vec<Tensor> = vars.map(|v| v.grad()).filter(|g| g.defined()).collect();
    tch::no_grad(|| sys::clip_grad_norm(&grads.iter().collect::<Vec<_>>(), max_norm))
}

/// transformers' learning-rate schedules (`--lr-scheduler-type`, as `get_scheduler` names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Linear warm-up from 0, then linear decay to 0 (the HF Trainer's default).
    Linear,
    /// Linear warm-up, then a half cosine down to 0.
    Cosine,
    /// The learning rate throughout (no warm-up).
    Constant,
    /// Linear warm-up, then constant.
    ConstantWithWarmup,
    /// Linear warm-up, then polynomial decay (power 1) to 1e-7.
    Polynomial,
}

/// The learning rate at each optimizer step, as transformers' schedulers compute it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: SchedulerType,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

/// transformers' defaults for the polynomial schedule.
const POLYNOMIAL_LR_END: f64 = 1e-7;
const POLYNOMIAL_POWER: f64 = 1.0;

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let warming = step < warmup && self.kind != SchedulerType::Constant;
        if warming {
            return self.base_lr * step / warmup.max(1.0);
        }
        let factor = match self.kind {
            SchedulerType::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            SchedulerType::Cosine => {
                let progress = (step - warmup) / (total - warmup).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
            SchedulerType::Constant | SchedulerType::ConstantWithWarmup => 1.0,
            SchedulerType::Polynomial if step > total => POLYNOMIAL_LR_END / self.base_lr,
            SchedulerType::Polynomial => {
                let remaining = 1.0 - (step - warmup) / (total - warmup);
                ((self.base_lr - POLYNOMIAL_LR_END) * remaining.powf(POLYNOMIAL_POWER) + POLYNOMIAL_LR_END)
                    / self.base_lr
            }
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers_linear_schedule() {
        let s = Schedule { kind: SchedulerType::Linear, base_lr: 1.0, warmup_steps: 4, total_steps: 12 };
        let got: Vec<f64> = (0..13).map(|k| s.lr(k)).collect();
        let want = [0.0, 0.25, 0.5, 0.75, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0];
        assert_eq!(got, want);
    }

    /// Two AdamW steps on one parameter with given gradients equal torch's update rule written
    /// out (bias-corrected moments), for non-default betas: the betas reach the kernel.
    #[test]
    fn the_betas_are_the_ones_given() {
        let (b1, b2, eps, lr) = (0.8, 0.95, 1e-8, 0.1);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let p = (vs.root() / "p").var_copy("bias", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = AdamW::new(&vs, 0.0, (b1, b2), eps);
        let grads = [[0.5f64, -1.0], [-0.25, 2.0]];
        let mut want = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (k, g) in grads.iter().enumerate() {
            let t = (k + 1) as i32;
            (&p * Tensor::from_slice(&g.map(|x| x as f32))).sum(Kind::Float).backward();
            opt.step(lr).unwrap();
            opt.zero_grad().unwrap();
            for i in 0..2 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let (mhat, vhat) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                want[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
        let got: Vec<f32> = Vec::try_from(&p).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let with_defaults: Vec<f64> = {
            let (mut m, mut v, mut x) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
            for (k, g) in grads.iter().enumerate() {
                for i in 0..2 {
                    m[i] = 0.9 * m[i] + 0.1 * g[i];
                    v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                    let t = (k + 1) as i32;
                    x[i] -= lr * (m[i] / (1.0 - 0.9f64.powi(t))) / ((v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + eps);
                }
            }
            x.to_vec()
        };
        assert!(with_defaults.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3), "the betas change nothing here");
    }

    #[test]
    fn weight_decay_groups_follow_the_hf_trainer() {
        assert!(takes_weight_decay("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(takes_weight_decay("classifier.weight"));
        assert!(!takes_weight_decay("classifier.bias"));
        assert!(!takes_weight_decay("bert.embeddings.LayerNorm.weight"));
    }
}
