//! `mmt bench`: sweeps `mmt run` over its throughput knobs on one audio set.
//!
//! Every point of the sweep (one combination of the knobs) runs the whole
//! pipeline as a child process of this binary, on a fresh output folder, so
//! that peak memory and CPU time are the point's own. See `mmt bench --help`
//! and README.md, "Benchmarks".

mod child;
mod input;
mod medwer;
mod metrics;
mod model_time;
mod plot;
mod report;
mod sweep;
mod wer;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sweep::{Decoding, Knobs, Precision, Switch, Threads};

const AFTER_HELP: &str = "\
THE SWEEP
  Every list flag takes comma-separated values; the sweep is their cartesian
  product (repeated points collapse, e.g. `--threads auto,1` with 2 workers on
  2 cores). Each point runs, as a child process of this binary:

    mmt run --no-progress --input DIR --out <fresh folder> --metrics-file <file>
            --batch-size B --workers W --threads T --packing|--no-packing
            [--independent-chunks --no-fallback --without-timestamps]

  with MMT_MODEL_DIR set to --int8-model for int8 points (skipped with a
  message when that folder lacks a file of an exported model) and
  MMT_MAX_BATCH_WAIT_MS (`mmt run --max-batch-wait-ms`) for --max-wait-ms.
  DATABASE_URL and AUDIT_LOG_FILE are
  removed from the child's environment (every run needs a fresh job store);
  everything else (MMT_MODEL_DIR, ORT_DYLIB_PATH, ...) is inherited.
  With --repeats N every point runs N times, the order reversing on each pass,
  and the medians are reported.

