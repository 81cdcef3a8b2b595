//! `mmt serve` and `mmt token`: the REST API with the dataflow behind it.

use crate::cli::{IntakeKind, ServeArgs, TokenArgs};
use crate::jwt_keys::Refresh;
use crate::run::worker_split;
use crate::transcribe::{load_config, model_options};
use anyhow::{Context, Result};
use mmt_api::auth::{sign_hs256, Claims, KeyRing};
use mmt_api::webhook::target::TargetPolicy;
use mmt_api::webhook::{CallbackStore, WebhookConfig};
use mmt_api::{ApiConfig, AppState, TlsFiles};
use mmt_core::telemetry::Metrics;
use mmt_operators::chunk::ChunkConfig;
use mmt_operators::commit::Retention;
use mmt_pipeline::run::{run, OutputPaths, Progress, RunOptions};
use mmt_pipeline::serve::IntakeChoice;
use mmt_pipeline::Config;
use mmt_whisper::TranscribeOptions;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often old uploads are purged.
const UPLOAD_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a service whose dataflow stopped keeps answering 503 (readiness
/// and submissions) before it exits: requests in flight finish, and load
/// balancers see it leave.
const DEAD_DATAFLOW_LINGER: Duration = Duration::from_secs(5);

/// Test-only (never set it in production): makes the dataflow thread panic as
/// soon as a job is queued, so the tests can check what a dead dataflow does
/// to the service.
const TEST_DATAFLOW_PANIC: &str = "MMT_TEST_DATAFLOW_PANIC";

/// The dataflow reports progress to the metrics only.
struct Quiet;

impl Progress for Quiet {
    fn update(&self, _discovered: u64, _done: u64) {}
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config = load_config()?;
    let metrics = Metrics::new()?;
    // Built first: the key ring's first load from Vault runs on it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (keys, key_refresh) =
        runtime.block_on(crate::jwt_keys::key_ring(&config, &args, &metrics))?;
    let keys = Arc::new(keys);
    let api_config = api_config(&config, &args);
    let webhooks = webhook_config(&config)?;
    let (workers, threads) = worker_split(&config, args.workers, args.threads);
    let model = model_options(&config, Some(threads));
    // Before listening: a service that cannot transcribe must not look ready.
    check_model(&config, &model)?;
    let listener = mmt_api::server::bind(&api_config)?;
    let address = listener.local_addr()?;

    // Documents, the audit trail and the job store go here: owner-only.
    mmt_core::owner_only::create_dir_all(&args.out)?;
    let paths = OutputPaths::resolve(&config, &args.out);
    let intake = match args.intake {
        IntakeKind::Embedded => IntakeChoice::Embedded,
        IntakeKind::Rabbitmq => IntakeChoice::RabbitMq,
    };
    let (resources, control) = mmt_pipeline::serve::open(
        &config,
        &paths,
        &args.out.join("uploads"),
        workers,
        intake,
        &metrics,
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let options = RunOptions {
        out: args.out.clone(),
        workers,
        intra_op_threads: threads,
        batch_size: args.batch_size,
        max_batch_wait: args.max_batch_wait_ms.map(Duration::from_millis),
        // Small epochs: a shutdown drains what was fed (the rest waits on
        // disk for the next start) well within Kubernetes' 30 s grace period.
        files_per_epoch: 16,
        max_epochs_in_flight: 2,
        idle_exit: None,
        transcribe: TranscribeOptions {
            batch_size: args.batch_size,
            stream_chunks: args.stream_chunks,
            ..TranscribeOptions::default()
        },
        chunking: ChunkConfig::default(),
        max_audio_seconds: Some(config.audio.max_audio_seconds),
        sealer: mmt_pipeline::run::plan::sealer(&config)?,
        retention: Retention {
            days: config.retention.retention_days,
            interval: UPLOAD_RETENTION_INTERVAL,
        },
        max_takes: config.reprocess.max_attempts,
        retry: config.reprocess.retry_policy(),
    };
    let dataflow_failed = Arc::new(AtomicBool::new(false));
    let fail_for_tests = std::env::var_os(TEST_DATAFLOW_PANIC).is_some();
    let dataflow = {
        let stop = Arc::clone(&stop);
        let failed = Arc::clone(&dataflow_failed);
        let control = Arc::clone(&control);
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("dataflow".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if fail_for_tests {
                        panic_once_a_job_is_queued(&control, &stop);
                    }
                    run(
                        &model,
                        &options,
                        resources,
                        Arc::clone(&stop),
                        Arc::new(Quiet),
                        metrics,
                    )
                }));
                if !stop.load(Ordering::Relaxed) {
                    failed.store(true, Ordering::SeqCst);
                    refuse_work_then_stop(&control, &stop, &outcome);
                }
                outcome
            })?
    };

    let scheme = if api_config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("mmt: serving the job API on {scheme}://{address} (OpenAPI at /openapi.json)");
    let served = runtime.block_on(serve_api(
        Arc::clone(&control),
        keys,
        key_refresh,
        api_config,
        metrics,
        listener,
        webhooks,
        config.retention.retention_days,
        Arc::clone(&stop),
    ));
    // The job store owns a runtime of its own, which must not be dropped on an
    // async thread: the runtime goes first (with its tasks' handles on the
    // control), and the last handle is dropped here.
    drop(runtime);
    drop(control);
    // However the API ended, the dataflow drains what it was fed and stops.
    stop.store(true, Ordering::Relaxed);
    let outcome = dataflow
        .join()
        .map_err(|_| anyhow::anyhow!("the dataflow thread panicked"))?;
    if dataflow_failed.load(Ordering::SeqCst) {
        // Non-zero, so the orchestrator starts a fresh process; every accepted
        // job waits on disk for it.
        eprintln!("mmt: stopped because the transcription dataflow stopped");
        return Ok(ExitCode::FAILURE);
    }
    let summary = outcome.map_err(|_| anyhow::anyhow!("the dataflow panicked"))??;
    eprintln!(
        "mmt: stopped; {} job(s) transcribed, {} dead-lettered",
        summary.completed, summary.dead_lettered
    );
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Loads the model once, with ONNX Runtime, and drops it: a missing or
/// corrupt model, or a missing runtime library, stops `mmt serve` with a clear
/// message before it binds its port.
fn check_model(config: &Config, model: &mmt_whisper::ModelOptions) -> Result<()> {
    let problems: Vec<String> = config
        .check_files()
        .iter()
        .filter(|problem| problem.is_fatal())
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        anyhow::bail!("cannot serve: {}", problems.join("; "));
    }
    let mut probe = model.clone();
    probe.intra_op_threads = 1;
    mmt_whisper::Engine::load(&probe).with_context(|| {
        format!(
            "cannot serve: the model in {} could not be loaded with ONNX Runtime {}",
            model.model_dir.display(),
            model.ort_library.display()
        )
    })?;
    Ok(())
}

