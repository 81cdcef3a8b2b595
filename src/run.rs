//! `mmt run` and `mmt retention`: the dataflow on the embedded default.

use crate::cli::{RetentionArgs, RunArgs, SourceKind, SubmitArgs};
use crate::transcribe::{load_config, model_options};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::files::{DeadLetterFileConfig, FhirNdjsonConfig};
use mmt_core::telemetry::Metrics;
use mmt_operators::chunk::ChunkConfig;
use mmt_operators::commit::Retention;
use mmt_pipeline::retention::purge_once;
use mmt_pipeline::run::plan::{open_resources, SourceChoice};
use mmt_pipeline::run::{run, OutputPaths, Progress, RunOptions, RunSummary};
use mmt_whisper::TranscribeOptions;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// An indicatif bar on stderr: files committed out of files found.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&self, discovered: u64, done: u64) {
        self.0.set_length(discovered);
        self.0.set_position(done);
    }
}

/// Workers and intra-op threads: explicit flags win, else the worker plan.
pub fn worker_split(
    config: &mmt_pipeline::Config,
    workers: Option<usize>,
    threads: Option<usize>,
) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = config.worker_plan(cores);
    let chosen_workers = workers.unwrap_or(plan.workers).max(1);
    let threads = match (threads, workers) {
        (Some(threads), _) => threads,
        (None, None) => plan.intra_op_threads,
        (None, Some(_)) => cores / chosen_workers,
    }
    .max(1);
    tracing::info!(?plan, workers = chosen_workers, threads, "worker plan");
    eprintln!(
        "mmt: {chosen_workers} worker(s) x {threads} ONNX Runtime thread(s) on {cores} core(s) \
         (worker plan: {} limited by {:?})",
        plan.workers, plan.limited_by
    );
    (chosen_workers, threads)
}

/// The options of a run over `out` from the config, with the defaults of
/// `mmt run`'s flags (also what `mmt dlq reprocess` retries with).
pub fn run_options(
    config: &mmt_pipeline::Config,
    out: &std::path::Path,
    workers: usize,
    threads: usize,
) -> Result<RunOptions> {
    Ok(RunOptions {
        out: out.to_owned(),
        workers,
        intra_op_threads: threads,
        batch_size: 8,
        max_batch_wait: None,
        files_per_epoch: 64,
        max_epochs_in_flight: 2,
        idle_exit: None,
        transcribe: TranscribeOptions::default(),
        chunking: ChunkConfig::default(),
        max_audio_seconds: Some(config.audio.max_audio_seconds),
        sealer: mmt_pipeline::run::plan::sealer(config)?,
        retention: Retention {
            days: config.retention.retention_days,
            interval: Duration::from_secs(3600),
        },
        max_takes: config.reprocess.max_attempts,
        retry: config.reprocess.retry_policy(),
    })
}

pub fn run_pipeline(args: RunArgs) -> Result<ExitCode> {
    let config = load_config()?;
    crate::audit::require_writable_trail(&config)?;
    let (workers, threads) = worker_split(&config, args.workers, args.threads);
    let choice = match args.source {
        SourceKind::Dir => SourceChoice::Directory {
            input: args.input.clone().unwrap_or_default(),
            follow: args.follow.then_some(Duration::from_secs(1)),
            tenant: args.tenant.clone(),
        },
        SourceKind::Rabbitmq => SourceChoice::RabbitMq,
        SourceKind::Kafka => SourceChoice::Kafka,
    };
    let idle_exit = args
        .idle_exit
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64);
    let options = RunOptions {
        batch_size: args.batch_size,
        max_batch_wait: args.max_batch_wait_ms.map(Duration::from_millis),
        idle_exit,
        transcribe: transcribe_options(&args),
        ..run_options(&config, &args.out, workers, threads)?
    };
    // SIGTERM/SIGINT end a `--follow` run gracefully: the source stops and
    // everything already fed is committed before the process exits.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if args.no_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let progress = Arc::new(Bar(bar.clone()));
    let metrics = Metrics::new()?;
    // Up before the source connects: a scrape sees the worker from its start.
    let _metrics_server = match args.metrics_listen {
        Some(listen) => {
            let server = mmt_api::metrics_server::MetricsServer::start(listen, metrics.clone())?;
            eprintln!("mmt: metrics at http://{}/metrics", server.address());
            Some(server)
        }
        None => None,
    };
    // Documents, the audit trail and the job store go here: owner-only.
    mmt_core::owner_only::create_dir_all(&args.out)?;
    let paths = OutputPaths::resolve(&config, &args.out);
    let resources = open_resources(&config, &choice, &paths, workers, &metrics)?;
    let summary = run(
        &model_options(&config, Some(threads)),
        &options,
        resources,
        Arc::clone(&stop),
        progress,
        metrics.clone(),
    )?;
    bar.finish_and_clear();
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, metrics.encode_text())
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))?;
    }
    print_summary(&summary, &paths);
    print_model_work(&metrics);
    Ok(if summary.dead_lettered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_summary(summary: &RunSummary, paths: &OutputPaths) {
    println!(
        "{} files: {} transcribed, {} dead-lettered, {} duplicates, {} already done",
        summary.files,
        summary.completed,
        summary.dead_lettered,
        summary.duplicates,
        summary.already_finished
    );
    println!(
        "{:.3} h of audio in {:.1} s: {:.1}x realtime",
        summary.audio_seconds / 3600.0,
        summary.wall_seconds,
        summary.realtime_factor()
    );
    println!(
        "documents:     {}",
        paths
            .documents_dir
            .join(FhirNdjsonConfig::FILE_NAME)
            .display()
    );
    println!("audit log:     {}", paths.audit_log.display());
    println!(
        "dead letters:  {}",
        paths
            .dead_letter_dir
            .join(DeadLetterFileConfig::FILE_NAME)
            .display()
    );
    println!(
        "job store:     {}",
        mmt_connectors::sql::SqlJobStoreConfig::new(&paths.database_url).redacted_url()
    );
}

pub fn retention(args: RetentionArgs) -> Result<ExitCode> {
    let config = load_config()?;
    crate::audit::require_writable_trail(&config)?;
    let paths = OutputPaths::resolve(&config, &args.out);
    let now = mmt_core::job::unix_now();
    let metrics = Metrics::new()?;
    // A purge that finds nothing due still reports its zeros to the textfile.
    for kind in ["job", "document"] {
        metrics.retention_purged_total.with_label_values(&[kind]);
    }
    let (cutoff, purged) = purge_once(
        &config,
        &paths,
        config.retention.retention_days,
        now,
        args.dry_run,
        &metrics,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(path) = &args.metrics_textfile {
        metrics
            .write_textfile(path)
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))?;
    }
    let verb = if args.dry_run {
        "would purge"
    } else {
        "purged"
    };
    println!(
        "{verb} {} jobs and {} documents received before {cutoff} (RETENTION_DAYS={})",
        purged.jobs, purged.documents, config.retention.retention_days
    );
    Ok(ExitCode::SUCCESS)
}

