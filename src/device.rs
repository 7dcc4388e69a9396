//! Devices: where a process computes, as the user names it with `--device` (`auto`, `cpu`,
//! `cuda`, `cuda:N`) and as it resolves for one worker of a group; and moving a tensor there.

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
}
