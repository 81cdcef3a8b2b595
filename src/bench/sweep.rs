//! The sweep: every combination of the knobs given on the command line.

use std::fmt;
use std::str::FromStr;

/// ONNX Runtime intra-op threads per worker: a number, or `auto` (cores / workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Auto,
    Fixed(usize),
}

impl Threads {
    /// The thread count for `workers` timely workers on `cores` cores.
    pub fn resolve(self, workers: usize, cores: usize) -> usize {
        match self {
            Self::Auto => (cores / workers.max(1)).max(1),
            Self::Fixed(n) => n.max(1),
        }
    }
}

impl FromStr for Threads {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            number => match number.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!(
                    "{number:?} is neither `auto` nor a thread count of at least 1"
                )),
                Ok(n) => Ok(Self::Fixed(n)),
            },
        }
    }
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Model weights: the exported fp32 model, or an int8-quantised export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Precision {
    /// The model `mmt run` uses by default (MMT_MODEL_DIR).
    Fp32,
    /// The int8 export (`--int8-model`, default models/tiny.en-int8).
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }
}

/// `off` or `on` (`mmt run --packing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Switch {
    Off,
    On,
}

/// How windows are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Decoding {
    /// Whisper's long-form decoding, `mmt run`'s default: timed segments,
    /// temperature fallback, each recording's chunks prompted with the text
    /// before them.
    Full,
    /// `--independent-chunks --no-fallback --without-timestamps`: each window
    /// decoded once, without timestamps, as faster-whisper's batched pipeline
    /// decodes. Not combined with packing, which needs timestamps.
    Fast,
}

impl Decoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Fast => "fast",
        }
    }

    /// The `mmt run` flags that select this decoding.
    pub fn run_flags(self) -> &'static [&'static str] {
        match self {
            Self::Full => &[],
            Self::Fast => &[
                "--independent-chunks",
                "--no-fallback",
                "--without-timestamps",
            ],
        }
    }
}

/// One configuration of `mmt run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub precision: Precision,
    pub packing: bool,
    pub decoding: Decoding,
    pub workers: usize,
    pub threads: usize,
    /// `mmt run --max-batch-wait-ms`, passed as MMT_MAX_BATCH_WAIT_MS.
    pub max_wait_ms: Option<u64>,
    pub batch_size: usize,
}

impl Point {
    /// A short name, e.g. `b8 w2x1 fp32`.
    pub fn label(&self) -> String {
        format!("b{} {}", self.batch_size, self.series())
    }

    /// Everything but the batch size: the series a point belongs to in the plot.
    pub fn series(&self) -> String {
        let mut name = format!("w{}x{}", self.workers, self.threads);
        if self.precision != Precision::Fp32 {
            name.push(' ');
            name.push_str(self.precision.name());
        }
        if self.packing {
            name.push_str(" packed");
        }
        if self.decoding == Decoding::Fast {
            name.push_str(" fast");
        }
        if let Some(ms) = self.max_wait_ms {
            name.push_str(&format!(" wait{ms}ms"));
        }
        name
    }

    /// The series in words, for a legend: `2 workers x 1 thread, int8`.
    pub fn series_title(&self) -> String {
        let plural = |n: usize, what: &str| {
            if n == 1 {
                format!("1 {what}")
            } else {
                format!("{n} {what}s")
            }
        };
        let mut title = format!(
            "{} x {}",
            plural(self.workers, "worker"),
            plural(self.threads, "thread")
        );
        if self.precision != Precision::Fp32 {
            title.push_str(", ");
            title.push_str(self.precision.name());
        }
        if self.packing {
            title.push_str(", packing");
        }
        if self.decoding == Decoding::Fast {
            title.push_str(", fast decoding");
        }
        if let Some(ms) = self.max_wait_ms {
            title.push_str(&format!(", wait {ms} ms"));
        }
        title
    }

