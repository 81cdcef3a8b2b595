//! Where a run's model time went: seconds inside the encoder and the decoder,
//! the x-realtime ceiling the encoder alone sets, the decoder's work per
//! second of audio, and the share of this machine's
//! sgemm rate each graph reached (from the child's metrics file, the model's
//! dimensions and a timed matrix product; see `mmt_whisper::cost`).

use super::metrics::labelled;
use mmt_whisper::cost::{sgemm_gflops, ModelCost};
use mmt_whisper::model::ModelSpec;
use mmt_whisper::{ModelOptions, WorkCounters};
use std::collections::BTreeMap;

/// The model's arithmetic per unit of work and the sgemm rate per thread
/// count, measured once before the sweep.
#[derive(Debug, Default)]
pub struct Calibration {
    cost: Option<ModelCost>,
    /// GFLOP/s of ONNX Runtime's sgemm, by intra-op thread count.
    sgemm_gflops: BTreeMap<usize, f64>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

impl Calibration {
    /// Reads the model's dimensions and times the sgemm graph once per
    /// thread count. Either may fail (an export that predates the graph):
    /// the figures that need it are then left empty, with a note.
    pub fn measure(options: &ModelOptions, thread_counts: &[usize]) -> Self {
        let mut calibration = Self::default();
        match ModelSpec::read(&options.model_dir.join("mmt-model.json")) {
            Ok(spec) => calibration.cost = Some(ModelCost::of(&spec)),
            Err(err) => calibration
                .notes
                .push(format!("encoder/decoder GFLOP/s not computed: {err}")),
        }
        for &threads in thread_counts {
            match sgemm_gflops(options, threads) {
                Ok(rate) => {
                    calibration.sgemm_gflops.insert(threads, rate);
                }
                Err(err) => {
                    calibration
                        .notes
                        .push(format!("sgemm rate not measured: {err}"));
                    break;
                }
            }
        }
        calibration
    }

    /// The measured rates, for the CSV's comments.
    pub fn describe(&self) -> Option<String> {
        if self.sgemm_gflops.is_empty() {
            return None;
        }
        let rates: Vec<String> = self
            .sgemm_gflops
            .iter()
            .map(|(threads, rate)| format!("{rate:.1} GFLOP/s on {threads} thread(s)"))
            .collect();
        Some(format!(
            "sgemm: ONNX Runtime's float32 MatMul of two 1024 x 1024 matrices (sgemm.onnx in \
             the fp32 model folder), best of 5: {}",
            rates.join(", ")
        ))
    }

    /// The breakdown of one run that did `work` on `audio_s` seconds of audio,
    /// with `workers` workers whose calls each ran on `threads` threads.
    pub fn breakdown(
        &self,
        work: &WorkCounters,
        audio_s: f64,
        workers: usize,
        threads: usize,
    ) -> ModelTime {
        let [(_, encoder_s), (_, decoder_s)] = work.seconds();
        let per_audio_second = |count: u64| count as f64 / audio_s;
        let gflops = |flops: f64, seconds: f64| {
            if seconds > 0.0 {
                flops / seconds / 1e9
            } else {
                f64::NAN
            }
        };
        let (encoder_gflops, decoder_gflops) = match &self.cost {
            Some(cost) => (
                gflops(cost.encoder_flops(work), encoder_s),
                gflops(cost.decoder_flops(work), decoder_s),
            ),
            None => (f64::NAN, f64::NAN),
        };
        let share = |rate: f64| {
            self.sgemm_gflops
                .get(&threads)
                .map_or(f64::NAN, |sgemm| 100.0 * rate / sgemm)
        };
        ModelTime {
            encoder_s,
            decoder_s,
            encoder_bound_x_realtime: encoder_bound(audio_s, workers, encoder_s),
            decoder_calls_per_audio_s: per_audio_second(work.decoder_calls),
            decoder_tokens_per_audio_s: per_audio_second(work.decoder_tokens),
            encoder_gflops,
            decoder_gflops,
            encoder_sgemm_pct: share(encoder_gflops),
            decoder_sgemm_pct: share(decoder_gflops),
        }
    }
}

/// The x-realtime a run could reach if the encoder were all its work:
/// `workers` encode at once, so their summed encoder seconds divide by it.
/// No configuration that encodes the same windows at the same precision runs
/// faster than this, however cheap its decoding; NaN without encoder time.
fn encoder_bound(audio_s: f64, workers: usize, encoder_s: f64) -> f64 {
    if encoder_s > 0.0 {
        audio_s * workers.max(1) as f64 / encoder_s
    } else {
        f64::NAN
    }
}

/// One run's model time. Seconds are summed over workers (two workers
/// decoding at once count twice); a figure that could not be measured is NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelTime {
    pub encoder_s: f64,
    pub decoder_s: f64,
    /// The x-realtime ceiling the encoder alone sets (see [`encoder_bound`]).
    pub encoder_bound_x_realtime: f64,
    /// Decoder calls (sequential steps of a batch) per second of audio.
    pub decoder_calls_per_audio_s: f64,
    /// Token positions through the decoder per second of audio.
    pub decoder_tokens_per_audio_s: f64,
    pub encoder_gflops: f64,
    pub decoder_gflops: f64,
    /// The graph's GFLOP/s in percent of the sgemm rate on as many threads.
    pub encoder_sgemm_pct: f64,
    pub decoder_sgemm_pct: f64,
}

