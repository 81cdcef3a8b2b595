//! A job store outage in the middle of a RabbitMQ run with a FHIR server:
//! PostgreSQL is cut off (through a proxy; the machine's server keeps running)
//! for half a minute while jobs are in flight. The commit stage waits it out
//! with the source paused: no job is dead-lettered, no document is created
//! twice, every job completes once the store is back, and the outage shows in
//! the `sink_outage` metrics and in one log line at each end.

mod common;

#[path = "../connectors/tests/fhir_fake/mod.rs"]
mod fhir_fake;

use common::postgres::{psql, unique, Schema, POSTGRES};
use common::proxy::Proxy;
use common::{distinct_recordings, model_ready, require_service, root};
use fhir_fake::FakeFhir;
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BROKER: &str = "127.0.0.1:5672";
const JOBS: usize = 40;
/// Messages the worker may hold unacknowledged: the most that can be in
/// flight when the outage starts.
const PREFETCH: usize = 8;
const OUTAGE: Duration = Duration::from_secs(60);
/// The log lines of one outage (mmt_core::retry::Outage).
const OUTAGE_STARTED: &str = "outage: writes are retried with backoff";
const OUTAGE_OVER: &str = "outage over";

fn worker(queue: &str, database_url: &str, fhir: &str, out: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("worker log");
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args([
            "run",
            "--source",
            "rabbitmq",
            "--no-progress",
            "--idle-exit",
            "4",
            "--batch-size",
            "8",
            "--metrics-file",
        ])
        .arg(out.join("metrics.txt"))
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .env("EXTERNAL_RABBITMQ_ENABLED", "true")
        .env("EXTERNAL_RABBITMQ_HOST", BROKER)
        .env("MMT_RABBITMQ_QUEUE", queue)
        .env("MMT_RABBITMQ_PREFETCH", PREFETCH.to_string())
        .env("DATABASE_URL", database_url)
        .env("FHIR_SERVER_URL", fhir)
        // Short waits, so the recovery is seen soon after the store is back.
        .env("BACKOFF_BASE_SECONDS", "0.2")
        .env_remove("AUDIT_LOG_FILE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mmt run")
}

