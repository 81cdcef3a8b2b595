//! How much model work transcription cost: windows encoded, decoder calls,
//! fallbacks and packs. Throughput tuning reads these (is time going into
//! re-decoded windows or into packs that did not split?), and the pipeline
//! exports them as metrics.

/// Counts since an engine was loaded; take two readings and subtract them
/// ([`WorkCounters::since`]) for the work of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCounters {
    /// 30 s windows run through the encoder.
    pub windows_encoded: u64,
    /// Decoder graph runs (a prompt or one token step for a batch of rows).
    pub decoder_calls: u64,
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
            fallback_windows: self
                .fallback_windows
                .saturating_sub(earlier.fallback_windows),
            packs_split: self.packs_split.saturating_sub(earlier.packs_split),
            packs_redone: self.packs_redone.saturating_sub(earlier.packs_redone),
        }
    }

    /// Each count with its metric label, for exporting.
    pub fn labelled(&self) -> [(&'static str, u64); 5] {
        [
            ("windows_encoded", self.windows_encoded),
            ("decoder_calls", self.decoder_calls),
            ("fallback_windows", self.fallback_windows),
            ("packs_split", self.packs_split),
            ("packs_redone", self.packs_redone),
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
            fallback_windows: 1,
            packs_split: 0,
            packs_redone: 1,
        };
        let later = WorkCounters {
            windows_encoded: 5,
            decoder_calls: 100,
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
        assert_eq!(earlier.since(&later), WorkCounters::default());
    }
}
