//! `mmt dlq`: the dead-letter queue of the embedded deployment, for an
//! operator (`list`, `show`, `park`) and for a CronJob or a long-running
//! reprocessor (`reprocess`, `reprocess --follow`).

use crate::run::{run_options, worker_split};
use crate::transcribe::{load_config, model_options};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mmt_connectors::rabbitmq::DeadLetterQueue;
use mmt_core::job::{unix_now, JobId};
use mmt_core::telemetry::Metrics;
use mmt_pipeline::dlq::{
    list_letters, park_by_operator, DlqError, PassSummary, ReprocessOptions, Reprocessor, Rerun,
};
use mmt_pipeline::run::plan::{amqp_config, envelope_reader, open_resources, SourceChoice};
use mmt_pipeline::run::{run as run_pipeline, OutputPaths, Progress, RunOptions};
use mmt_pipeline::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters with the reprocessor's state of each.
    List(ListArgs),
    /// Print one dead letter and its state as JSON.
    Show(ShowArgs),
    /// Park a dead letter: it is never retried again (audited).
    Park(ShowArgs),
    /// Retry the retryable dead letters that are due (MAX_REPROCESS_ATTEMPTS,
    /// BACKOFF_BASE_SECONDS); park the permanent and exhausted ones.
    Reprocess(ReprocessArgs),
}

#[derive(Debug, Args)]
pub struct OutArgs {
    /// The `--out` folder of `mmt run` (dlq.jsonl, the embedded store and audit log).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub out: OutArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The dead-lettered job's id.
    pub job: String,
    #[command(flatten)]
    pub out: OutArgs,
}

/// Where the dead-lettered jobs came from, and so how they are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DlqSource {
    /// `mmt run --input`: the recordings are found again in `--input` and
    /// run through the pipeline here.
    Dir,
    /// `mmt run --source rabbitmq`: messages in `<queue>.dead` are
    /// republished to the job queue (parked ones moved to `<queue>.parked`).
    Rabbitmq,
}

#[derive(Debug, Args)]
pub struct ReprocessArgs {
    #[command(flatten)]
    pub out: OutArgs,
    /// Where the dead-lettered jobs came from.
    #[arg(long, value_enum, default_value = "dir")]
    pub source: DlqSource,
    /// The folder the dead-lettered jobs were read from (`mmt run --input`).
    #[arg(long, required_if_eq("source", "dir"))]
    pub input: Option<PathBuf>,
    /// Tenant of files without a sidecar naming one (as given to `mmt run`).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Keep going: a pass whenever a retry is due, and at least every `--interval`.
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: the longest wait between passes, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    /// Write the metrics (reprocessor_*_total among them) to this file after
    /// every pass, atomically (for node_exporter's textfile collector).
    #[arg(long)]
    pub metrics_textfile: Option<PathBuf>,
    /// Timely workers of a retry run (default: the worker plan).
    #[arg(long)]
    pub workers: Option<usize>,
    /// ONNX Runtime intra-op threads per worker.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(command: DlqCommand) -> Result<ExitCode> {
    match command {
        DlqCommand::List(args) => list(args),
        DlqCommand::Show(args) => show(args),
        DlqCommand::Park(args) => park(args),
        DlqCommand::Reprocess(args) => reprocess(args),
    }
}

