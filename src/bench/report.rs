//! One row per sweep point: medians over its repeats, as CSV and as a table.

use super::child::Measurement;
use super::metrics::median;
use super::model_time::ModelTime;
use super::sweep::Point;

/// Above this share of the machine used by other processes, a point is flagged.
pub const DISTURBED_PCT: f64 = 10.0;

/// A point and the median of its successful runs.
#[derive(Debug, Clone)]
pub struct Row {
    pub point: Point,
    /// Runs that succeeded.
    pub runs: usize,
    /// Why the others failed.
    pub failures: Vec<String>,
    /// Medians over the successful runs; `None` if none succeeded.
    pub median: Option<Measurement>,
}

impl Row {
    pub fn new(point: Point, results: Vec<Result<Measurement, String>>) -> Self {
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let ok: Vec<Measurement> = ok.into_iter().filter_map(Result::ok).collect();
        let failures = failed.into_iter().filter_map(Result::err).collect();
        Self {
            point,
            runs: ok.len(),
            failures,
            median: median_measurement(&ok),
        }
    }

    /// `ok`, or what went wrong.
    pub fn status(&self) -> String {
        match (&self.median, self.failures.first()) {
            (None, None) => "not run".to_owned(),
            (None, Some(why)) => format!("failed: {why}"),
            (Some(m), failure) => {
                let mut status = if m.dead_lettered > 0 {
                    format!("{} dead-lettered", m.dead_lettered)
                } else {
                    "ok".to_owned()
                };
                if m.other_cpu_pct > DISTURBED_PCT {
                    status.push_str(&format!(
                        "; disturbed: other processes used {:.0}% of the machine",
                        m.other_cpu_pct
                    ));
                }
                if let Some(why) = failure {
                    status.push_str(&format!(
                        "; {} of {} runs failed: {why}",
                        self.failures.len(),
                        self.failures.len() + self.runs
                    ));
                }
                status
            }
        }
    }
}