WHAT IS MEASURED (per point; columns of sweep.csv)
  x_realtime          audio seconds / wall seconds of the dataflow, as `mmt run`
                      prints it (model loading and process start excluded)
  x_realtime_process  audio seconds / seconds from spawn to exit
  latency_p50_s/_p95_s  quantiles of the child's transcription_duration_seconds
                      histogram: the wall time of ONE MODEL CALL on a batch of
                      up to --batch-size speech chunks (each <= 30 s), linearly
                      interpolated inside its buckets (..., 0.5, 1, 2.5, 5, 10,
                      30 s), so only as fine as a bucket; latency_mean_s (sum /
                      count) is exact
  peak_rss_mb         the child's VmHWM (/proc/<pid>/status, polled every 50 ms)
  cpu_util_pct        the child's user + system CPU seconds (exact, from this
                      process's cutime + cstime) / process seconds / cores
  other_cpu_pct       CPU every other process used meanwhile (/proc/stat busy
                      time minus the child's), in % of the machine: above 10%
                      the status says `disturbed` (the point shared the machine)
  wer_pct             corpus word error rate of the FHIR documents the run wrote
                      against manifest.jsonl (in the input folder, or beside the
                      input file), normalised like benches/wer.py
  medwer_pct, medwer_medical_pct
                      WER and medical-term WER under the medwer package's
                      protocol (benches/medwer_score.py; needs the dev
                      virtualenv of `make setup-dev`, else left empty)
  encoder_s, decoder_s  seconds inside the encoder and decoder graphs, summed
                      over workers (the child's model_compute_seconds_total)
  encoder_bound_x_realtime
                      audio seconds x workers / encoder_s: the x-realtime the
                      run could reach if encoding were all its work, a ceiling
                      for any decoding of the same windows at that precision
  decoder_calls_per_audio_s, decoder_tokens_per_audio_s
                      sequential decoder calls, and token positions through
                      the decoder, per second of audio
  encoder_gflops, decoder_gflops, encoder_sgemm_pct, decoder_sgemm_pct
                      each graph's matrix-product FLOPs (from the model's
                      dimensions) per second inside it, and that rate in % of
                      ONNX Runtime's sgemm on as many threads, timed before
                      the sweep on sgemm.onnx of the fp32 model folder

OUTPUT
  <out>/sweep.csv  one row per point, `#` comment lines first
  <out>/sweep.svg  x-realtime per batch size (one bar per workers x threads
                   series) and p95 latency against x-realtime
  stdout           the same table, and the fastest point
  Ctrl-C or SIGTERM stops the sweep after the current run (Ctrl-C reaches
  that child too, which then drains as `mmt run` does); what was measured so
  far is written.

EXAMPLES
  mmt bench --input ../shared/eval/dictation --batch-size 4,8 --workers 1,2 --threads 1,2
  mmt bench --input ../shared/eval/long/dictation_10min.wav --batch-size 1,8 --repeats 3";

/// `mmt bench` options.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Audio to run: a folder (every audio file in it is one job; a
    /// manifest.jsonl there gives the WER), or one audio file (linked into a
    /// temporary folder; a manifest.jsonl beside it is used too).
    #[arg(long)]
    pub input: PathBuf,
    /// Folder for sweep.csv and sweep.svg (created if missing; both overwritten).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Batch sizes: speech chunks (from any jobs) per model call (`mmt run --batch-size`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8",
        value_name = "N,..."
    )]
    pub batch_size: Vec<usize>,
    /// Longest wait for a batch to fill, in ms: `mmt run --max-batch-wait-ms`,
    /// passed as MMT_MAX_BATCH_WAIT_MS (default: not set, not swept).
    #[arg(long, value_delimiter = ',', value_name = "MS,...")]
    pub max_wait_ms: Vec<u64>,
    /// Timely workers, each with its own model session (`mmt run --workers`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2",
        value_name = "N,..."
    )]
    pub workers: Vec<usize>,
    /// ONNX Runtime intra-op threads per worker (`mmt run --threads`); `auto`
    /// is cores / workers.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "auto",
        value_name = "N|auto,..."
    )]
    pub threads: Vec<Threads>,
    /// Model weights: fp32 (MMT_MODEL_DIR as configured) and/or int8 (--int8-model).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32")]
    pub precision: Vec<Precision>,
    /// Cross-job packing of short recordings into shared windows: `on` runs
    /// `mmt run --packing`, `off` `mmt run --no-packing` (its default).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    pub packing: Vec<Switch>,
    /// Decoding: `full` (Whisper's long-form decoding, `mmt run`'s default)
    /// and/or `fast` (`--independent-chunks --no-fallback --without-timestamps`;
    /// never with packing).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "full")]
    pub decoding: Vec<Decoding>,
    /// Runs of every point; medians are reported, the order alternates.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// The int8 export used for `--precision int8` [default: <root>/models/tiny.en-int8].
    #[arg(long, value_name = "DIR")]
    pub int8_model: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub timeout: u64,
    /// Keep every run's output (documents, audit log, metrics, stdout/stderr)
    /// under <out>/runs/ instead of a temporary folder.
    #[arg(long)]
    pub keep_runs: bool,
    /// No progress bar (the per-run lines go to stderr instead).
    #[arg(long)]
    pub no_progress: bool,
}

/// Where the runs write; removed at the end unless kept.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new(keep_under: Option<PathBuf>) -> Result<Self> {
        let (path, keep) = match keep_under {
            Some(path) => (path, true),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let name = format!("mmt-bench-{}-{nanos}", std::process::id());
                (std::env::temp_dir().join(name), false)
            }
        };
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What a model folder must hold (`ModelOptions::check_files`).
const MODEL_FILES: &[&str] = &[
    "encoder.onnx",
    "decoder.onnx",
    "tokenizer.json",
    "mmt-model.json",
];

/// `1 file`, `50 files`.
fn files(count: usize) -> String {
    if count == 1 {
        "1 file".to_owned()
    } else {
        format!("{count} files")
    }
}

/// `<cores> cores (<CPU model>, <integer-product extensions>)`.
fn machine(cores: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "));
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, flags)| vector_extensions(flags));
    let described: Vec<String> = model.into_iter().chain(flags).collect();
    if described.is_empty() {
        format!("{cores} cores")
    } else {
        format!("{cores} cores ({})", described.join(", "))
    }
}

