//! TensorBoard event files: each evaluation's scalars appended as one `Event` record, so
//! TensorBoard (or anything that reads its format) follows a run while it trains.
//!
//! The format is TensorFlow's: a file `events.out.tfevents.<secs>.<host>` of records, each
//! `u64` length, the length's masked CRC-32C, the bytes, their masked CRC-32C (all little
//! endian); the bytes are a protobuf `Event { double wall_time = 1; int64 step = 2;
//! string file_version = 3; Summary summary = 5; }` with `Summary { repeated Value value = 1; }`
//! and `Value { string tag = 1; float simple_value = 2; }`. The first event is the file
//! version (`brain.Event:2`).
//!
//! The tags are the columns of the Python package's `Run.history` and the learning rate:
//! `train_loss`, `train_loss/<term>`, `valid_loss`, `<output>/<metric>` (`metrics.json`'s
//! names: rows; auc, log_loss, ece, mean_prediction, observed_rate, gauc; mse, mae),
//! `loss_weight/<term>`, `grad_norm/<term>`, `samples_per_sec` and `lr`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::CodedOutputStream;

use crate::fit::state::EvalRecord;

/// An event file shared by the job that opened it and the evaluations that append to it.
pub type SharedEventFile = std::sync::Arc<std::sync::Mutex<EventFile>>;

/// An event file being written.
#[derive(Debug)]
pub struct EventFile {
    path: PathBuf,
    file: BufWriter<File>,
    /// Whether [`EventFile::create`] made the folder.
    made_dir: bool,
}

impl EventFile {
    /// A new event file in `dir` (created with its parents if missing), holding the file
    /// version event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir)?;
        let secs = now().floor() as u64;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mtl".into());
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        // several runs (or a resumed one) in the same second each get a file of their own
        let path = (0..)
            .map(|k| {
                dir.join(format!(
                    "events.out.tfevents.{secs}.{host}.{}.{k}",
                    std::process::id()
                ))
            })
            .find(|p| !p.exists())
            .expect("a free name");
        let file = BufWriter::new(File::create_new(&path)?);
        let mut out = Self { path, file, made_dir };
        out.event(0, |os| os.write_string(3, "brain.Event:2"))?;
        Ok(out)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file, and its folder when [`EventFile::create`] made it and nothing else
    /// is there (a run that failed before its first checkpoint leaves no events).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let (true, Some(dir)) = (self.made_dir, self.path.parent()) {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Appends one event at `step` holding `scalars` (tag, value) and flushes it to the file.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) -> std::io::Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let value = message(|os| {
                os.write_string(1, tag)?;
                os.write_float(2, *value as f32)
            })?;
            summary.extend(message(|os| os.write_bytes(1, &value))?);
        }
        self.event(step, |os| os.write_bytes(5, &summary))
    }

    /// Appends the event at `step` whose remaining fields `body` writes.
    fn event(
        &mut self,
        step: u64,
        body: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>,
    ) -> std::io::Result<()> {
        let event = message(|os| {
            os.write_double(1, now())?;
            os.write_int64(2, step as i64)?;
            body(os)
        })?;
        self.file.write_all(&record(&event))?;
        self.file.flush()
    }
}

/// A protobuf message's bytes, its fields written by `fields`.
fn message(fields: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut os = CodedOutputStream::vec(&mut bytes);
    fields(&mut os)
        .and_then(|()| os.flush())
        .map_err(std::io::Error::other)?;
    drop(os);
    Ok(bytes)
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// TensorFlow's masked CRC-32C (a CRC of data holding CRCs is masked so it is not one).
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The scalars of evaluation `record` at learning rate `lr`, tagged as in the module's
/// documentation; metrics an output does not have (AUC of one class) are left out.
pub fn evaluation_scalars(record: &EvalRecord, lr: f64) -> Vec<(String, f64)> {
    let mut out = vec![("train_loss".to_string(), record.train_loss)];
    let named = |prefix: &str, list: &[(String, f64)]| -> Vec<(String, f64)> {
        list.iter().map(|(n, v)| (format!("{prefix}/{n}"), *v)).collect()
    };
    out.extend(named("train_loss", &record.train_losses));
    out.extend(record.valid_loss.map(|l| ("valid_loss".to_string(), l)));
    // `metrics.json`'s names, each where the output has it (binary or regression)
    const METRICS: [&str; 8] = [
        "auc",
        "log_loss",
        "ece",
        "mean_prediction",
        "observed_rate",
        "gauc",
        "mse",
        "mae",
    ];
    for task in &record.valid {
        out.push((format!("{}/rows", task.name), task.rows as f64));
        for metric in METRICS {
            out.extend(task.get(metric).map(|v| (format!("{}/{metric}", task.name), v)));
        }
    }
    out.extend(named("loss_weight", &record.loss_weights));
    out.extend(named("grad_norm", &record.grad_norms));
    out.push(("lr".into(), lr));
    out.push(("samples_per_sec".into(), record.samples_per_sec));
    out.retain(|(_, v)| v.is_finite());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedInputStream;

    #[test]
    fn the_checksum_is_tensorflows_masked_crc32c() {
        // tensorboard 2.21's own `masked_crc32c(b"123456789")`
        // (tensorboard.compat.tensorflow_stub.pywrap_tensorflow); CRC-32C's check value
        // 0xE3069283 rotated right by 15 bits, plus 0xa282ead8
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    /// The records of an event file, each checked against its CRCs.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    /// An event's step, file version, and (tag, value) scalars, read field by field.
    fn decode(event: &[u8]) -> (i64, String, Vec<(String, f32)>) {
        let mut is = CodedInputStream::from_bytes(event);
        let (mut step, mut version, mut scalars) = (0, String::new(), Vec::new());
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            match tag >> 3 {
                1 => drop(is.read_double().unwrap()),
                2 => step = is.read_int64().unwrap(),
                3 => version = is.read_string().unwrap(),
                5 => {
                    let summary = is.read_bytes().unwrap();
                    let mut s = CodedInputStream::from_bytes(&summary);
                    while s.read_raw_tag_or_eof().unwrap().is_some() {
                        let value = s.read_bytes().unwrap();
                        let mut v = CodedInputStream::from_bytes(&value);
                        let (mut name, mut x) = (String::new(), 0.0);
                        while let Some(t) = v.read_raw_tag_or_eof().unwrap() {
                            match t >> 3 {
                                1 => name = v.read_string().unwrap(),
                                _ => x = v.read_float().unwrap(),
                            }
                        }
                        scalars.push((name, x));
                    }
                }
                other => panic!("unexpected field {other}"),
            }
        }
        (step, version, scalars)
    }

    #[test]
    fn events_hold_the_version_then_each_evaluations_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = EventFile::create(&dir.path().join("tb")).unwrap();
        file.scalars(10, &[("ctr/auc".into(), 0.75), ("lr".into(), 1e-3)])
            .unwrap();
        file.scalars(20, &[("ctr/auc".into(), 0.8)]).unwrap();
        let name = file.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        // a second file in the same folder and second is another file
        let second = EventFile::create(&dir.path().join("tb")).unwrap();
        assert_ne!(second.path(), file.path());
        let events = records(&std::fs::read(file.path()).unwrap());
        assert_eq!(events.len(), 3);
        assert_eq!(decode(&events[0]), (0, "brain.Event:2".into(), vec![]));
        let want = vec![("ctr/auc".to_string(), 0.75f32), ("lr".into(), 1e-3)];
        assert_eq!(decode(&events[1]), (10, String::new(), want));
        assert_eq!(decode(&events[2]).0, 20);
    }
}
