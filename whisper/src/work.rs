//! How much model work transcription cost: windows encoded, decoder calls
//! and the token positions they ran, fallbacks and packs, and the time spent
//! inside the encoder and the decoder. Throughput tuning reads these (is time
//! going into re-decoded windows, into packs that did not split, into the
//! encoder or the decoder?), and the pipeline exports them as metrics.

use std::time::Duration;

/// Counts since an engine was loaded; take two readings and subtract them
/// ([`WorkCounters::since`]) for the work of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCounters {
    /// 30 s windows run through the encoder.
    pub windows_encoded: u64,
    /// Decoder graph runs (a prompt or one token step for a batch of rows).
    pub decoder_calls: u64,
    /// Rows over all decoder calls: each produces one row of logits.
    pub decoder_rows: u64,
    /// Token positions over all decoder calls (rows × new tokens, prompts
    /// and padding included): what the decoder's layers computed.
    pub decoder_tokens: u64,
    /// Time inside encoder calls, in nanoseconds.
    pub encoder_nanos: u64,
    /// Time inside decoder calls, in nanoseconds.
    pub decoder_nanos: u64,
    /// Windows decoded again at a higher temperature.
    pub fallback_windows: u64,
    /// Packed windows whose text was split back to their inputs.
    pub packs_split: u64,
    /// Packed windows that did not split cleanly (their inputs were decoded again alone).
    pub packs_redone: u64,
}

impl WorkCounters {
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            windows_encoded: self.windows_encoded.saturating_sub(earlier.windows_encoded),
            decoder_calls: self.decoder_calls.saturating_sub(earlier.decoder_calls),
            decoder_rows: self.decoder_rows.saturating_sub(earlier.decoder_rows),
            decoder_tokens: self.decoder_tokens.saturating_sub(earlier.decoder_tokens),
            encoder_nanos: self.encoder_nanos.saturating_sub(earlier.encoder_nanos),
            decoder_nanos: self.decoder_nanos.saturating_sub(earlier.decoder_nanos),
            fallback_windows: self
                .fallback_windows
                .saturating_sub(earlier.fallback_windows),
            packs_split: self.packs_split.saturating_sub(earlier.packs_split),
            packs_redone: self.packs_redone.saturating_sub(earlier.packs_redone),
        }
    }

    /// Each count with its metric label, for exporting.
    pub fn labelled(&self) -> [(&'static str, u64); 7] {
        [
            ("windows_encoded", self.windows_encoded),
            ("decoder_calls", self.decoder_calls),
            ("decoder_rows", self.decoder_rows),
            ("decoder_tokens", self.decoder_tokens),
            ("fallback_windows", self.fallback_windows),
            ("packs_split", self.packs_split),
            ("packs_redone", self.packs_redone),
        ]
    }

    /// Seconds inside each graph, with its metric label, for exporting.
    pub fn seconds(&self) -> [(&'static str, f64); 2] {
        let seconds = |nanos: u64| Duration::from_nanos(nanos).as_secs_f64();
        [
            ("encoder", seconds(self.encoder_nanos)),
            ("decoder", seconds(self.decoder_nanos)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_each_count() {
        let earlier = WorkCounters {
            windows_encoded: 2,
            decoder_calls: 40,
            decoder_rows: 80,
            decoder_tokens: 200,
            encoder_nanos: 1_000_000_000,
            decoder_nanos: 2_000_000_000,
            fallback_windows: 1,
            packs_split: 0,
            packs_redone: 1,
        };
        let later = WorkCounters {
            windows_encoded: 5,
            decoder_calls: 100,
            decoder_rows: 180,
            decoder_tokens: 500,
            encoder_nanos: 1_500_000_000,
            decoder_nanos: 5_000_000_000,
            fallback_windows: 1,
            packs_split: 3,
            packs_redone: 1,
        };
        let delta = later.since(&earlier);
        assert_eq!(delta.windows_encoded, 3);
        assert_eq!(delta.decoder_calls, 60);
        assert_eq!(delta.fallback_windows, 0);
        assert_eq!(delta.packs_split, 3);
        assert_eq!(delta.labelled()[1], ("decoder_calls", 60));
        assert_eq!(delta.labelled()[3], ("decoder_tokens", 300));
        assert_eq!(delta.seconds(), [("encoder", 0.5), ("decoder", 3.0)]);
        assert_eq!(earlier.since(&later), WorkCounters::default());
    }
}
