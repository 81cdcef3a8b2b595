//! Reading what a `mmt run` child left behind: its summary lines and its
//! Prometheus metrics file.

/// A Prometheus histogram: cumulative bucket counts by upper bound (`+Inf` last).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending by `le`; the last is `f64::INFINITY`.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The `q`-quantile (0..=1) the way Prometheus' `histogram_quantile` estimates
    /// it: find the bucket holding rank `q × count` and interpolate linearly
    /// inside it (the first bucket starts at 0). A rank in the `+Inf` bucket
    /// gives the highest finite bound. `None` without observations; a single
    /// observation is known exactly (the sum).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map_or(self.count, |&(_, c)| c);
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        if total == 1.0 && self.count == 1.0 {
            return Some(self.sum);
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let fraction = (rank - below) / (cumulative - below);
                return Some(lower + (upper - lower) * fraction);
            }
            if upper.is_finite() {
                lower = upper;
            }
            below = cumulative;
        }
        Some(lower)
    }

    /// Mean observation (`sum / count`), exact unlike the quantiles.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// The histogram `name` (unlabelled) in the text exposition `text`.
pub fn histogram(text: &str, name: &str) -> Option<Histogram> {
    let bucket_name = format!("{name}_bucket");
    let mut buckets = Vec::new();
    let mut sum = None;
    let mut count = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((le, value)) = labelled(line, &bucket_name, "le") {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, value));
        } else if let Some(value) = sample(line, &format!("{name}_sum")) {
            sum = Some(value);
        } else if let Some(value) = sample(line, &format!("{name}_count")) {
            count = Some(value);
        }
    }
    if buckets.is_empty() {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Histogram {
        buckets,
        sum: sum.unwrap_or(0.0),
        count: count.unwrap_or(0.0),
    })
}

/// `name{label="x",...} value` as `("x", value)`.
pub fn labelled<'a>(line: &'a str, name: &str, label: &str) -> Option<(&'a str, f64)> {
    let rest = line.strip_prefix(name)?.strip_prefix('{')?;
    let (labels, value) = rest.split_once('}')?;
    let text = labels
        .split(',')
        .find_map(|pair| pair.trim().strip_prefix(label)?.strip_prefix('='))?
        .trim_matches('"');
    Some((text, value.trim().parse().ok()?))
}

fn sample(line: &str, name: &str) -> Option<f64> {
    let rest = line.strip_prefix(name)?;
    let value = rest.strip_prefix(' ')?;
    value.split_whitespace().next()?.parse().ok()
}

/// What `mmt run` prints when it ends (src/run.rs, `print_summary`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub files: u64,
    pub transcribed: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub already_done: u64,
    /// Audio transcribed, as printed (hours with 3 decimals, in seconds).
    pub audio_seconds: f64,
    /// The dataflow's wall time (model loading and process start excluded).
    pub wall_seconds: f64,
    pub realtime: f64,
}

