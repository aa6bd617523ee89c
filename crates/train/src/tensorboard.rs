//! TensorBoard event files (`report_to = ["tensorboard"]`): the same scalars under the same tags
//! as transformers' `TensorBoardCallback` writes (`train/loss`, `train/learning_rate`,
//! `train/grad_norm`, `eval/loss`, DPO's `train/rewards/margins`, ...), readable by
//! `tensorboard --logdir`.
//!
//! The format is TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of
//! the data) around `tensorflow.Event` protobuf messages; the few fields used are encoded here
//! directly (`wall_time` = 1, `step` = 2, `file_version` = 3, `summary` = 5 with
//! `Summary.Value { tag = 1, simple_value = 2 }`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Appends scalar events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>` (the folder too) and writes the file
    /// version event.
    pub fn create(dir: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(io(&path))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        let mut event = Vec::new();
        field_f64(&mut event, 1, now());
        field_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `(tag, value)` scalars at `step` and flushes, so that a running TensorBoard sees
    /// them at once.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        for (tag, value) in values {
            let mut summary_value = Vec::new();
            field_bytes(&mut summary_value, 1, tag.as_bytes());
            // simple_value: float, wire type 5.
            push_varint(&mut summary_value, (2 << 3) | 5);
            summary_value.extend_from_slice(&(*value as f32).to_le_bytes());
            let mut summary = Vec::new();
            field_bytes(&mut summary, 1, &summary_value);
            let mut event = Vec::new();
            field_f64(&mut event, 1, now());
            push_varint(&mut event, 2 << 3);
            push_varint(&mut event, step);
            field_bytes(&mut event, 5, &summary);
            self.write_record(&event)?;
        }
        self.flush()
    }

    /// `metrics.jsonl`'s record as transformers' `rewrite_logs` names it: `eval_x` ->
    /// `eval/x`, everything else -> `train/x`; `step` is the event's step, not a scalar.
    pub fn record(&mut self, record: &serde_json::Value) -> Result<()> {
        let Some(map) = record.as_object() else {
            return Ok(());
        };
        let step = map.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
        let scalars: Vec<(String, f64)> = map
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| {
                let tag = match k.strip_prefix("eval_") {
                    Some(rest) => format!("eval/{rest}"),
                    None => format!("train/{k}"),
                };
                Some((tag, v.as_f64()?))
            })
            .collect();
        self.scalars(step, &scalars)
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&out).map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// One scalar read back from an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// The tag (`train/loss`).
    pub tag: String,
    /// The step.
    pub step: u64,
    /// The value (stored as f32, as TensorBoard does).
    pub value: f32,
}

/// Reads every scalar of an event file, checking both CRCs of every record.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: &str| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a TensorBoard event file: {message}"),
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad("cut-off header"))?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        if masked_crc(&header[..8]) != u32::from_le_bytes(header[8..12].try_into().expect("4")) {
            return Err(bad("length CRC"));
        }
        let data = bytes
            .get(at + 12..at + 12 + len)
            .ok_or_else(|| bad("cut-off record"))?;
        let crc = bytes
            .get(at + 12 + len..at + 16 + len)
            .ok_or_else(|| bad("cut-off CRC"))?;
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err(bad("data CRC"));
        }
        let mut step = 0;
        let mut summaries = Vec::new();
        for (field, value) in fields(data).ok_or_else(|| bad("event"))? {
            match (field, value) {
                (2, Field::Varint(s)) => step = s,
                (5, Field::Bytes(b)) => summaries.push(b),
                _ => {}
            }
        }
        for summary in summaries {
            for (_, value) in fields(summary).ok_or_else(|| bad("summary"))? {
                let Field::Bytes(value) = value else { continue };
                let (mut tag, mut scalar) = (None, None);
                for (field, v) in fields(value).ok_or_else(|| bad("value"))? {
                    match (field, v) {
                        (1, Field::Bytes(t)) => tag = Some(String::from_utf8_lossy(t).into_owned()),
                        (2, Field::Fixed32(f)) => scalar = Some(f32::from_le_bytes(f)),
                        _ => {}
                    }
                }
                if let (Some(tag), Some(value)) = (tag, scalar) {
                    out.push(Scalar { tag, step, value });
                }
            }
        }
        at += 16 + len;
    }
    Ok(out)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_f64(out: &mut Vec<u8>, field: u64, v: f64) {
    push_varint(out, (field << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn field_bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
    push_varint(out, (field << 3) | 2);
    push_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

/// The `(field number, value)` pairs of a protobuf message; `None` if it is malformed.
fn fields(mut data: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(data: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut data)?),
            1 => {
                data = data.get(8..)?;
                Field::Fixed64
            }
            2 => {
                let len = varint(&mut data)? as usize;
                let (bytes, rest) = (data.get(..len)?, data.get(len..)?);
                data = rest;
                Field::Bytes(bytes)
            }
            5 => {
                let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
                data = &data[4..];
                Field::Fixed32(bytes)
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TFRecord's masked CRC-32C of the empty string and of "a" (tensorflow's crc32c
        // Mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8).
        assert_eq!(
            crc32c::crc32c(b"123456789"),
            0xe306_9283,
            "CRC-32C check value"
        );
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }

    #[test]
    fn scalars_round_trip_with_transformers_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let record = serde_json::json!({
            "step": 10, "loss": 1.5, "learning_rate": 2e-4, "grad_norm": 0.75,
            "rewards/margins": 0.25, "eval_loss": 1.25, "note": "text is skipped",
        });
        w.record(&record).unwrap();
        w.scalars(300, &[("train/loss".into(), 0.5)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut read = read_scalars(&path).unwrap();
        read.sort_by(|a, b| (a.step, &a.tag).cmp(&(b.step, &b.tag)));
        let got: Vec<(String, u64, f32)> =
            read.into_iter().map(|s| (s.tag, s.step, s.value)).collect();
        assert_eq!(
            got,
            [
                ("eval/loss".to_string(), 10, 1.25),
                ("train/grad_norm".to_string(), 10, 0.75),
                ("train/learning_rate".to_string(), 10, 2e-4),
                ("train/loss".to_string(), 10, 1.5),
                ("train/rewards/margins".to_string(), 10, 0.25),
                ("train/loss".to_string(), 300, 0.5),
            ]
        );
        // A flipped byte is caught by the CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_scalars(&path).is_err());
    }
}