    /// The `mmt run` flags of this point (input, output and metrics file aside).
    pub fn run_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--batch-size".to_owned(),
            self.batch_size.to_string(),
            "--workers".to_owned(),
            self.workers.to_string(),
            "--threads".to_owned(),
            self.threads.to_string(),
        ];
        flags.push(
            if self.packing {
                "--packing"
            } else {
                "--no-packing"
            }
            .to_owned(),
        );
        flags.extend(
            self.decoding
                .run_flags()
                .iter()
                .map(|&flag| flag.to_owned()),
        );
        flags
    }
}

/// The values of every knob, each as given on the command line.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub batch_sizes: Vec<usize>,
    pub max_wait_ms: Vec<u64>,
    pub workers: Vec<usize>,
    pub threads: Vec<Threads>,
    pub precisions: Vec<Precision>,
    pub packing: Vec<Switch>,
    pub decodings: Vec<Decoding>,
}

/// The cartesian product of `knobs`, without repeats (after `auto` threads are
/// resolved, two specs can name the same point). Batch size varies fastest, so
/// that the rows of one series are adjacent.
pub fn expand(knobs: &Knobs, cores: usize) -> Result<Vec<Point>, String> {
    let nonzero = |name: &str, values: &[usize]| {
        if values.contains(&0) {
            Err(format!("--{name} values must be at least 1"))
        } else if values.is_empty() {
            Err(format!("--{name} needs at least one value"))
        } else {
            Ok(())
        }
    };
    nonzero("batch-size", &knobs.batch_sizes)?;
    nonzero("workers", &knobs.workers)?;
    if knobs.threads.is_empty()
        || knobs.precisions.is_empty()
        || knobs.packing.is_empty()
        || knobs.decodings.is_empty()
    {
        return Err(
            "--threads, --precision, --packing and --decoding need at least one value".into(),
        );
    }
    let waits: Vec<Option<u64>> = if knobs.max_wait_ms.is_empty() {
        vec![None]
    } else {
        knobs.max_wait_ms.iter().copied().map(Some).collect()
    };
    // Packing splits a window's text by timestamps, which fast decoding drops.
    let combinations: Vec<(Switch, Decoding)> = knobs
        .packing
        .iter()
        .flat_map(|&packing| {
            knobs
                .decodings
                .iter()
                .map(move |&decoding| (packing, decoding))
        })
        .filter(|&(packing, decoding)| !(packing == Switch::On && decoding == Decoding::Fast))
        .collect();
    if combinations.is_empty() {
        return Err("--packing on needs --decoding full (packing splits by timestamps)".into());
    }
    let mut points: Vec<Point> = Vec::new();
    for &precision in &knobs.precisions {
        for &(packing, decoding) in &combinations {
            for &workers in &knobs.workers {
                for &threads in &knobs.threads {
                    for &max_wait_ms in &waits {
                        for &batch_size in &knobs.batch_sizes {
                            let point = Point {
                                precision,
                                packing: packing == Switch::On,
                                decoding,
                                workers,
                                threads: threads.resolve(workers, cores),
                                max_wait_ms,
                                batch_size,
                            };
                            if !points.contains(&point) {
                                points.push(point);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(points)
}

/// The order the points run in, repeat by repeat: forwards, then backwards,
/// and so on, so that no point always runs first (warm caches) or last (a
/// machine that has grown busy).
pub fn run_order(points: usize, repeats: usize) -> Vec<(usize, usize)> {
    (0..repeats)
        .flat_map(|repeat| {
            let forward: Vec<usize> = (0..points).collect();
            let order: Vec<usize> = if repeat % 2 == 0 {
                forward
            } else {
                forward.into_iter().rev().collect()
            };
            order.into_iter().map(move |point| (repeat, point))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs {
            batch_sizes: vec![1, 8],
            max_wait_ms: Vec::new(),
            workers: vec![1, 2],
            threads: vec![Threads::Auto],
            precisions: vec![Precision::Fp32],
            packing: vec![Switch::Off],
            decodings: vec![Decoding::Full],
        }
    }

    #[test]
    fn expands_the_cartesian_product_batch_size_fastest() {
        let points = expand(&knobs(), 4).unwrap();
        let labels: Vec<String> = points.iter().map(Point::label).collect();
        assert_eq!(labels, ["b1 w1x4", "b8 w1x4", "b1 w2x2", "b8 w2x2"]);
        assert!(points.iter().all(|p| p.max_wait_ms.is_none()));
    }

    #[test]
    fn every_knob_multiplies_and_repeats_collapse() {
        let mut k = knobs();
        k.threads = vec![Threads::Auto, Threads::Fixed(1), Threads::Fixed(2)];
        k.precisions = vec![Precision::Fp32, Precision::Int8];
        k.packing = vec![Switch::Off, Switch::On];
        k.max_wait_ms = vec![0, 20];
        // On 2 cores `auto` is 2 threads for 1 worker and 1 for 2 workers,
        // so it repeats a fixed value: 2 workers x 2 thread values.
        let points = expand(&k, 2).unwrap();
        assert_eq!(points.len(), 2 * 2 * 2 * 2 * 2 * 2);
        let labels: Vec<String> = points.iter().map(Point::label).collect();
        assert!(labels.contains(&"b8 w2x1 int8 packed wait20ms".to_owned()));
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len());
    }

    #[test]
    fn fast_decoding_is_swept_but_never_packed() {
        let mut k = knobs();
        k.packing = vec![Switch::Off, Switch::On];
        k.decodings = vec![Decoding::Full, Decoding::Fast];
        let points = expand(&k, 2).unwrap();
        // (off, full), (on, full), (off, fast): 3 of the 4 pairs, x 2 x 2.
        assert_eq!(points.len(), 3 * 2 * 2);
        assert!(!points
            .iter()
            .any(|p| p.packing && p.decoding == Decoding::Fast));
        let fast = points
            .iter()
            .find(|p| p.decoding == Decoding::Fast)
            .unwrap();
        assert_eq!(fast.label(), "b1 w1x2 fast");
        assert!(fast
            .run_flags()
            .join(" ")
            .ends_with("--independent-chunks --no-fallback --without-timestamps"));
        k.packing = vec![Switch::On];
        k.decodings = vec![Decoding::Fast];
        assert!(expand(&k, 2).unwrap_err().contains("--decoding full"));
    }

    #[test]
    fn zero_or_missing_values_are_refused() {
        let mut k = knobs();
        k.batch_sizes = vec![0];
        assert!(expand(&k, 2).unwrap_err().contains("batch-size"));
        let mut k = knobs();
        k.workers.clear();
        assert!(expand(&k, 2).is_err());
        assert!("0".parse::<Threads>().is_err());
        assert!("x".parse::<Threads>().is_err());
        assert_eq!("auto".parse::<Threads>(), Ok(Threads::Auto));
        assert_eq!("3".parse::<Threads>(), Ok(Threads::Fixed(3)));
    }

    #[test]
    fn run_flags_name_the_knobs() {
        let point = Point {
            precision: Precision::Fp32,
            packing: true,
            decoding: Decoding::Full,
            workers: 2,
            threads: 1,
            max_wait_ms: Some(5),
            batch_size: 4,
        };
        assert_eq!(
            point.run_flags().join(" "),
            "--batch-size 4 --workers 2 --threads 1 --packing"
        );
        let unpacked = Point {
            packing: false,
            ..point.clone()
        };
        assert!(unpacked.run_flags().contains(&"--no-packing".to_owned()));
        assert_eq!(
            point.series_title(),
            "2 workers x 1 thread, packing, wait 5 ms"
        );
    }

    #[test]
    fn repeats_alternate_the_order() {
        assert_eq!(
            run_order(3, 2),
            [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
        );
        assert_eq!(run_order(2, 1), [(0, 0), (0, 1)]);
    }
}