/// `mmt submit`: each file becomes one job envelope on the RabbitMQ job queue.
pub fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let config = load_config()?;
    let submitter = mmt_connectors::rabbitmq::JobSubmitter::connect(
        &mmt_pipeline::run::plan::amqp_config(&config),
    )?;
    let mut failed = 0;
    for file in &args.files {
        let name = file.display();
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(err) => {
                eprintln!("mmt: {name}: {err}");
                failed += 1;
                continue;
            }
        };
        let format = file
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let mut envelope = JobEnvelope::inline(&args.tenant, &bytes, format.as_deref());
        envelope.patient_reference.clone_from(&args.patient);
        envelope.encounter_reference.clone_from(&args.encounter);
        envelope.priority = args.priority;
        let problems = envelope.problems();
        if !problems.is_empty() {
            anyhow::bail!("invalid job: {}", mmt_core::input::join(&problems));
        }
        let message_id = mmt_connectors::envelope::message_id_for(&bytes);
        submitter.submit(&envelope, &message_id, None)?;
        println!("{message_id}  {name}");
    }
    println!(
        "{} job(s) queued on {}; {} waiting",
        args.files.len() - failed,
        config.rabbitmq.queue,
        submitter.queue_depth()?
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// How `mmt run` decodes, from its flags.
fn transcribe_options(args: &RunArgs) -> TranscribeOptions {
    let options = TranscribeOptions {
        batch_size: args.batch_size,
        // Opt-in: a packed recording's text depends on its window's other
        // recordings. Packing splits a window by its timestamps, so it needs them.
        packing: args.packing && !args.without_timestamps,
        condition_on_previous_text: !args.independent_chunks,
        stream_chunks: args.stream_chunks,
        without_timestamps: args.without_timestamps,
        ..TranscribeOptions::default()
    };
    if args.no_fallback {
        options.without_fallback()
    } else {
        options
    }
}

/// What the model did, on stderr (the summary on stdout stays machine-readable).
fn print_model_work(metrics: &Metrics) {
    let count = |kind: &str| metrics.model_work_total.with_label_values(&[kind]).get();
    let seconds = |stage: &str| {
        metrics
            .model_compute_seconds_total
            .with_label_values(&[stage])
            .get()
    };
    eprintln!(
        "mmt: model work: {} windows encoded in {:.1} s, {} decoder calls in {:.1} s \
         (all workers), {} windows decoded again at a higher temperature, {} packs split, \
         {} packs decoded again unpacked",
        count("windows_encoded"),
        seconds("encoder"),
        count("decoder_calls"),
        seconds("decoder"),
        count("fallback_windows"),
        count("packs_split"),
        count("packs_redone"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn run_args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["mmt", "run", "--input", "in", "--out", "out"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Run(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn decoding_flags_reach_the_transcribe_options() {
        let defaults = transcribe_options(&run_args(&[]));
        assert_eq!(
            defaults.temperatures,
            TranscribeOptions::default().temperatures
        );
        assert!(defaults.condition_on_previous_text && !defaults.without_timestamps);

        let fast = transcribe_options(&run_args(&[
            "--independent-chunks",
            "--no-fallback",
            "--without-timestamps",
            "--batch-size",
            "4",
        ]));
        assert_eq!(fast.temperatures, [0.0]);
        assert!(!fast.condition_on_previous_text && fast.without_timestamps);
        assert_eq!(fast.batch_size, 4);
    }

    #[test]
    fn packing_is_opt_in_and_needs_timestamps() {
        let options = |flags: &[&str]| transcribe_options(&run_args(flags));
        assert!(!options(&[]).packing, "same audio, same text by default");
        assert!(options(&["--packing"]).packing);
        assert!(!options(&["--no-packing"]).packing);
        assert!(
            options(&["--no-packing", "--packing"]).packing,
            "the last wins"
        );
        assert!(!options(&["--packing", "--without-timestamps"]).packing);
    }
}