/// The x86 extensions that decide what the int8 model is worth, from a
/// `/proc/cpuinfo` flags line: `AVX-512 + VNNI`, `AVX2, no VNNI`. The model
/// name alone does not tell (every EPYC is "AMD EPYC"), and without VNNI
/// ONNX Runtime adds int8 products in 16 bits, slower and, with full-range
/// weights, saturating (ADR 12).
fn vector_extensions(flags: &str) -> String {
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let widest = if has("avx512f") {
        "AVX-512"
    } else if has("avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    let mut described = widest.to_owned();
    if has("avx512_vnni") || has("avx_vnni") {
        described.push_str(" + VNNI");
    } else {
        described.push_str(", no VNNI");
    }
    if has("amx_int8") {
        described.push_str(" + AMX");
    }
    described
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().context("cannot find the mmt binary")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }

    let knobs = Knobs {
        batch_sizes: args.batch_size.clone(),
        max_wait_ms: args.max_wait_ms.clone(),
        workers: args.workers.clone(),
        threads: args.threads.clone(),
        precisions: args.precision.clone(),
        packing: args.packing.clone(),
        decodings: args.decoding.clone(),
    };
    let mut points = sweep::expand(&knobs, cores).map_err(anyhow::Error::msg)?;
    let mut notes: Vec<String> = Vec::new();
    let int8_model = args.int8_model.clone().unwrap_or_else(|| {
        mmt_pipeline::config::InstallRoot::discover()
            .dir()
            .join("models/tiny.en-int8")
    });
    let int8_missing: Vec<&str> = MODEL_FILES
        .iter()
        .copied()
        .filter(|file| !int8_model.join(file).is_file())
        .collect();
    if points.iter().any(|p| p.precision == Precision::Int8) && !int8_missing.is_empty() {
        let skipped = points
            .iter()
            .filter(|p| p.precision == Precision::Int8)
            .count();
        let note = format!(
            "skipped {skipped} int8 point(s): {} lacks {}; export the int8 model there or \
             pass --int8-model",
            int8_model.display(),
            int8_missing.join(", ")
        );
        eprintln!("mmt bench: {note}");
        notes.push(note);
        points.retain(|p| p.precision != Precision::Int8);
    } else if points.iter().any(|p| p.precision == Precision::Int8) {
        notes.push(format!(
            "precision int8: MMT_MODEL_DIR={}",
            int8_model.display()
        ));
    }
    if points.is_empty() {
        bail!("nothing to run: every point of the sweep was skipped");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let work = WorkDir::new(args.keep_runs.then(|| args.out.join("runs")))?;
    let input = input::InputSet::prepare(&args.input, &work.path.join("input"))?;
    let audio_s = input.audio_seconds();
    let machine = machine(cores);
    let repeats = args.repeats as usize;
    eprintln!(
        "mmt bench: {} ({}, {:.1} s of audio, {} with a reference transcript) on {machine}: \
         {} point(s) x {repeats} run(s)",
        args.input.display(),
        files(input.files.len()),
        audio_s,
        input.references(),
        points.len()
    );

    let medwer = if input.references() > 0 {
        let root = mmt_pipeline::config::InstallRoot::discover();
        medwer::MedwerScorer::find(root.dir())
            .map_err(|why| notes.push(format!("medwer_pct not computed: {why}")))
            .ok()
    } else {
        None
    };
    let calibration = calibrate(&points, cores);
    notes.extend(calibration.describe());
    notes.extend(calibration.notes.iter().cloned());
    let runner = child::Runner {
        exe: &exe,
        input: &input,
        int8_model: &int8_model,
        calibration: &calibration,
        medwer: medwer.as_ref(),
        cores,
        timeout: Duration::from_secs(args.timeout.max(1)),
        clock_ticks: child::clock_ticks(),
    };
    let order = sweep::run_order(points.len(), repeats);
    let bar = ProgressBar::new(order.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if args.no_progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut results: Vec<Vec<Result<child::Measurement, String>>> = vec![Vec::new(); points.len()];
    let mut interrupted = false;
    for &(repeat, index) in &order {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let point = &points[index];
        bar.set_message(format!("{} (run {}/{repeats})", point.label(), repeat + 1));
        let run_dir = work.path.join(format!("p{:02}-r{}", index + 1, repeat + 1));
        let result = runner.run(point, &run_dir);
        match &result {
            Ok(m) => say(format!(
                "  #{:<3} {:<24} {:>6.1}x realtime  p95 {}  {:>6.0} MB  CPU {:>3.0}% (others {:.0}%){}",
                index + 1,
                point.label(),
                m.x_realtime,
                m.latency_p95_s
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s")),
                m.peak_rss_mb,
                m.cpu_util_pct,
                m.other_cpu_pct,
                m.wer
                    .map_or_else(String::new, |w| format!("  WER {:.2}%", w.percent()))
            )),
            Err(why) => say(format!(
                "  #{:<3} {:<24} failed: {why}",
                index + 1,
                point.label()
            )),
        }
        results[index].push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if interrupted || stop.load(Ordering::Relaxed) {
        notes.push("interrupted: the sweep stopped early".to_owned());
    }

    let rows: Vec<report::Row> = points
        .into_iter()
        .zip(results)
        .map(|(point, results)| report::Row::new(point, results))
        .collect();
    let comments = csv_comments(&args, &input, &machine, repeats, &notes);
    let csv_path = args.out.join("sweep.csv");
    std::fs::write(&csv_path, report::csv(&comments, &rows))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let svg_path = args.out.join("sweep.svg");
    let title = format!(
        "mmt bench: {} ({}, {:.0} s of audio) on {machine}",
        input.name,
        files(input.files.len()),
        audio_s
    );
    plot::draw(&svg_path, &title, &rows)?;

    println!(
        "mmt bench: {} ({}, {:.1} s of audio) on {machine}, {repeats} run(s) per point",
        args.input.display(),
        files(input.files.len()),
        audio_s
    );
    print!("{}", report::table(&rows));
    for note in &notes {
        println!("note: {note}");
    }
    match report::best(&rows) {
        Some(best) => {
            let m = best.median.as_ref().map(|m| {
                format!(
                    "{:.1}x realtime, p95 {}, {:.0} MB peak, CPU {:.0}%{}",
                    m.x_realtime,
                    m.latency_p95_s
                        .map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s")),
                    m.peak_rss_mb,
                    m.cpu_util_pct,
                    m.wer
                        .map_or_else(String::new, |w| format!(", WER {:.2}%", w.percent()))
                )
            });
            let index = rows.iter().position(|r| std::ptr::eq(r, best)).unwrap_or(0) + 1;
            println!(
                "best: #{index} {} ({}): {}",
                best.point.label(),
                best.point.run_flags().join(" "),
                m.unwrap_or_default()
            );
        }
        None => println!("best: none (no point finished)"),
    }
    println!("wrote {} and {}", csv_path.display(), svg_path.display());
    if work.keep {
        println!("runs kept under {}", work.path.display());
    }
    if report::best(&rows).is_none() {
        bail!("no point of the sweep finished");
    }
    let all_ok = rows
        .iter()
        .all(|r| r.failures.is_empty() && r.median.is_some());
    Ok(if all_ok && !interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The model's arithmetic and the machine's sgemm rate on each thread count
/// of the sweep, measured before any point runs (so that none shares the
/// machine with it).
fn calibrate(points: &[sweep::Point], cores: usize) -> model_time::Calibration {
    let mut thread_counts: Vec<usize> = points.iter().map(|p| p.threads).collect();
    thread_counts.sort_unstable();
    thread_counts.dedup();
    let options = match mmt_pipeline::config::Config::from_env() {
        Ok(config) => crate::transcribe::model_options(&config, Some(cores)),
        Err(err) => {
            let mut calibration = model_time::Calibration::default();
            calibration.notes.push(format!(
                "model time not broken down: the configuration is invalid: {}",
                err.report()
            ));
            return calibration;
        }
    };
    model_time::Calibration::measure(&options, &thread_counts)
}

/// The `#` lines at the top of sweep.csv: what was run and what each column means.
fn csv_comments(
    args: &BenchArgs,
    input: &input::InputSet,
    machine: &str,
    repeats: usize,
    notes: &[String],
) -> Vec<String> {
    let now = mmt_connectors::fhir::document::fhir_instant(mmt_core::job::unix_now());
    let mut lines = vec![
        format!("mmt bench {} at {now} on {machine}", env!("CARGO_PKG_VERSION")),
        format!(
            "input: {} ({}, {:.1} s of audio, {} with a reference transcript)",
            args.input.display(),
            files(input.files.len()),
            input.audio_seconds(),
            input.references()
        ),
        "each point: `mmt run --no-progress --input DIR --out FRESH --metrics-file FILE \
         --batch-size B --workers W --threads T --packing|--no-packing [fast decoding flags]` \
         as a child process"
            .to_owned(),
        format!(
            "repeats: {repeats} run(s) per point, the order reversing on each pass; \
             figures are medians (runs = successful runs)"
        ),
        "x_realtime: audio s / dataflow wall s as `mmt run` prints it (model load excluded); \
         wall_s: that wall time; process_s: spawn to exit; x_realtime_process: audio_s / process_s"
            .to_owned(),
        format!(
            "latency_p50_s, latency_p95_s: quantiles of the child's {} histogram = wall time of \
             ONE MODEL CALL on a batch of up to batch_size speech chunks (<= 30 s each), not per \
             job; linear interpolation inside the Prometheus buckets (..., 0.5, 1, 2.5, 5, 10, 30 \
             s), so only as fine as a bucket; latency_mean_s = sum / count (exact); batches = count",
            child::LATENCY_HISTOGRAM
        ),
        "peak_rss_mb: max VmHWM of /proc/<pid>/status polled every 50 ms; cpu_s: the child's \
         user + system time (exact: the parent's cutime + cstime across the run); cpu_util_pct \
         = cpu_s / process_s / cores; other_cpu_pct: busy time of the machine (/proc/stat) \
         minus cpu_s, same scale: above 10% the status says `disturbed`"
            .to_owned(),
        "wer_pct: corpus WER (word edits / reference words, normalised like benches/wer.py) of \
         the FHIR documents against manifest.jsonl; wer_missing: references without a document"
            .to_owned(),
        "medwer_pct, medwer_medical_pct: WER and medical-term WER of the same documents under \
         the medwer package's protocol (Whisper's English normaliser, numbers folded; \
         benches/medwer_score.py in the dev virtualenv)"
            .to_owned(),
        "encoder_s, decoder_s: seconds inside the encoder and decoder graphs, summed over \
         workers (model_compute_seconds_total); encoder_bound_x_realtime: audio seconds x \
         workers / encoder_s, the x-realtime if encoding were all the work (a ceiling for \
         any decoding of the same windows); decoder_calls_per_audio_s: sequential decoder \
         calls per audio second; decoder_tokens_per_audio_s: token positions (rows x new \
         tokens, prompts included) per audio second; encoder_gflops, decoder_gflops: the \
         graphs' matrix-product FLOPs (from the model's dimensions, mmt_whisper::cost) per \
         second inside them; *_sgemm_pct: that rate in percent of the sgemm rate below on \
         as many threads (int8 graphs can exceed 100)"
            .to_owned(),
    ];
    lines.push(format!(
        "max_wait_ms: `mmt run --max-batch-wait-ms`, passed as {}; empty when not swept \
         (a partial batch then waits until its ingest epoch is complete)",
        child::MAX_WAIT_ENV
    ));
    lines.extend(notes.iter().cloned());
    lines
}

#[cfg(test)]
mod tests {
    use super::vector_extensions;

    #[test]
    fn vector_extensions_say_whether_int8_products_have_vnni() {
        // Flags as /proc/cpuinfo lists them on the machines of ADR 12.
        let avx2_epyc = "fpu sse4_2 avx fma avx2 bmi2 sha_ni";
        let zen5_epyc = "avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni";
        let xeon_amx = "avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8";
        let alder_lake = "avx2 avx_vnni";
        assert_eq!(vector_extensions(avx2_epyc), "AVX2, no VNNI");
        assert_eq!(vector_extensions(zen5_epyc), "AVX-512 + VNNI");
        assert_eq!(vector_extensions(xeon_amx), "AVX-512 + VNNI + AMX");
        assert_eq!(vector_extensions(alder_lake), "AVX2 + VNNI");
        assert_eq!(vector_extensions("sse2 avx"), "no AVX2, no VNNI");
        // A flag is a whole word: avx512f must not be read into avx512fp16.
        assert_eq!(vector_extensions("avx2 avx512fp16"), "AVX2, no VNNI");
    }
}
