//! `mmt run`: the transcription dataflow over a directory, on the embedded sinks.
//!
//! The graph, per timely worker:
//!
//! ```text
//! input ─ decode ─┬─ dedupe (exchange by job) ─┬─ chunk ─ transcribe ─┬─ assemble (exchange by job) ─┐
//!                 │                            │                     │                             │
//!                 └ bad input                  └ duplicates          └ model errors               ─┴─ commit (worker 0) ─ probe
//! ```
//!
//! Worker 0 runs the source: each scan of the folder is one epoch. A file counts
//! as done (acknowledged) once the probe shows the commit stage has passed its
//! epoch; at most `max_epochs_in_flight` epochs are open at once, which is the
//! back-pressure timely does not provide by itself.

pub mod source;

use crate::config::Config;
use mmt_connectors::files::{AuditLogConfig, DeadLetterFileConfig, FhirNdjsonConfig};
use mmt_connectors::sql::SqlJobStoreConfig;
use mmt_core::job::JobStore;
use mmt_core::telemetry::Metrics;
use mmt_operators::assemble::Assemble;
use mmt_operators::chunk::ChunkConfig;
use mmt_operators::commit::{Commit, CommitCounters, CommitRetry, Retention, Sinks};
use mmt_operators::decode::DecodeAudio;
use mmt_operators::dedupe::Dedupe;
use mmt_operators::infer::Transcribe;
use mmt_operators::records::SourceRecord;
use mmt_operators::split::ChunkSpeech;
use mmt_whisper::{Engine, ModelOptions, TranscribeOptions};
use source::DirectorySource;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::{Concatenate, Probe};
use timely::dataflow::operators::Input;
use timely::dataflow::{InputHandle, ProbeHandle};

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("input folder {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Setup { what: &'static str, reason: String },
    #[error("the dataflow failed: {0}")]
    Dataflow(String),
}

/// How one run is set up.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Folder of audio files (and optional `<file>.json` sidecars).
    pub input: PathBuf,
    /// Folder for the FHIR documents, dead letters and (by default) the job store and audit log.
    pub out: PathBuf,
    /// Keep watching the folder for new files until stopped.
    pub follow: bool,
    /// Tenant of files without a sidecar naming one.
    pub tenant: String,
    /// Timely workers (each with its own ONNX Runtime session).
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_op_threads: usize,
    /// Chunks transcribed together in one model call.
    pub batch_size: usize,
    /// Files per epoch (ingest batch).
    pub files_per_epoch: usize,
    /// Epochs allowed in flight before the source waits.
    pub max_epochs_in_flight: u64,
    /// How often `--follow` rescans the folder.
    pub poll_interval: Duration,
    /// Transcription options.
    pub transcribe: TranscribeOptions,
    /// Voice activity detection and chunking.
    pub chunking: ChunkConfig,
    /// Retention enforced while the run goes on.
    pub retention: Retention,
}

/// Where the embedded sinks write, derived from the config and `--out`.
#[derive(Debug, Clone)]
pub struct OutputPaths {
    pub database_url: String,
    pub audit_log: PathBuf,
    pub documents_dir: PathBuf,
    pub dead_letter_dir: PathBuf,
}

impl OutputPaths {
    /// Explicit `DATABASE_URL`/`AUDIT_LOG_FILE` win; otherwise everything lives under `out`.
    pub fn resolve(config: &Config, out: &Path) -> Self {
        let database_url = if config.database.url_defaulted {
            format!("sqlite://{}", out.join("mmt.db").display())
        } else {
            config.database.url.expose().to_owned()
        };
        let default_audit = Path::new(crate::config::AuditConfig::DEFAULT_LOG_FILE);
        let audit_log = if config.audit.log_file == default_audit {
            out.join("audit.jsonl")
        } else {
            config.audit.log_file.clone()
        };
        Self {
            database_url,
            audit_log,
            documents_dir: out.join("fhir"),
            dead_letter_dir: out.to_owned(),
        }
    }
}

impl OutputPaths {
    pub fn documents(&self) -> FhirNdjsonConfig {
        FhirNdjsonConfig {
            dir: self.documents_dir.clone(),
        }
    }

    pub fn audit(&self) -> AuditLogConfig {
        AuditLogConfig {
            path: self.audit_log.clone(),
        }
    }

