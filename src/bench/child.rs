//! One sweep point: `mmt run` as a child process, measured from outside.
//!
//! * Peak RSS: `VmHWM` (the kernel's own high-water mark of the resident set)
//!   from `/proc/<pid>/status`, read every 50 ms while the child runs; the
//!   largest reading is kept. Only growth in the child's last 50 ms can be
//!   missed: std has no `wait4`/`getrusage`, and the crates that wrap them are
//!   not dependencies.
//! * CPU time: exact. The kernel adds a reaped child's user and system time to
//!   the parent's `cutime`/`cstime` (`/proc/self/stat`); the difference across
//!   one child's run is that child's CPU time, all its threads included.

use super::input::InputSet;
use super::medwer::{MedwerCounts, MedwerScorer};
use super::metrics::{self, Histogram};
use super::model_time::{self, Calibration, ModelTime};
use super::sweep::{Point, Precision};
use super::wer::{self, ErrorCounts};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable the max-wait knob is passed in (`mmt run --max-batch-wait-ms`).
pub const MAX_WAIT_ENV: &str = "MMT_MAX_BATCH_WAIT_MS";
/// The histogram the latency columns come from (core/src/telemetry.rs).
pub const LATENCY_HISTOGRAM: &str = "transcription_duration_seconds";

/// What one run of one point measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    pub files: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    /// Audio transcribed (the input set's total when nothing was dead-lettered).
    pub audio_s: f64,
    /// The dataflow's wall time, as `mmt run` reports it.
    pub wall_s: f64,
    /// Spawn to exit: process start and model loading included.
    pub process_s: f64,
    /// `mmt run`'s own x-realtime (audio s / dataflow wall s).
    pub x_realtime: f64,
    /// Audio s / process s.
    pub x_realtime_process: f64,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub latency_mean_s: Option<f64>,
    pub batches: u64,
    pub peak_rss_mb: f64,
    pub cpu_s: f64,
    /// CPU s / process s / cores, in percent.
    pub cpu_util_pct: f64,
    /// CPU time of every other process during the run, in percent of the
    /// machine (a quiet machine shows a few percent at most).
    pub other_cpu_pct: f64,
    pub wer: Option<ErrorCounts>,
    /// WER and medical-term WER under medwer's protocol.
    pub medwer: Option<MedwerCounts>,
    /// Seconds inside the encoder and the decoder, and what they reached.
    pub model: ModelTime,
}

/// What every run shares.
#[derive(Debug)]
pub struct Runner<'a> {
    pub exe: &'a Path,
    pub input: &'a InputSet,
    pub int8_model: &'a Path,
    pub calibration: &'a Calibration,
    /// `None` without the dev virtualenv's medwer, or without references.
    pub medwer: Option<&'a MedwerScorer>,
    pub cores: usize,
    pub timeout: Duration,
    /// `sysconf(_SC_CLK_TCK)`: units of `/proc/*/stat` times.
    pub clock_ticks: f64,
}