/// Field by field median (counts from the first run, dead letters the most seen).
fn median_measurement(runs: &[Measurement]) -> Option<Measurement> {
    let first = runs.first()?;
    let of = |get: &dyn Fn(&Measurement) -> f64| {
        median(&runs.iter().map(get).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let opt = |get: &dyn Fn(&Measurement) -> Option<f64>| {
        median(&runs.iter().filter_map(get).collect::<Vec<_>>())
    };
    // WER can differ between runs (temperature fallback samples): the run
    // with the median WER, so that its counts stay consistent.
    let mut by_wer: Vec<&Measurement> = runs.iter().filter(|m| m.wer.is_some()).collect();
    by_wer.sort_by(|a, b| {
        let rate = |m: &Measurement| m.wer.map_or(0.0, |w| w.percent());
        rate(a).total_cmp(&rate(b))
    });
    Some(Measurement {
        files: first.files,
        completed: first.completed,
        dead_lettered: runs.iter().map(|m| m.dead_lettered).max().unwrap_or(0),
        audio_s: of(&|m| m.audio_s),
        wall_s: of(&|m| m.wall_s),
        process_s: of(&|m| m.process_s),
        x_realtime: of(&|m| m.x_realtime),
        x_realtime_process: of(&|m| m.x_realtime_process),
        latency_p50_s: opt(&|m| m.latency_p50_s),
        latency_p95_s: opt(&|m| m.latency_p95_s),
        latency_mean_s: opt(&|m| m.latency_mean_s),
        batches: of(&|m| m.batches as f64).round() as u64,
        peak_rss_mb: of(&|m| m.peak_rss_mb),
        cpu_s: of(&|m| m.cpu_s),
        cpu_util_pct: of(&|m| m.cpu_util_pct),
        other_cpu_pct: of(&|m| m.other_cpu_pct),
        wer: by_wer.get(by_wer.len() / 2).and_then(|m| m.wer),
        medwer: by_wer.get(by_wer.len() / 2).and_then(|m| m.medwer),
        model: ModelTime {
            encoder_s: of(&|m| m.model.encoder_s),
            decoder_s: of(&|m| m.model.decoder_s),
            encoder_bound_x_realtime: of(&|m| m.model.encoder_bound_x_realtime),
            decoder_calls_per_audio_s: of(&|m| m.model.decoder_calls_per_audio_s),
            decoder_tokens_per_audio_s: of(&|m| m.model.decoder_tokens_per_audio_s),
            encoder_gflops: of(&|m| m.model.encoder_gflops),
            decoder_gflops: of(&|m| m.model.decoder_gflops),
            encoder_sgemm_pct: of(&|m| m.model.encoder_sgemm_pct),
            decoder_sgemm_pct: of(&|m| m.model.decoder_sgemm_pct),
        },
    })
}

/// The CSV columns, in order.
pub const COLUMNS: &[&str] = &[
    "point",
    "precision",
    "packing",
    "decoding",
    "workers",
    "threads",
    "batch_size",
    "max_wait_ms",
    "runs",
    "files",
    "completed",
    "dead_lettered",
    "audio_s",
    "wall_s",
    "process_s",
    "x_realtime",
    "x_realtime_process",
    "latency_p50_s",
    "latency_p95_s",
    "latency_mean_s",
    "batches",
    "peak_rss_mb",
    "cpu_s",
    "cpu_util_pct",
    "other_cpu_pct",
    "wer_pct",
    "wer_missing",
    "medwer_pct",
    "medwer_medical_pct",
    "encoder_s",
    "decoder_s",
    "encoder_bound_x_realtime",
    "decoder_calls_per_audio_s",
    "decoder_tokens_per_audio_s",
    "encoder_gflops",
    "decoder_gflops",
    "encoder_sgemm_pct",
    "decoder_sgemm_pct",
    "status",
];

fn number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        String::new()
    }
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(String::new, |v| number(v, decimals))
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// One CSV line (no newline) for `row`, numbered `index` from 1.
pub fn csv_row(index: usize, row: &Row) -> String {
    let p = &row.point;
    let m = row.median.as_ref();
    let get = |f: &dyn Fn(&Measurement) -> f64, decimals: usize| {
        m.map_or_else(String::new, |m| number(f(m), decimals))
    };
    let fields = vec![
        index.to_string(),
        p.precision.name().to_owned(),
        if p.packing { "on" } else { "off" }.to_owned(),
        p.decoding.name().to_owned(),
        p.workers.to_string(),
        p.threads.to_string(),
        p.batch_size.to_string(),
        p.max_wait_ms.map_or_else(String::new, |ms| ms.to_string()),
        row.runs.to_string(),
        m.map_or_else(String::new, |m| m.files.to_string()),
        m.map_or_else(String::new, |m| m.completed.to_string()),
        m.map_or_else(String::new, |m| m.dead_lettered.to_string()),
        get(&|m| m.audio_s, 1),
        get(&|m| m.wall_s, 1),
        get(&|m| m.process_s, 2),
        get(&|m| m.x_realtime, 1),
        get(&|m| m.x_realtime_process, 2),
        optional(m.and_then(|m| m.latency_p50_s), 3),
        optional(m.and_then(|m| m.latency_p95_s), 3),
        optional(m.and_then(|m| m.latency_mean_s), 3),
        m.map_or_else(String::new, |m| m.batches.to_string()),
        get(&|m| m.peak_rss_mb, 1),
        get(&|m| m.cpu_s, 2),
        get(&|m| m.cpu_util_pct, 1),
        get(&|m| m.other_cpu_pct, 1),
        optional(m.and_then(|m| m.wer.map(|w| w.percent())), 2),
        m.and_then(|m| m.wer)
            .map_or_else(String::new, |w| w.missing.to_string()),
        optional(m.and_then(|m| m.medwer?.percent()), 2),
        optional(m.and_then(|m| m.medwer?.medical_percent()), 2),
        get(&|m| m.model.encoder_s, 2),
        get(&|m| m.model.decoder_s, 2),
        get(&|m| m.model.encoder_bound_x_realtime, 1),
        get(&|m| m.model.decoder_calls_per_audio_s, 2),
        get(&|m| m.model.decoder_tokens_per_audio_s, 2),
        get(&|m| m.model.encoder_gflops, 1),
        get(&|m| m.model.decoder_gflops, 1),
        get(&|m| m.model.encoder_sgemm_pct, 1),
        get(&|m| m.model.decoder_sgemm_pct, 1),
        row.status(),
    ];
    fields
        .iter()
        .map(|f| field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// The whole file: `#` comment lines, the header, one line per row.
pub fn csv(comments: &[String], rows: &[Row]) -> String {
    let mut text = String::new();
    for comment in comments {
        for line in comment.lines() {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&COLUMNS.join(","));
    text.push('\n');
    for (i, row) in rows.iter().enumerate() {
        text.push_str(&csv_row(i + 1, row));
        text.push('\n');
    }
    text
}

/// A fixed-width table for the terminal.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "#",
        "point",
        "x-RT",
        "x-RT proc",
        "p50 s",
        "p95 s",
        "RSS MB",
        "CPU %",
        "others %",
        "WER %",
        "medWER %",
        "enc s",
        "dec s",
        "enc-bound x-RT",
        "dec calls/audio s",
        "enc % sgemm",
        "dec % sgemm",
        "status",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for (i, row) in rows.iter().enumerate() {
        let m = row.median.as_ref();
        let get = |f: &dyn Fn(&Measurement) -> f64, decimals: usize| {
            m.map_or_else(|| "-".to_owned(), |m| number(f(m), decimals))
        };
        let opt = |v: Option<f64>, decimals: usize| {
            v.map_or_else(|| "-".to_owned(), |v| number(v, decimals))
        };
        lines.push(vec![
            (i + 1).to_string(),
            row.point.label(),
            get(&|m| m.x_realtime, 1),
            get(&|m| m.x_realtime_process, 1),
            opt(m.and_then(|m| m.latency_p50_s), 2),
            opt(m.and_then(|m| m.latency_p95_s), 2),
            get(&|m| m.peak_rss_mb, 0),
            get(&|m| m.cpu_util_pct, 0),
            get(&|m| m.other_cpu_pct, 0),
            opt(m.and_then(|m| m.wer.map(|w| w.percent())), 2),
            opt(m.and_then(|m| m.medwer?.percent()), 2),
            get(&|m| m.model.encoder_s, 1),
            get(&|m| m.model.decoder_s, 1),
            get(&|m| m.model.encoder_bound_x_realtime, 1),
            get(&|m| m.model.decoder_calls_per_audio_s, 1),
            get(&|m| m.model.encoder_sgemm_pct, 0),
            get(&|m| m.model.decoder_sgemm_pct, 0),
            row.status(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &width))| {
                // Text left, numbers right; the last column unpadded.
                if c == 1 {
                    format!("{cell:<width$}")
                } else if c + 1 == line.len() {
                    cell.clone()
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The row with the highest x-realtime (as printed, to 0.1); ties go to the
/// lower p95 latency, then to the lower peak memory.
pub fn best(rows: &[Row]) -> Option<&Row> {
    let key = |r: &Row| {
        let m = r.median.as_ref();
        let x = m.map_or(0.0, |m| (m.x_realtime * 10.0).round());
        let p95 = m.and_then(|m| m.latency_p95_s).unwrap_or(f64::INFINITY);
        let rss = m.map_or(f64::INFINITY, |m| m.peak_rss_mb);
        (x, -p95, -rss)
    };
    rows.iter()
        .filter(|r| r.median.as_ref().is_some_and(|m| m.x_realtime.is_finite()))
        .max_by(|a, b| {
            let (a, b) = (key(a), key(b));
            a.0.total_cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.total_cmp(&b.2))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::medwer::MedwerCounts;
    use crate::bench::sweep::{Decoding, Precision};
    use crate::bench::wer::ErrorCounts;

    fn point(batch_size: usize) -> Point {
        Point {
            precision: Precision::Fp32,
            packing: false,
            decoding: Decoding::Full,
            workers: 2,
            threads: 1,
            max_wait_ms: None,
            batch_size,
        }
    }

    fn measurement(x_realtime: f64, rss: f64) -> Measurement {
        Measurement {
            files: 5,
            completed: 5,
            audio_s: 39.6,
            wall_s: 3.5,
            process_s: 4.25,
            x_realtime,
            x_realtime_process: 9.32,
            latency_p50_s: Some(1.875),
            latency_p95_s: None,
            latency_mean_s: Some(2.15),
            batches: 2,
            peak_rss_mb: rss,
            cpu_s: 6.0,
            cpu_util_pct: 70.6,
            other_cpu_pct: 1.25,
            wer: Some(ErrorCounts {
                edits: 3,
                reference_words: 40,
                missing: 0,
            }),
            medwer: Some(MedwerCounts {
                edits: 2,
                reference_words: 40,
                medical_edits: 1,
                medical_reference_words: 4,
            }),
            model: ModelTime {
                encoder_s: 0.5,
                decoder_s: 2.75,
                encoder_bound_x_realtime: 158.4,
                decoder_calls_per_audio_s: 10.25,
                decoder_tokens_per_audio_s: 20.5,
                encoder_gflops: 60.0,
                decoder_gflops: 12.5,
                encoder_sgemm_pct: 66.7,
                decoder_sgemm_pct: 13.9,
            },
            ..Measurement::default()
        }
    }

    #[test]
    fn formats_a_csv_row() {
        let row = Row::new(point(8), vec![Ok(measurement(11.5, 300.04))]);
        assert_eq!(
            csv_row(3, &row),
            "3,fp32,off,full,2,1,8,,1,5,5,0,39.6,3.5,4.25,11.5,9.32,1.875,,2.150,2,300.0,6.00,70.6,1.2,7.50,0,\
             5.00,25.00,0.50,2.75,158.4,10.25,20.50,60.0,12.5,66.7,13.9,ok"
        );
        assert_eq!(csv_row(3, &row).split(',').count(), COLUMNS.len());
    }

    #[test]
    fn failures_are_quoted_and_leave_the_numbers_empty() {
        let row = Row::new(point(1), vec![Err("mmt run failed: a, \"b\"".to_owned())]);
        let line = csv_row(1, &row);
        assert!(line.starts_with("1,fp32,off,full,2,1,1,,0,,,,"), "{line}");
        assert!(
            line.ends_with(",\"failed: mmt run failed: a, \"\"b\"\"\""),
            "{line}"
        );
    }

    #[test]
    fn repeats_report_medians() {
        let row = Row::new(
            point(4),
            vec![
                Ok(measurement(10.0, 310.0)),
                Err("timed out".to_owned()),
                Ok(measurement(12.0, 290.0)),
                Ok(measurement(11.0, 300.0)),
            ],
        );
        let m = row.median.as_ref().unwrap();
        assert_eq!(row.runs, 3);
        assert_eq!(m.x_realtime, 11.0);
        assert_eq!(m.peak_rss_mb, 300.0);
        assert_eq!(m.latency_p95_s, None);
        assert_eq!(row.status(), "ok; 1 of 4 runs failed: timed out");
        let mut busy = measurement(5.0, 300.0);
        busy.other_cpu_pct = 40.0;
        let row = Row::new(point(4), vec![Ok(busy)]);
        assert_eq!(
            row.status(),
            "ok; disturbed: other processes used 40% of the machine"
        );
    }

    #[test]
    fn csv_has_comments_header_and_rows_and_best_is_the_fastest() {
        let rows = vec![
            Row::new(point(1), vec![Ok(measurement(9.0, 250.0))]),
            Row::new(point(8), vec![Ok(measurement(13.0, 300.0))]),
            Row::new(point(16), vec![Err("x".to_owned())]),
        ];
        let text = csv(&["input: samples\nsecond line".to_owned()], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# input: samples");
        assert_eq!(lines[1], "# second line");
        assert_eq!(lines[2], COLUMNS.join(","));
        assert_eq!(lines.len(), 6);
        assert_eq!(best(&rows).unwrap().point.batch_size, 8);
        // A tie on x-realtime goes to the lower p95, then the lower memory.
        let mut slow_tail = measurement(13.0, 200.0);
        slow_tail.latency_p95_s = Some(9.0);
        let mut quick_tail = measurement(13.04, 400.0);
        quick_tail.latency_p95_s = Some(2.0);
        let tied = vec![
            Row::new(point(4), vec![Ok(slow_tail)]),
            Row::new(point(16), vec![Ok(quick_tail)]),
            Row::new(point(2), vec![Ok(measurement(12.9, 100.0))]),
        ];
        assert_eq!(best(&tied).unwrap().point.batch_size, 16);
        let table = table(&rows);
        assert!(table.lines().nth(2).unwrap().contains("b8 w2x1"));
        assert!(table.contains("failed: x"));
    }
}
