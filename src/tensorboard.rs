//! TensorBoard event files, as torch's `SummaryWriter` writes them: TFRecord framing around
//! `Event` protocol buffers. The messages are the parts of TensorFlow's `event.proto` and
//! `summary.proto` that scalars use, with their field numbers.

use crate::error::{Error, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    /// A member of the `value` oneof in summary.proto, so it is written even when 0.
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SessionLog.START`: TensorBoard drops the events of this run at or after its step, written
/// by an earlier run that is now redone (torch's `purge_step`).
const SESSION_START: i32 = 1;

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of CRCs stays distinct.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One events file in a log directory, flushed after every record.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new events file in it (`events.out.tfevents.<time>.<host>.<pid>.0`,
    /// the name TensorBoard looks for). With `resumed_at`, records that training restarts at
    /// that step, so the events of an interrupted run's later steps are dropped on reading.
    pub fn create(dir: &Path, resumed_at: Option<usize>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = format!("events.out.tfevents.{}.{}.{}.0", now().trunc(), hostname(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().create_new(true).write(true).open(&path);
        let mut writer = EventWriter { file: file.map_err(|e| Error::io(&path, e))?, path };
        writer.write(0, What::FileVersion("brain.Event:2".into()))?;
        if let Some(step) = resumed_at {
            writer.write(step, What::SessionLog(SessionLog { status: SESSION_START }))?;
        }
        Ok(writer)
    }

    /// One event with a scalar per `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: usize, scalars: impl IntoIterator<Item = (String, f64)>) -> Result<()> {
        let value = scalars.into_iter().map(|(tag, v)| SummaryValue { tag, simple_value: Some(v as f32) }).collect();
        self.write(step, What::Summary(Summary { value }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, step: usize, what: What) -> Result<()> {
        let event = Event { wall_time: now(), step: step as i64, what: Some(what) };
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file.write_all(&record).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

/// This machine's name, as TensorBoard's file and directory names carry it ("" if unknown).
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_scalar_is_still_written() {
        let value = SummaryValue { tag: "t".into(), simple_value: Some(0.0) };
        // tag (field 1, "t") then field 2 as a 32-bit float of zero.
        assert_eq!(value.encode_to_vec(), [0x0a, 0x01, b't', 0x15, 0, 0, 0, 0]);
    }
}
