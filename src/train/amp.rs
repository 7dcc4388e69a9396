//! fp16's dynamic loss scaler (as torch.cuda.amp.GradScaler), a no-op in every other
//! precision ([`crate::device::Precision`]).

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Dynamic loss scaling for fp16: scale the loss up, unscale the gradients, skip the step and
/// halve the scale on inf/NaN, double it after `growth_interval` clean steps.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    pub enabled: bool,
    pub scale: f64,
    pub growth_tracker: usize,
    pub growth_interval: usize,
}

impl GradScaler {
    pub fn new(enabled: bool) -> GradScaler {
        GradScaler { enabled, scale: 65536.0, growth_tracker: 0, growth_interval: 2000 }
    }

    pub fn scale(&self, loss: &Tensor) -> Tensor {
        match self.enabled {
            true => loss * self.scale,
            false => loss.shallow_clone(),
        }
    }

    /// Divides the gradients by the scale; true when any of them is not finite (the step must
    /// be skipped). Call after the gradients are averaged across ranks, so all ranks agree.
    pub fn unscale<'a>(&self, grads: impl Iterator<Item = &'a Tensor>) -> Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        let inv = 1.0 / self.scale;
        let mut total: Option<Tensor> = None;
        tch::no_grad(|| {
            for g in grads.map(Tensor::grad).filter(Tensor::defined) {
                let _ = g.shallow_clone().f_mul_scalar_(inv)?;
                let s = g.abs().sum(Kind::Float);
                total = Some(match total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
            Ok::<_, Error>(())
        })?;
        Ok(total.is_some_and(|t| !t.double_value(&[]).is_finite()))
    }

    /// Adjusts the scale after a step that found (or did not find) inf/NaN gradients.
    pub fn update(&mut self, found_inf: bool) {
        if !self.enabled {
            return;
        }
        if found_inf {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn param_with_grad(values: &[f32]) -> Tensor {
        let p = Tensor::zeros([values.len() as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(values)).sum(Kind::Float).backward();
        p
    }

    #[test]
    fn an_inf_gradient_skips_the_step_and_halves_the_scale() {
        let mut s = GradScaler::new(true);
        let p = param_with_grad(&[65536.0, 131072.0]);
        assert!(!s.unscale([&p].into_iter()).unwrap());
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [1.0, 2.0]);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 1));
        let q = param_with_grad(&[f32::INFINITY, 1.0]);
        assert!(s.unscale([&q].into_iter()).unwrap());
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
    }

    #[test]
    fn the_scale_grows_after_the_interval_and_a_disabled_scaler_does_nothing() {
        let mut s = GradScaler { growth_interval: 3, ..GradScaler::new(true) };
        (0..3).for_each(|_| s.update(false));
        assert_eq!(s.scale, 131072.0);
        let mut off = GradScaler::new(false);
        let p = param_with_grad(&[f32::NAN]);
        assert!(!off.unscale([&p].into_iter()).unwrap());
        off.update(true);
        assert_eq!(off, GradScaler::new(false));
        let loss = Tensor::from(2.0f32);
        assert_eq!(off.scale(&loss).double_value(&[]), 2.0);
    }
}