    pub fn dead_letters(&self) -> DeadLetterFileConfig {
        DeadLetterFileConfig {
            dir: self.dead_letter_dir.clone(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub files: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub already_finished: u64,
    pub audio_seconds: f64,
    pub wall_seconds: f64,
}

impl RunSummary {
    /// Audio seconds transcribed per wall second.
    pub fn realtime_factor(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.audio_seconds / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// Progress of a run, reported as it goes.
pub trait Progress: Send + Sync {
    /// `done` of `discovered` files have been committed.
    fn update(&self, discovered: u64, done: u64);
}

/// Runs the dataflow until the folder is processed (or, with `follow`, until `stop`).
pub fn run(
    config: &Config,
    model: &ModelOptions,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
    progress: Arc<dyn Progress>,
    metrics: Metrics,
) -> Result<RunSummary, RunError> {
    if !options.input.is_dir() {
        return Err(RunError::Input {
            path: options.input.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        });
    }
    std::fs::create_dir_all(&options.out).map_err(|source| RunError::Input {
        path: options.out.clone(),
        source,
    })?;
    let paths = OutputPaths::resolve(config, &options.out);
    let workers = options.workers.max(1);
    tracing::info!(
        workers,
        intra_op_threads = options.intra_op_threads,
        batch_size = options.batch_size,
        "starting the dataflow"
    );

    // Everything that can fail is opened before the workers start, so that no
    // worker can leave the others waiting on a dataflow it never built.
    let engines = (0..workers)
        .map(|_| {
            let mut per_worker = model.clone();
            per_worker.intra_op_threads = options.intra_op_threads.max(1);
            Engine::load(&per_worker)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| setup("model", err))?;
    let stores = (0..workers)
        .map(|_| open_store(&paths.database_url))
        .collect::<Result<Vec<_>, _>>()?;
    let sinks = open_sinks(&paths)?;

    let per_worker = Arc::new(Mutex::new(
        engines
            .into_iter()
            .zip(stores)
            .map(|(engine, store)| Some((engine, store)))
            .collect::<Vec<_>>(),
    ));
    let sinks = Arc::new(Mutex::new(Some(sinks)));
    let counters = Arc::new(CommitCounters::default());
    let started = Instant::now();
    let discovered = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let guards =
        {
            let options = options.clone();
            let counters = Arc::clone(&counters);
            let discovered = Arc::clone(&discovered);
            timely::execute(timely::Config::process(workers), move |worker| {
                let index = worker.index();
                let taken = per_worker
                    .lock()
                    .ok()
                    .and_then(|mut all| all.get_mut(index).and_then(Option::take));
                let Some((engine, store)) = taken else {
                    return Err("worker resources missing".to_owned());
                };
                let sinks = if index == 0 {
                    sinks.lock().ok().and_then(|mut s| s.take())
                } else {
                    None
                };
                let mut input = InputHandle::new();
                let probe = ProbeHandle::new();
                let options_in = options.clone();
                let counters_in = Arc::clone(&counters);
                let metrics_in = metrics.clone();
                worker.dataflow::<u64, _, _>(|scope| {
                    let (decoded, rejected) = scope.input_from(&mut input).decode_audio();
                    let (fresh, repeats) = decoded.dedupe(store);
                    let (results, failed) = fresh
                        .chunk_speech(options_in.chunking.clone())
                        .transcribe(engine, options_in.transcribe.clone(), metrics_in.clone());
                    let completed = results.assemble();
                    scope
                        .concatenate([rejected, repeats, failed, completed])
                        .commit(
                            sinks,
                            CommitRetry::default(),
                            options_in.retention,
                            counters_in,
                            metrics_in,
                        )
                        .probe_with(&probe);
                });
                if index == 0 {
                    let progress = QueueProgress {
                        inner: progress.as_ref(),
                        metrics: &metrics,
                    };
                    drive_source(
                        worker,
                        input,
                        &probe,
                        &options,
                        &stop,
                        &discovered,
                        &counters,
                        &progress,
                    )
                } else {
                    drop(input);
                    while !probe.done() {
                        worker.step_or_park(Some(Duration::from_millis(100)));
                    }
                    Ok(())
                }
            })
            .map_err(RunError::Dataflow)?
        };
    for result in guards.join() {
        result
            .map_err(RunError::Dataflow)?
            .map_err(RunError::Dataflow)?;
    }
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    Ok(RunSummary {
        files: load(&discovered),
        completed: load(&counters.completed),
        dead_lettered: load(&counters.dead_lettered),
        duplicates: load(&counters.duplicates),
        already_finished: load(&counters.already_finished),
        audio_seconds: load(&counters.audio_millis) as f64 / 1000.0,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Forwards progress and keeps `async_task_queue_size` (files fed, not yet committed).
struct QueueProgress<'a> {
    inner: &'a dyn Progress,
    metrics: &'a Metrics,
}

impl Progress for QueueProgress<'_> {
    fn update(&self, discovered: u64, done: u64) {
        self.metrics
            .async_task_queue_size
            .set(discovered.saturating_sub(done) as i64);
        self.inner.update(discovered, done);
    }
}

/// The dataflow's input: source records, one epoch per ingest batch.
type SourceInput = InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>>;

/// Worker 0's loop: scan, feed one epoch, keep at most N epochs open, repeat.
#[allow(clippy::too_many_arguments)]
fn drive_source(
    worker: &mut timely::worker::Worker,
    mut input: SourceInput,
    probe: &ProbeHandle<u64>,
    options: &RunOptions,
    stop: &AtomicBool,
    discovered: &std::sync::atomic::AtomicU64,
    counters: &CommitCounters,
    progress: &dyn Progress,
) -> Result<(), String> {
    let mut source = DirectorySource::new(&options.input, &options.tenant);
    let report = || {
        let done = counters.completed.load(Ordering::Relaxed)
            + counters.dead_lettered.load(Ordering::Relaxed)
            + counters.duplicates.load(Ordering::Relaxed)
            + counters.already_finished.load(Ordering::Relaxed);
        progress.update(discovered.load(Ordering::Relaxed), done);
    };
    let mut last_scan = Instant::now() - options.poll_interval;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut fed = 0;
        if last_scan.elapsed() >= options.poll_interval {
            last_scan = Instant::now();
            let files = source
                .scan(options.files_per_epoch)
                .map_err(|e| format!("scanning the input folder: {e}"))?;
            let received_at = mmt_core::job::unix_now();
            for path in files {
                let record = source
                    .read(&path, received_at)
                    .unwrap_or_else(|unreadable| source.unreadable_record(unreadable, received_at));
                input.send(record);
                fed += 1;
            }
            discovered.fetch_add(fed, Ordering::Relaxed);
            if fed > 0 {
                input.advance_to(input.time() + 1);
            }
            if fed as usize == options.files_per_epoch {
                // More files are waiting: scan again without waiting for the poll interval.
                last_scan = Instant::now() - options.poll_interval;
            }
        }
        // Back-pressure: wait while too many epochs are open.
        let horizon = input.time().saturating_sub(options.max_epochs_in_flight);
        while probe.less_than(&horizon) {
            worker.step_or_park(Some(Duration::from_millis(50)));
            report();
        }
        worker.step_or_park(Some(Duration::from_millis(if fed > 0 { 0 } else { 50 })));
        report();
        // A batch run ends when a scan finds nothing new and everything fed is committed.
        if !options.follow && fed == 0 && !probe.less_than(input.time()) {
            break;
        }
    }
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        report();
    }
    report();
    Ok(())
}

fn setup(what: &'static str, err: impl std::fmt::Display) -> RunError {
    RunError::Setup {
        what,
        reason: err.to_string(),
    }
}

fn open_store(url: &str) -> Result<Box<dyn JobStore>, RunError> {
    // The embedded run refuses production earlier (in the CLI); here the
    // store only has to open.
    let store = SqlJobStoreConfig::new(url)
        .build(false)
        .map_err(|err| setup("job store", err))?;
    Ok(Box::new(store))
}

/// Opens the embedded sinks (one writer each: the commit stage or a purge).
pub fn open_sinks(paths: &OutputPaths) -> Result<Sinks, RunError> {
    Ok(Sinks {
        documents: Box::new(
            paths
                .documents()
                .build()
                .map_err(|e| setup("FHIR sink", e))?,
        ),
        audit: Box::new(paths.audit().build().map_err(|e| setup("audit log", e))?),
        dead_letters: Box::new(
            paths
                .dead_letters()
                .build()
                .map_err(|e| setup("dead-letter queue", e))?,
        ),
        store: open_store(&paths.database_url)?,
    })
}