/// The dataflow stopped while the service was meant to run: readiness and
/// submissions answer 503 for a moment, then the API stops (and the process
/// exits non-zero).
fn refuse_work_then_stop(
    control: &mmt_pipeline::serve::ServiceControl,
    stop: &AtomicBool,
    outcome: &std::thread::Result<
        Result<mmt_pipeline::run::RunSummary, mmt_pipeline::run::RunError>,
    >,
) {
    control.mark_dataflow_stopped();
    let how = match outcome {
        Ok(Ok(_)) => "ended".to_owned(),
        Ok(Err(err)) => format!("failed: {err}"),
        Err(_) => "panicked".to_owned(),
    };
    tracing::error!(how = %how, "the transcription dataflow stopped; refusing work and exiting");
    eprintln!("mmt: the transcription dataflow {how}; refusing work and exiting");
    let started = std::time::Instant::now();
    while started.elapsed() < DEAD_DATAFLOW_LINGER && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
}

/// The test-only failure of [`TEST_DATAFLOW_PANIC`].
fn panic_once_a_job_is_queued(control: &mmt_pipeline::serve::ServiceControl, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if control.queued_jobs().unwrap_or(0) > 0 {
            panic!("{TEST_DATAFLOW_PANIC} is set: the dataflow fails on purpose");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_api(
    control: Arc<mmt_pipeline::serve::ServiceControl>,
    keys: Arc<KeyRing>,
    key_refresh: Option<Refresh>,
    api_config: ApiConfig,
    metrics: Metrics,
    listener: std::net::TcpListener,
    webhooks: Option<WebhookConfig>,
    retention_days: u32,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    if let Some(webhooks) = webhooks {
        let store: Arc<dyn CallbackStore> = control.clone();
        tokio::spawn(mmt_api::webhook::run(store, webhooks, stopped.clone()));
    }
    if let Some(refresh) = key_refresh {
        refresh.spawn(Arc::clone(&keys));
    }
    tokio::spawn(purge_old_uploads(Arc::clone(&control), retention_days));
    let state = AppState::new(control, keys, api_config.clone(), metrics);
    let shutdown = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stopping.send(true);
    };
    mmt_api::serve(listener, mmt_api::router(state), &api_config, shutdown).await?;
    Ok(())
}

/// Removes uploads older than RETENTION_DAYS (the dataflow purges the rest).
async fn purge_old_uploads(control: Arc<mmt_pipeline::serve::ServiceControl>, days: u32) {
    loop {
        let cutoff = mmt_core::job::unix_now() - i64::from(days) * 86_400;
        let control = Arc::clone(&control);
        match tokio::task::spawn_blocking(move || control.purge_uploads_before(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(purged)) => tracing::info!(purged, "old uploads removed"),
            Ok(Err(err)) => tracing::warn!(error = %err.kind(), "could not purge old uploads"),
            Err(err) => tracing::warn!(error = %err, "the upload purge task failed"),
        }
        tokio::time::sleep(UPLOAD_RETENTION_INTERVAL).await;
    }
}

/// The deliverer's settings, when a signing secret is set (its length was
/// checked with the rest of the configuration).
fn webhook_config(config: &Config) -> Result<Option<WebhookConfig>> {
    let Some(secret) = &config.webhook.secret else {
        return Ok(None);
    };
    let webhooks = WebhookConfig {
        targets: TargetPolicy {
            allow_private: config.webhook.allow_private_targets,
        },
        ..WebhookConfig::new(secret.expose())
    };
    if let Err(problems) = webhooks.validate() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!("cannot serve: webhooks: {}", problems.join("; "));
    }
    Ok(Some(webhooks))
}

