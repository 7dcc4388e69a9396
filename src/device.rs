//! Devices: where a process computes, as the user names it with `--device` (`auto`, `cpu`,
//! `cuda`, `cuda:N`) and as it resolves for one worker of a group; moving a tensor there; and
//! the arithmetic it computes in (`--precision`: bf16 or fp16 autocast on CUDA, fp32).
//! Training, evaluation and prediction share `--precision` ([`PrecisionArg`]).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// `t` on `device`. From the CPU to a GPU through pinned memory and without waiting, as a
/// DataLoader with `pin_memory=True` and `.to(device, non_blocking=True)` do, so the host can
/// queue the next step while the GPU still runs this one.
pub fn upload(t: &tch::Tensor, device: Device) -> tch::Tensor {
    match (t.device(), device) {
        (from, to) if from == to => t.shallow_clone(),
        (Device::Cpu, Device::Cuda(_)) => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// This worker's GPU when CUDA is available, else the CPU.
    Auto,
    Cpu,
    /// A given GPU, or (None) this worker's: the one numbered by its local rank.
    Cuda(Option<usize>),
}

impl DeviceSpec {
    /// The device of the worker with node-local rank `local_rank` (0 outside a group).
    pub fn resolve(self, local_rank: usize) -> Result<Device> {
        let cuda = |n: usize| -> Result<Device> {
            let count = tch::Cuda::device_count() as usize;
            match n < count {
                true => Ok(Device::Cuda(n)),
                false => Err(Error::Input(format!("--device cuda:{n}: {count} CUDA device(s) visible"))),
            }
        };
        match self {
            DeviceSpec::Auto if tch::Cuda::is_available() => cuda(local_rank),
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(None) => cuda(local_rank),
            DeviceSpec::Cuda(Some(n)) => cuda(n),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(None)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(Some(n))),
                _ => Err(format!("{s:?}: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(None) => f.write_str("cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `--precision`, declared once for train, eval and predict.
#[derive(Clone, Copy, Debug, serde::Serialize, clap::Args)]
pub struct PrecisionArg {
    /// Arithmetic: auto is bf16 autocast on CUDA devices that support it (fp16 on older ones,
    /// with a dynamic loss scaler when training) and fp32 on CPU.
    #[arg(long, env = "MEDBERT_PRECISION", value_enum, default_value = "auto")]
    pub precision: Precision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on a CUDA device that supports it (compute capability 8.0+), fp16 on older ones,
    /// fp32 on CPU.
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    /// The precision a run on `device` uses; mixed precision asked for on CPU is an error.
    pub fn resolve(self, device: Device) -> Result<Precision> {
        match (self, device) {
            (Precision::Auto, Device::Cuda(n)) => Ok(match crate::sys::cuda_capability(n) {
                Some((major, _)) if major < 8 => Precision::Fp16,
                _ => Precision::Bf16,
            }),
            (Precision::Auto, _) => Ok(Precision::Fp32),
            (Precision::Bf16 | Precision::Fp16, d) if !d.is_cuda() => {
                Err(Error::Input(format!("--precision {self:?} needs a CUDA device; this run is on {d:?}")))
            }
            (p, _) => Ok(p),
        }
    }

    /// Runs `f` under autocast for this precision (a plain call for fp32).
    pub fn autocast<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Precision::Bf16 | Precision::Fp16 => crate::sys::cuda_autocast(self == Precision::Bf16, f),
            _ => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_prints_back() {
        for text in ["auto", "cpu", "cuda", "cuda:3"] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap().to_string(), text);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().unwrap_err().contains("expected auto, cpu, cuda or cuda:N"), "{bad}");
        }
    }

    #[test]
    fn the_cpu_resolves_without_cuda_and_a_missing_gpu_is_named() {
        assert_eq!(DeviceSpec::Cpu.resolve(3).unwrap(), Device::Cpu);
        let n = tch::Cuda::device_count() as usize;
        let err = DeviceSpec::Cuda(Some(n)).resolve(0).unwrap_err().to_string();
        assert!(err.contains(&format!("cuda:{n}")), "{err}");
    }

    #[test]
    fn mixed_precision_is_refused_on_cpu_and_auto_is_fp32_there() {
        assert_eq!(Precision::Auto.resolve(Device::Cpu).unwrap(), Precision::Fp32);
        assert!(Precision::Bf16.resolve(Device::Cpu).unwrap_err().to_string().contains("needs a CUDA device"));
    }
}