/// Parses `N files: N transcribed, N dead-lettered, N duplicates, N already done`
/// and `H h of audio in S s: Xx realtime`; `None` if either line is missing.
pub fn run_summary(stdout: &str) -> Option<RunSummary> {
    let mut summary = RunSummary::default();
    let mut counts = false;
    let mut speed = false;
    for line in stdout.lines().map(str::trim) {
        if let Some((files, rest)) = line.split_once(" files: ") {
            summary.files = files.trim().parse().ok()?;
            for part in rest.split(", ") {
                let (number, what) = part.split_once(' ')?;
                let number: u64 = number.parse().ok()?;
                match what {
                    "transcribed" => summary.transcribed = number,
                    "dead-lettered" => summary.dead_lettered = number,
                    "duplicates" => summary.duplicates = number,
                    "already done" => summary.already_done = number,
                    _ => {}
                }
            }
            counts = true;
        } else if let Some((hours, rest)) = line.split_once(" h of audio in ") {
            let (wall, rest) = rest.split_once(" s: ")?;
            let realtime = rest.strip_suffix("x realtime")?;
            summary.audio_seconds = hours.trim().parse::<f64>().ok()? * 3600.0;
            summary.wall_seconds = wall.trim().parse().ok()?;
            summary.realtime = realtime.trim().parse().ok()?;
            speed = true;
        }
    }
    (counts && speed).then_some(summary)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP transcribed_audio_seconds_total Seconds of audio transcribed
# TYPE transcribed_audio_seconds_total counter
transcribed_audio_seconds_total 40
# HELP transcription_duration_seconds Wall time to transcribe one job
# TYPE transcription_duration_seconds histogram
transcription_duration_seconds_bucket{le=\"0.5\"} 0
transcription_duration_seconds_bucket{le=\"1\"} 2
transcription_duration_seconds_bucket{le=\"2.5\"} 6
transcription_duration_seconds_bucket{le=\"5\"} 10
transcription_duration_seconds_bucket{le=\"+Inf\"} 10
transcription_duration_seconds_sum 21.5
transcription_duration_seconds_count 10
transcription_queue_depth 0
";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parses_the_histogram() {
        let h = histogram(METRICS, "transcription_duration_seconds").unwrap();
        assert_eq!(h.buckets.len(), 5);
        assert_eq!(h.buckets[4], (f64::INFINITY, 10.0));
        assert!(close(h.mean().unwrap(), 2.15));
        assert!(histogram(METRICS, "missing_seconds").is_none());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = histogram(METRICS, "transcription_duration_seconds").unwrap();
        // Rank 5 of 10 lies in (1, 2.5] which holds ranks 3..=6: 3/4 of the way.
        assert!(close(h.quantile(0.5).unwrap(), 1.0 + 1.5 * 0.75));
        // Rank 9.5 in (2.5, 5] holding 7..=10: 3.5/4 of the way.
        assert!(close(h.quantile(0.95).unwrap(), 2.5 + 2.5 * 3.5 / 4.0));
        // Rank 1 in (0.5, 1]: the empty first bucket is skipped, its bound kept.
        assert!(close(h.quantile(0.1).unwrap(), 0.5 + 0.5 * 0.5));
        assert!(close(h.quantile(1.0).unwrap(), 5.0));
        assert!(h.quantile(1.5).is_none());
    }

    #[test]
    fn quantiles_start_at_zero_and_stop_at_the_last_finite_bound() {
        let h = Histogram {
            buckets: vec![(1.0, 4.0), (2.0, 4.0), (f64::INFINITY, 8.0)],
            sum: 0.0,
            count: 8.0,
        };
        assert!(close(h.quantile(0.25).unwrap(), 0.5));
        // Ranks above 4 are in +Inf: the best estimate is the last finite bound.
        assert!(close(h.quantile(0.95).unwrap(), 2.0));
        let empty = Histogram {
            buckets: vec![(1.0, 0.0), (f64::INFINITY, 0.0)],
            sum: 0.0,
            count: 0.0,
        };
        assert!(empty.quantile(0.5).is_none());
        let single = Histogram {
            buckets: vec![(1.0, 0.0), (2.5, 1.0), (f64::INFINITY, 1.0)],
            sum: 1.176,
            count: 1.0,
        };
        assert_eq!(single.quantile(0.5), Some(1.176));
        assert_eq!(single.quantile(0.95), Some(1.176));
        assert!(empty.mean().is_none());
    }

    #[test]
    fn parses_the_run_summary() {
        let stdout = "5 files: 4 transcribed, 1 dead-lettered, 0 duplicates, 0 already done\n\
                      0.011 h of audio in 3.5 s: 11.5x realtime\n\
                      documents:     /tmp/out/fhir/DocumentReference.ndjson\n";
        let summary = run_summary(stdout).unwrap();
        assert_eq!(summary.files, 5);
        assert_eq!(summary.transcribed, 4);
        assert_eq!(summary.dead_lettered, 1);
        assert!(close(summary.audio_seconds, 39.6));
        assert!(close(summary.wall_seconds, 3.5));
        assert!(close(summary.realtime, 11.5));
        assert!(run_summary("documents: x\n").is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[]), None);
    }
}