fn api_config(config: &Config, args: &ServeArgs) -> ApiConfig {
    let security = &config.security;
    let tls = match (&security.ssl_cert_file, &security.ssl_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    ApiConfig {
        listen: args.listen,
        tls,
        require_tls: security.tls_required(config.environment),
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        request_timeout: Duration::from_secs(args.request_timeout),
        tenant_requests_per_second: args.tenant_rate,
        tenant_burst: args.tenant_burst,
        callbacks_enabled: config.webhook.secret.is_some(),
        callback_targets: TargetPolicy {
            allow_private: config.webhook.allow_private_targets,
        },
        ..ApiConfig::default()
    }
}

pub fn token(args: TokenArgs) -> Result<ExitCode> {
    let config = load_config()?;
    let secret = config
        .security
        .internal_jwt_secret
        .as_ref()
        .context("INTERNAL_JWT_SECRET is not set")?;
    let now = mmt_core::job::unix_now().max(0) as u64;
    let claims = Claims {
        sub: args.subject,
        tenant: args.tenant,
        roles: args.roles,
        exp: now + args.ttl,
        iat: Some(now),
        nbf: None,
        aud: None,
    };
    println!("{}", sign_hs256(secret.expose(), &claims)?);
    Ok(ExitCode::SUCCESS)
}