/// The job id each document was created for, with how many documents it has.
fn documents_per_job(fhir: &FakeFhir) -> HashMap<String, usize> {
    let mut per_job = HashMap::new();
    for resource in fhir.resources() {
        let job = resource["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|identifier| identifier["system"] == "urn:mmt:job")
            .and_then(|identifier| identifier["value"].as_str())
            .expect("every document names its job")
            .to_owned();
        *per_job.entry(job).or_default() += 1;
    }
    per_job
}

fn wait_for_documents(child: &mut Child, fhir: &FakeFhir, at_least: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while fhir.resources().len() < at_least {
        if let Some(status) = child.try_wait().expect("wait") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the worker exited early ({status}):\n{log}");
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One worker on its own queue, schema and FHIR server, its store behind a proxy.
struct Run {
    schema: Schema,
    out: tempfile::TempDir,
    fhir: FakeFhir,
    /// `None` once its queues are deleted (on drop).
    submitter: Option<JobSubmitter>,
    store: Proxy,
    child: Child,
    log: std::path::PathBuf,
}

impl Run {
    /// Publishes `JOBS` jobs and starts the worker.
    fn start(name: &str) -> Self {
        let queue = unique(&format!("mmt.test.{name}"));
        let schema = Schema::create(&unique(&format!("mmt_{name}")));
        let out = tempfile::tempdir().expect("tempdir");
        let fhir = FakeFhir::start();
        let config =
            RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
        let submitter = JobSubmitter::connect(&config).expect("submitter");
        for (i, (_, audio)) in distinct_recordings(JOBS).iter().enumerate() {
            let envelope = JobEnvelope::inline("clinic-outage", audio, Some("wav"));
            submitter
                .submit(&envelope, &format!("job-{i:03}"), None)
                .expect("publish");
        }
        let store = Proxy::start(POSTGRES);
        let log = out.path().join("worker.log");
        let child = worker(
            &queue,
            &schema.url_at(&store.address()),
            &fhir.base(),
            out.path(),
            &log,
        );
        Self {
            schema,
            out,
            fhir,
            submitter: Some(submitter),
            store,
            child,
            log,
        }
    }

    /// Cuts the store off: open connections are cut, new ones refused.
    fn cut_store(&self) {
        self.store.refuse(true);
        self.store.sever();
    }

    fn submitter(&self) -> &JobSubmitter {
        self.submitter.as_ref().expect("open until dropped")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn completed_rows(&self) -> usize {
        psql(&format!(
            "SELECT count(*) FROM {}.jobs WHERE status = 'completed'",
            self.schema.0
        ))
        .parse()
        .expect("a count")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(submitter) = self.submitter.take() {
            let _ = submitter.delete_queues();
        }
    }
}

#[test]
fn a_job_store_outage_pauses_the_run_and_dead_letters_nothing() {
    if !model_ready()
        || !require_service("RabbitMQ", BROKER)
        || !require_service("PostgreSQL", POSTGRES)
    {
        return;
    }
    let mut run = Run::start("outage");
    wait_for_documents(&mut run.child, &run.fhir, 8, &run.log);

    run.cut_store();
    let cut_at = run.fhir.resources().len();
    std::thread::sleep(OUTAGE);
    let during = run.fhir.resources().len();
    let waiting = run.submitter().queue_depth().expect("depth");
    run.store.refuse(false);
    eprintln!("store cut at {cut_at} documents, {during} at its end, {waiting} messages waiting");
    assert!(
        during - cut_at <= PREFETCH,
        "the source paused: only jobs already in flight were written ({cut_at} → {during})"
    );
    assert!(
        waiting as usize >= JOBS.saturating_sub(during + PREFETCH),
        "the queue kept the rest"
    );

    let status = run.child.wait().expect("worker");
    let log = run.log_text();
    assert!(status.success(), "{log}");

    let per_job = documents_per_job(&run.fhir);
    assert_eq!(per_job.len(), JOBS, "one document per job");
    assert!(per_job.values().all(|&n| n == 1), "no duplicate documents");
    assert!(
        run.fhir.violations().is_empty(),
        "{:?}",
        run.fhir.violations()
    );
    assert_eq!(
        run.completed_rows(),
        JOBS,
        "every job completed after the store came back"
    );
    assert_eq!(run.submitter().queue_depth().expect("depth"), 0);
    let dead_letters = run.submitter().dead_letter_depth().expect("depth");
    assert_eq!(dead_letters, 0, "no dead letters");

    let metrics = std::fs::read_to_string(run.out.path().join("metrics.txt")).expect("metrics");
    let value = |series: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
    };
    let outages = value("sink_outage_total{sink=\"store\"}").unwrap_or(0.0);
    assert!(outages >= 1.0, "the outage is counted:\n{metrics}");
    assert_eq!(value("sink_outage{sink=\"store\"}"), Some(0.0), "and over");
    assert_eq!(value("dlq_messages_total"), None, "nothing dead-lettered");
    let started = log.matches(OUTAGE_STARTED).count();
    let over = log.matches(OUTAGE_OVER).count();
    eprintln!(
        "{JOBS} jobs: {} documents, {} completed rows, {dead_letters} dead letters, \
         sink_outage_total{{sink=\"store\"}} {outages}, {started} outage start and {over} end log lines",
        per_job.len(),
        run.completed_rows()
    );
    assert!(started >= 1, "the outage is logged:\n{log}");
    assert_eq!(started, over, "one line at each end");
    assert!(
        started <= 3,
        "one line per outage, not per retry ({started})"
    );
}

/// SIGTERM during the outage: the worker exits in bounded time, and nothing
/// it could not finish is acknowledged (every message without a completed
/// row is back in the queue for the next worker).
#[test]
fn a_stop_during_a_store_outage_exits_and_acknowledges_nothing_unfinished() {
    if !model_ready()
        || !require_service("RabbitMQ", BROKER)
        || !require_service("PostgreSQL", POSTGRES)
    {
        return;
    }
    let mut run = Run::start("outage_stop");
    wait_for_documents(&mut run.child, &run.fhir, 4, &run.log);
    run.cut_store();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.log_text().contains(OUTAGE_STARTED) {
        assert!(
            Instant::now() < deadline,
            "no outage seen:\n{}",
            run.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped_at = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &run.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit_deadline = stopped_at + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = run.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "no exit within 90 s of SIGTERM:\n{}",
            run.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = stopped_at.elapsed();
    run.store.refuse(false);
    // The broker requeues what its closed connection left unacknowledged.
    std::thread::sleep(Duration::from_secs(2));
    let waiting = run.submitter().queue_depth().expect("depth") as usize;
    let completed = run.completed_rows();
    eprintln!(
        "stopped {:.1} s after SIGTERM ({status}); {waiting} messages back in the queue, {completed} completed rows",
        took.as_secs_f64()
    );
    assert!(
        waiting + completed >= JOBS,
        "only finished jobs were acknowledged ({waiting} waiting, {completed} completed)"
    );
    assert!(waiting > 0, "the unfinished jobs wait for the next worker");
    assert_eq!(run.submitter().dead_letter_depth().expect("depth"), 0);
}