impl Runner<'_> {
    /// Runs `point` with its output under `run_dir` (created fresh).
    pub fn run(&self, point: &Point, run_dir: &Path) -> Result<Measurement, String> {
        let io = |what: &str, err: std::io::Error| format!("{what}: {err}");
        if run_dir.exists() {
            std::fs::remove_dir_all(run_dir).map_err(|e| io("clearing the run folder", e))?;
        }
        std::fs::create_dir_all(run_dir).map_err(|e| io("creating the run folder", e))?;
        let out = run_dir.join("out");
        let metrics_file = run_dir.join("metrics.prom");
        let stdout_path = run_dir.join("stdout.txt");
        let stderr_path = run_dir.join("stderr.txt");
        let mut command = Command::new(self.exe);
        command
            .args(["run", "--no-progress", "--input"])
            .arg(&self.input.dir)
            .arg("--out")
            .arg(&out)
            .arg("--metrics-file")
            .arg(&metrics_file)
            .args(point.run_flags())
            // Every run needs a fresh job store, or it finds its jobs done.
            .env_remove("DATABASE_URL")
            .env_remove("AUDIT_LOG_FILE")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).map_err(|e| io("stdout file", e))?)
            .stderr(File::create(&stderr_path).map_err(|e| io("stderr file", e))?);
        match point.max_wait_ms {
            Some(ms) => command.env(MAX_WAIT_ENV, ms.to_string()),
            None => command.env_remove(MAX_WAIT_ENV),
        };
        if point.precision == Precision::Int8 {
            command.env("MMT_MODEL_DIR", self.int8_model);
        }

        let cpu_before = children_cpu_ticks();
        let busy_before = machine_busy_ticks();
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| io("cannot start mmt run", e))?;
        let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
        let mut peak_kb = 0u64;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(err) => return Err(io("waiting for mmt run", err)),
            }
            if let Some(kb) = high_water_kb(&status_file) {
                peak_kb = peak_kb.max(kb);
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {} s (--timeout)",
                    self.timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let process_s = started.elapsed().as_secs_f64();
        let busy_s = match (busy_before, machine_busy_ticks()) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64 / self.clock_ticks,
            _ => f64::NAN,
        };
        let cpu_s = match (cpu_before, children_cpu_ticks()) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64 / self.clock_ticks,
            _ => f64::NAN,
        };
        let percent_of_machine =
            |seconds: f64| 100.0 * seconds / process_s.max(1e-9) / self.cores.max(1) as f64;
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        // Exit status 2: the run finished but dead-lettered some jobs.
        if !(status.success() || status.code() == Some(2)) {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!("mmt run failed ({status}): {}", tail(&stderr, 300)));
        }
        let summary = metrics::run_summary(&stdout).ok_or_else(|| {
            format!(
                "cannot read the summary of mmt run from its output: {}",
                tail(&stdout, 300)
            )
        })?;
        let text = std::fs::read_to_string(&metrics_file).unwrap_or_default();
        let histogram = metrics::histogram(&text, LATENCY_HISTOGRAM);
        let quantile = |q: f64| histogram.as_ref().and_then(|h: &Histogram| h.quantile(q));
        let audio_s = if summary.dead_lettered == 0 {
            self.input.audio_seconds()
        } else {
            summary.audio_seconds
        };
        let transcripts = wer::transcripts(&out);
        let wer = self.input.score(&transcripts);
        let medwer = self
            .medwer
            .map(|scorer| scorer.score(self.input.pairs(&transcripts)))
            .transpose()?;
        let model = model_time::work_in_metrics(&text).map_or_else(ModelTime::default, |work| {
            self.calibration
                .breakdown(&work, audio_s, point.workers, point.threads)
        });
        Ok(Measurement {
            files: summary.files,
            completed: summary.transcribed,
            dead_lettered: summary.dead_lettered,
            audio_s,
            wall_s: summary.wall_seconds,
            process_s,
            x_realtime: summary.realtime,
            x_realtime_process: audio_s / process_s.max(1e-9),
            latency_p50_s: quantile(0.5),
            latency_p95_s: quantile(0.95),
            latency_mean_s: histogram.as_ref().and_then(Histogram::mean),
            batches: histogram.as_ref().map_or(0, |h| h.count as u64),
            peak_rss_mb: peak_kb as f64 / 1024.0,
            cpu_s,
            cpu_util_pct: percent_of_machine(cpu_s),
            other_cpu_pct: percent_of_machine((busy_s - cpu_s).max(0.0)),
            wer,
            medwer,
            model,
        })
    }
}

/// `VmHWM` of a live process, in kB.
fn high_water_kb(status_file: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// User + system time of this process's reaped children (`cutime + cstime`), in clock ticks.
fn children_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_children_ticks(&stat)
}

/// `cutime + cstime` (fields 16 and 17) of a `/proc/<pid>/stat` line.
fn parse_children_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// Busy time of all CPUs (`/proc/stat`: user, nice, system, irq, softirq,
/// steal), in clock ticks.
fn machine_busy_ticks() -> Option<u64> {
    parse_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (100 on every Linux this runs on).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// The last `chars` characters of `text`, on one line.
fn tail(text: &str, chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let skip = flat.chars().count().saturating_sub(chars);
    flat.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_children_cpu_time_from_stat() {
        let stat = "4242 (mmt (bench) x) S 1 4242 4242 0 -1 4194304 100 5 0 0 \
                    12 3 700 45 20 0 1 0 100 1000 200";
        assert_eq!(parse_children_ticks(stat), Some(745));
        assert!(parse_children_ticks("garbage").is_none());
        assert!(children_cpu_ticks().is_some());
    }

    #[test]
    fn reads_the_machine_busy_time() {
        let stat = "cpu  100 5 50 9000 7 3 2 1 0 0\ncpu0 50 2 25 4500 3 1 1 0 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert!(parse_busy_ticks("intr 1 2\n").is_none());
        assert!(machine_busy_ticks().is_some());
    }

    #[test]
    fn reads_the_high_water_mark_of_this_process() {
        let kb = high_water_kb(Path::new("/proc/self/status")).unwrap();
        assert!(kb > 0);
        assert!(high_water_kb(Path::new("/proc/0/none")).is_none());
    }

    #[test]
    fn tails_are_short_and_flat() {
        assert_eq!(tail("a\nb  c", 10), "a b c");
        assert_eq!(tail("abcdef", 3), "def");
    }
}
