//! A job's decoded audio, kept on disk rather than in memory.
//!
//! A recording is decoded as a stream (see [`mmt_whisper::audio::stream_file`]);
//! its 16 kHz samples are written to a spool that stays in memory up to
//! [`SPILL_AFTER_BYTES`] and moves to an anonymous temporary file past that
//! (3.5 h of audio is 800 MB as `f32`). The job and each of its chunks hold a
//! [`Samples`] view into that spool, and a chunk's samples are read back only
//! when the model is about to transcribe it, so memory does not grow with the
//! recording's length. The file has no name: the system removes it when the
//! last view is dropped, or when the process dies.
//!
//! Views cross timely's exchange channels; within one process they move as
//! they are, and serialised (cluster mode) they carry their samples inline.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tempfile::SpooledTempFile;

/// A spool moves to disk once it holds more than this (about 16 s of audio),
/// so that the jobs of the epochs in flight do not hold their audio in memory.
pub const SPILL_AFTER_BYTES: usize = 1 << 20;

const SAMPLE_BYTES: usize = std::mem::size_of::<f32>();

/// Samples `range` of a shared spool of 16 kHz mono `f32` samples.
#[derive(Clone)]
pub struct Samples {
    spool: Arc<Mutex<SpooledTempFile>>,
    range: Range<usize>,
}

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samples")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Default for Samples {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl From<Vec<f32>> for Samples {
    /// Samples already in memory (a test, or a view that crossed processes).
    fn from(samples: Vec<f32>) -> Self {
        let mut writer = SamplesWriter::new();
        // Writing to an in-memory spool cannot fail; a spilled one only
        // past `SPILL_AFTER_BYTES`, which a failed write then leaves short.
        if let Err(err) = writer.write(&samples) {
            tracing::error!(error = %err, "keeping samples in the spool failed");
        }
        writer.finish()
    }
}

impl Samples {
    /// Number of samples in view.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the view holds no sample.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The samples `range` of this view (clamped to it), sharing the spool.
    pub fn slice(&self, range: Range<usize>) -> Self {
        let start = (self.range.start + range.start).min(self.range.end);
        let end = (self.range.start + range.end).clamp(start, self.range.end);
        Self {
            spool: Arc::clone(&self.spool),
            range: start..end,
        }
    }

    /// Reads the samples in view.
    pub fn read(&self) -> std::io::Result<Vec<f32>> {
        let mut bytes = vec![0u8; self.len() * SAMPLE_BYTES];
        {
            let mut spool = self
                .spool
                .lock()
                .map_err(|_| std::io::Error::other("the sample spool's lock is poisoned"))?;
            spool.seek(SeekFrom::Start((self.range.start * SAMPLE_BYTES) as u64))?;
            spool.read_exact(&mut bytes)?;
        }
        Ok(bytes
            .chunks_exact(SAMPLE_BYTES)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Serialize for Samples {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let samples = self.read().map_err(serde::ser::Error::custom)?;
        samples.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<f32>::deserialize(deserializer).map(Self::from)
    }
}

/// Writes a recording's samples, as they decode, into a new spool.
#[derive(Debug)]
pub struct SamplesWriter {
    spool: SpooledTempFile,
    len: usize,
    bytes: Vec<u8>,
}

impl Default for SamplesWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SamplesWriter {
    pub fn new() -> Self {
        Self {
            spool: SpooledTempFile::new(SPILL_AFTER_BYTES),
            len: 0,
            bytes: Vec::new(),
        }
    }

    /// Appends `samples`; fails when the temporary file cannot be written
    /// (disk full).
    pub fn write(&mut self, samples: &[f32]) -> std::io::Result<()> {
        self.bytes.clear();
        self.bytes
            .extend(samples.iter().flat_map(|sample| sample.to_le_bytes()));
        self.spool.write_all(&self.bytes)?;
        self.len += samples.len();
        Ok(())
    }

    /// Samples written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A view of everything written.
    pub fn finish(self) -> Samples {
        Samples {
            spool: Arc::new(Mutex::new(self.spool)),
            range: 0..self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 / n as f32 - 0.5).collect()
    }

    #[test]
    fn small_and_spilled_spools_read_back_what_was_written() {
        // One spool stays in memory, the other goes to disk.
        for n in [10, SPILL_AFTER_BYTES / SAMPLE_BYTES * 3 + 7] {
            let samples = ramp(n);
            let mut writer = SamplesWriter::new();
            for block in samples.chunks(4_093) {
                writer.write(block).expect("write");
            }
            assert_eq!(writer.len(), n);
            let view = writer.finish();
            assert_eq!(view.read().expect("read"), samples);
            let part = view.slice(3..n - 2);
            assert_eq!(part.len(), n - 5);
            assert_eq!(part.read().expect("read"), samples[3..n - 2]);
            let inner = part.slice(1..4);
            assert_eq!(inner.read().expect("read"), samples[4..7]);
            assert!(part.slice(n..n + 5).is_empty(), "clamped to the view");
        }
    }

    #[test]
    fn serialised_views_carry_their_samples() {
        let view = Samples::from(ramp(100)).slice(10..20);
        let json = serde_json::to_string(&view).expect("serialise");
        let back: Samples = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back.len(), 10);
        assert_eq!(back.read().expect("read"), ramp(100)[10..20]);
        assert!(Samples::default().read().expect("read").is_empty());
    }
}