impl Default for ModelTime {
    fn default() -> Self {
        Self {
            encoder_s: f64::NAN,
            decoder_s: f64::NAN,
            encoder_bound_x_realtime: f64::NAN,
            decoder_calls_per_audio_s: f64::NAN,
            decoder_tokens_per_audio_s: f64::NAN,
            encoder_gflops: f64::NAN,
            decoder_gflops: f64::NAN,
            encoder_sgemm_pct: f64::NAN,
            decoder_sgemm_pct: f64::NAN,
        }
    }
}

/// The model work in a metrics file `mmt run --metrics-file` wrote:
/// `model_work_total{kind}` and `model_compute_seconds_total{stage}`.
/// `None` when the file has neither (a run that transcribed nothing).
pub fn work_in_metrics(text: &str) -> Option<WorkCounters> {
    let mut work = WorkCounters::default();
    let mut found = false;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        if let Some((kind, value)) = labelled(line, "model_work_total", "kind") {
            let count = value as u64;
            match kind {
                "windows_encoded" => work.windows_encoded = count,
                "decoder_calls" => work.decoder_calls = count,
                "decoder_rows" => work.decoder_rows = count,
                "decoder_tokens" => work.decoder_tokens = count,
                "fallback_windows" => work.fallback_windows = count,
                "packs_split" => work.packs_split = count,
                "packs_redone" => work.packs_redone = count,
                _ => continue,
            }
            found = true;
        } else if let Some((stage, seconds)) =
            labelled(line, "model_compute_seconds_total", "stage")
        {
            let nanos = (seconds * 1e9).round() as u64;
            match stage {
                "encoder" => work.encoder_nanos = nanos,
                "decoder" => work.decoder_nanos = nanos,
                _ => continue,
            }
            found = true;
        }
    }
    found.then_some(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP model_work_total Model work done
# TYPE model_work_total counter
model_work_total{kind=\"decoder_calls\"} 120
model_work_total{kind=\"decoder_rows\"} 300
model_work_total{kind=\"decoder_tokens\"} 900
model_work_total{kind=\"windows_encoded\"} 4
model_work_total_extra{kind=\"decoder_calls\"} 7
# TYPE model_compute_seconds_total counter
model_compute_seconds_total{stage=\"decoder\"} 3.25
model_compute_seconds_total{stage=\"encoder\"} 0.5
";

    #[test]
    fn reads_the_model_work_of_a_metrics_file() {
        let work = work_in_metrics(METRICS).expect("model work");
        assert_eq!(work.decoder_calls, 120);
        assert_eq!(work.decoder_rows, 300);
        assert_eq!(work.decoder_tokens, 900);
        assert_eq!(work.windows_encoded, 4);
        assert_eq!(work.encoder_nanos, 500_000_000);
        assert_eq!(work.decoder_nanos, 3_250_000_000);
        assert_eq!(work_in_metrics("# nothing\nup 1\n"), None);
    }

    #[test]
    fn the_breakdown_divides_work_by_time_and_by_the_sgemm_rate() {
        let cost = ModelCost {
            encoder_per_window: 10e9,
            decoder_per_token: 1e6,
            decoder_per_row: 2e6,
        };
        let calibration = Calibration {
            cost: Some(cost),
            sgemm_gflops: BTreeMap::from([(2, 100.0)]),
            notes: Vec::new(),
        };
        let work = work_in_metrics(METRICS).expect("model work");
        let time = calibration.breakdown(&work, 60.0, 1, 2);
        assert_eq!(time.encoder_s, 0.5);
        assert_eq!(time.decoder_s, 3.25);
        // 60 s of audio, 0.5 s of encoding on one worker.
        assert_eq!(time.encoder_bound_x_realtime, 120.0);
        assert_eq!(time.decoder_calls_per_audio_s, 2.0);
        assert_eq!(time.decoder_tokens_per_audio_s, 15.0);
        // 4 windows × 10 GFLOP in 0.5 s.
        assert!((time.encoder_gflops - 80.0).abs() < 1e-9);
        assert!((time.encoder_sgemm_pct - 80.0).abs() < 1e-9);
        // (900 × 1 + 300 × 2) MFLOP in 3.25 s.
        assert!((time.decoder_gflops - 1.5 / 3.25).abs() < 1e-9);
        // No rate measured on 1 thread: no share.
        assert!(calibration
            .breakdown(&work, 60.0, 2, 1)
            .decoder_sgemm_pct
            .is_nan());
        // Two workers encode side by side: their summed seconds halve.
        assert_eq!(
            calibration
                .breakdown(&work, 60.0, 2, 1)
                .encoder_bound_x_realtime,
            240.0
        );
    }
}