fn paths(out: &Path) -> Result<(Config, OutputPaths)> {
    let config = load_config()?;
    let paths = OutputPaths::resolve(&config, out);
    Ok((config, paths))
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let (_, paths) = paths(&args.out.out)?;
    let views = list_letters(&paths)?;
    if args.json {
        for view in &views {
            println!("{}", serde_json::to_string(view)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32}  {:<9}  {:<10}  {:<10}  {:>8}  REASON",
        "JOB", "STAGE", "CLASS", "STATE", "ATTEMPTS"
    );
    for view in &views {
        let (state, attempts) = view.state.as_ref().map_or(("new", 0), |state| {
            (state.disposition.as_str(), state.attempts)
        });
        println!(
            "{:<32}  {:<9}  {:<10}  {:<10}  {:>8}  {}",
            view.letter.job_id,
            view.letter.stage.as_str(),
            view.letter.class.label(),
            state,
            attempts,
            view.letter.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs) -> Result<ExitCode> {
    let (_, paths) = paths(&args.out.out)?;
    let job = JobId(args.job);
    let view = list_letters(&paths)?
        .into_iter()
        .find(|view| view.letter.job_id == job)
        .ok_or(DlqError::UnknownLetter(job))?;
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitCode::SUCCESS)
}

fn park(args: ShowArgs) -> Result<ExitCode> {
    let (config, paths) = paths(&args.out.out)?;
    crate::audit::require_writable_trail(&config)?;
    let job = JobId(args.job);
    let metrics = Metrics::new()?;
    if park_by_operator(&paths, &metrics, &job, unix_now())? {
        println!("parked {job}");
    } else {
        println!("{job} was not pending (already parked or resolved)");
    }
    Ok(ExitCode::SUCCESS)
}

/// One pass of the reprocessor, over the folder or the broker.
type Pass = Box<dyn FnMut(&mut Reprocessor) -> Result<PassSummary, DlqError>>;

/// The pipeline over the staging folder, as `mmt run --input <folder>`.
struct PipelineRerun {
    config: Config,
    paths: OutputPaths,
    options: RunOptions,
    threads: usize,
    tenant: String,
    stop: Arc<AtomicBool>,
    metrics: Metrics,
}

/// A retry run reports to the metrics only.
struct Quiet;

impl Progress for Quiet {
    fn update(&self, _discovered: u64, _done: u64) {}
}

impl Rerun for PipelineRerun {
    fn rerun(&mut self, dir: &Path) -> Result<(), DlqError> {
        let choice = SourceChoice::Directory {
            input: dir.to_owned(),
            follow: None,
            tenant: self.tenant.clone(),
        };
        let failed = |err: &dyn std::fmt::Display| DlqError::Rerun(err.to_string());
        let resources = open_resources(
            &self.config,
            &choice,
            &self.paths,
            self.options.workers,
            &self.metrics,
        )
        .map_err(|err| failed(&err))?;
        let summary = run_pipeline(
            &model_options(&self.config, Some(self.threads)),
            &self.options,
            resources,
            Arc::clone(&self.stop),
            Arc::new(Quiet),
            self.metrics.clone(),
        )
        .map_err(|err| failed(&err))?;
        tracing::info!(
            completed = summary.completed,
            dead_lettered = summary.dead_lettered,
            "retry run done"
        );
        Ok(())
    }
}

fn reprocess(args: ReprocessArgs) -> Result<ExitCode> {
    let (config, paths) = paths(&args.out.out)?;
    crate::audit::require_writable_trail(&config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let metrics = Metrics::new()?;
    let options = ReprocessOptions {
        max_attempts: config.reprocess.max_attempts,
        retry: config.reprocess.retry_policy(),
        input: args.input.clone(),
        tenant: args.tenant.clone(),
    };
    let mut reprocessor = Reprocessor::open(
        &paths,
        &args.out.out,
        config.environment.is_prod(),
        metrics.clone(),
        options,
    )?;
    let mut pass: Pass = match args.source {
        DlqSource::Dir => {
            let (workers, threads) = worker_split(&config, args.workers, args.threads);
            let mut rerun = PipelineRerun {
                options: run_options(&config, &args.out.out, workers, threads)?,
                config: config.clone(),
                paths: paths.clone(),
                threads,
                tenant: args.tenant.clone(),
                stop: Arc::clone(&stop),
                metrics: metrics.clone(),
            };
            Box::new(move |reprocessor| reprocessor.pass(unix_now(), &mut rerun))
        }
        DlqSource::Rabbitmq => {
            let mut queue = DeadLetterQueue::connect(&amqp_config(&config))?;
            let reader = envelope_reader(&config);
            Box::new(move |reprocessor| reprocessor.pass_broker(unix_now(), &mut queue, &reader))
        }
    };
    let interval = Duration::try_from_secs_f64(args.interval)
        .context("--interval must be a non-negative number of seconds")?;
    loop {
        let summary = match pass(&mut reprocessor) {
            Ok(summary) => Some(summary),
            // A follower outlives a failing pass (a broker or store outage).
            Err(err) if args.follow => {
                eprintln!("mmt: dlq reprocess: {err}; trying again at the next pass");
                None
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(summary) = &summary {
            print_summary(summary);
        }
        if let Some(path) = &args.metrics_textfile {
            metrics
                .write_textfile(path)
                .with_context(|| format!("writing the metrics to {}", path.display()))?;
        }
        if !args.follow || stop.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
        let wait = summary.and_then(|s| s.next_due).map_or(interval, |due| {
            Duration::from_secs(u64::try_from(due - unix_now()).unwrap_or(0)).min(interval)
        });
        sleep_unless_stopped(wait.max(Duration::from_secs(1)), &stop);
        if stop.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn print_summary(summary: &PassSummary) {
    if summary.busy {
        println!("another reprocessor is at work on these dead letters; nothing done");
        return;
    }
    println!(
        "dead letters: {} retried, {} reprocessed, {} failed again, {} parked ({} out of attempts), {} pending",
        summary.attempted,
        summary.resolved,
        summary.failed,
        summary.parked,
        summary.exhausted,
        summary.pending
    );
}

/// Sleeps up to `wait`, waking early when a stop is asked for.
fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(250);
    let mut left = wait;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let nap = left.min(step);
        std::thread::sleep(nap);
        left -= nap;
    }
}
