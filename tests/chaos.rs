//! Fault injection at scale: jobs through RabbitMQ into PostgreSQL and a FHIR
//! server, consumed by three `mmt run --source rabbitmq` processes at once,
//! while the harness SIGKILLs workers at random (and restarts them, as an
//! orchestrator would), cuts RabbitMQ, PostgreSQL and Redis off for a while
//! each, and makes the FHIR server answer 500s, time out (it commits what the
//! client gave up on) and answer slowly. Then it counts: every job submitted
//! must end with exactly one completed row and one DocumentReference, or a
//! dead letter; none lost, none twice.
//!
//! Every outage goes through a TCP proxy this test owns (`common::proxy`), so
//! the machine's services keep running for the tests beside it. The worker's
//! Redis idempotency filter is on, so that Redis is on the path it cuts.
//!
//! The size comes from the environment; the defaults are the reduced run of
//! `make test` (100 jobs, 10 kills, each fault once):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `MMT_CHAOS_JOBS` | 100 | jobs submitted |
//! | `MMT_CHAOS_KILLS` | 10 | SIGKILLs of workers |
//! | `MMT_CHAOS_OUTAGE_SECONDS` | 6 | length of each service fault |
//! | `MMT_CHAOS_THROUGHPUT_JOBS` | 0 | jobs per throughput run with 1, 2 and 3 workers (0: none) |
//! | `MMT_CHAOS_SEED` | the clock | which workers are killed |
//! | `MMT_CHAOS_REPORT` | none | also write the report (JSON) to this file |
//! | `MMT_CHAOS_RESTART_SERVICES` | 0 | 1: also restart the machine's RabbitMQ and PostgreSQL (only when nothing else uses them) |
//!
//! The full size (docs/RELIABILITY.md):
//! `MMT_CHAOS_JOBS=1000 MMT_CHAOS_KILLS=50 MMT_CHAOS_OUTAGE_SECONDS=15
//! MMT_CHAOS_THROUGHPUT_JOBS=60 nice cargo nextest run --release --locked
//! --workspace -E 'binary(chaos)' --no-capture`.
//!
//! The harness can fail: the test build of `mmt` (feature `failpoints`)
//! acknowledges every message as soon as it is fed when
//! `MMT_FAILPOINT_ACK_ON_RECEIPT=1`, and the second test shows the harness
//! reporting the jobs the killed workers then lose.

mod common;

#[path = "../connectors/tests/fhir_fake/mod.rs"]
mod fhir_fake;

use common::postgres::{psql, unique, Schema, POSTGRES};
use common::proxy::Proxy;
use common::{distinct_clips, model_ready, read_lines, require_service, root};
use fhir_fake::{FakeFhir, Scripted};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BROKER: &str = "127.0.0.1:5672";
const REDIS: &str = "127.0.0.1:6379";
const TENANT: &str = "clinic-chaos";
/// Worker processes consuming the queue at once.
const WORKERS: usize = 3;
/// Messages a worker may hold unacknowledged.
const PREFETCH: usize = 8;
/// A worker exits once idle this long (and is restarted while work is left).
const IDLE_EXIT_SECONDS: &str = "5";
/// The FHIR client's timeout; the "timeout" fault answers later than this.
const FHIR_TIMEOUT: Duration = Duration::from_millis(2_000);

/// What one run does.
#[derive(Debug, Clone)]
struct Plan {
    jobs: usize,
    kills: usize,
    /// Kills happen as the documents pass these fractions of the jobs.
    kill_window: (f64, f64),
    /// Length of each service fault; `None`: no service faults.
    outage: Option<Duration>,
    seed: u64,
    /// The failpoint: acknowledge on receipt, before the sinks commit.
    ack_on_receipt: bool,
    /// Where the clips begin (runs in one process use different ones).
    first_clip: usize,
    /// Also restart the machine's RabbitMQ and PostgreSQL (the full run, alone).
    restart_services: bool,
}

impl Plan {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64;
        Self {
            jobs: number("MMT_CHAOS_JOBS", 100) as usize,
            kills: number("MMT_CHAOS_KILLS", 10) as usize,
            kill_window: (0.05, 0.85),
            outage: Some(Duration::from_secs(number("MMT_CHAOS_OUTAGE_SECONDS", 6))),
            seed: number("MMT_CHAOS_SEED", clock) | 1,
            ack_on_receipt: false,
            first_clip: 0,
            restart_services: number("MMT_CHAOS_RESTART_SERVICES", 0) == 1,
        }
    }

    /// The document counts at which the kills happen, evenly over the window.
    fn kill_points(&self) -> Vec<usize> {
        let (from, to) = self.kill_window;
        (0..self.kills)
            .map(|i| {
                let at = if self.kills == 1 {
                    from
                } else {
                    from + (to - from) * i as f64 / (self.kills - 1) as f64
                };
                ((at * self.jobs as f64).ceil() as usize).max(1)
            })
            .collect()
    }
}

/// A small xorshift generator: which worker each kill hits (reproducible from the seed).
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The services of one run: a queue, a schema, a FHIR server, and the proxies
/// every worker reaches RabbitMQ, PostgreSQL and Redis through.
struct Services {
    queue: String,
    schema: Schema,
    fhir: FakeFhir,
    broker: Proxy,
    store: Proxy,
    redis: Proxy,
    redis_prefix: String,
    /// On the broker itself, not the proxy: it sees the queue through every
    /// cut, and connects again after a restart of the broker.
    submitter: Mutex<Option<JobSubmitter>>,
    broker_config: RabbitMqConfig,
}

impl Services {
    fn start(name: &str) -> Self {
        let queue = unique(&format!("mmt.test.{name}"));
        let config =
            RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
        Self {
            submitter: Mutex::new(Some(JobSubmitter::connect(&config).expect("submitter"))),
            broker_config: config,
            queue,
            schema: Schema::create(&unique(&format!("mmt_{name}"))),
            fhir: FakeFhir::start(),
            broker: Proxy::start(BROKER),
            store: Proxy::start(POSTGRES),
            redis: Proxy::start(REDIS),
            redis_prefix: unique(&format!("mmt:test:{name}")),
        }
    }

    /// `query` on the broker, connecting again first if the last query
    /// failed (the broker restarted); `None` while the broker cannot answer.
    fn on_broker<T, E>(&self, query: impl Fn(&JobSubmitter) -> Result<T, E>) -> Option<T> {
        let mut submitter = self.submitter.lock().expect("not poisoned");
        if submitter.is_none() {
            *submitter = JobSubmitter::connect(&self.broker_config).ok();
        }
        let answer = query(submitter.as_ref()?).ok();
        if answer.is_none() {
            *submitter = None;
        }
        answer
    }

    /// Publishes one job per clip; returns the job ids expected.
    fn submit(&self, clips: &[Vec<u8>]) -> HashSet<String> {
        let mut expected = HashSet::new();
        for (i, audio) in clips.iter().enumerate() {
            let envelope = JobEnvelope::inline(TENANT, audio, Some("wav"));
            self.on_broker(|submitter| submitter.submit(&envelope, &format!("job-{i:05}"), None))
                .expect("publish");
            let hash = mmt_operators::identity::content_hash(audio);
            expected.insert(mmt_operators::identity::job_id(TENANT, &hash).0);
        }
        assert_eq!(expected.len(), clips.len(), "every clip is a distinct job");
        expected
    }

    fn worker(&self, out: &Path, log: &Path, ack_on_receipt: bool) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log");
        Command::new(env!("CARGO_BIN_EXE_mmt"))
            .args(["run", "--source", "rabbitmq", "--no-progress"])
            .args(["--workers", "1", "--threads", "1", "--batch-size", "4"])
            .args(["--idle-exit", IDLE_EXIT_SECONDS, "--out"])
            .arg(out)
            .current_dir(root())
            .env("EXTERNAL_RABBITMQ_ENABLED", "true")
            .env("EXTERNAL_RABBITMQ_HOST", self.broker.address())
            .env("MMT_RABBITMQ_QUEUE", &self.queue)
            .env("MMT_RABBITMQ_PREFETCH", PREFETCH.to_string())
            .env("DATABASE_URL", self.schema.url_at(&self.store.address()))
            .env("FHIR_SERVER_URL", self.fhir.base())
            .env(
                "FHIR_SERVER_TIMEOUT_MS",
                FHIR_TIMEOUT.as_millis().to_string(),
            )
            .env("ENABLE_REDIS_BLOOM_IDEMPOTENCY", "true")
            .env("EXTERNAL_REDIS_ENABLED", "true")
            .env("EXTERNAL_REDIS_HOST", self.redis.address())
            .env("REDIS_BLOOM_KEY_PREFIX", &self.redis_prefix)
            .env("REDIS_BLOOM_TTL_SECONDS", "3600")
            // Short waits, so that recovery is seen soon after a fault ends.
            .env("BACKOFF_BASE_SECONDS", "0.2")
            .env(
                "MMT_FAILPOINT_ACK_ON_RECEIPT",
                if ack_on_receipt { "1" } else { "0" },
            )
            .env_remove("AUDIT_LOG_FILE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mmt run")
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // After a restart of the broker the kept connection may be dead.
        let kept = self.submitter.get_mut().ok().and_then(Option::take);
        if kept.is_none_or(|submitter| submitter.delete_queues().is_err()) {
            if let Ok(submitter) = JobSubmitter::connect(&self.broker_config) {
                let _ = submitter.delete_queues();
            }
        }
    }
}

/// One worker process slot: the harness keeps it filled.
struct Slot {
    child: Option<Child>,
    out: PathBuf,
    log: PathBuf,
    /// When to start it again after it died.
    restart_at: Option<Instant>,
    starts: usize,
}

/// A service fault, its window and how the pipeline came out of it.
#[derive(Debug, Clone, serde::Serialize)]
struct FaultReport {
    fault: &'static str,
    seconds: f64,
    /// Documents when it began, and created while it lasted.
    documents_at_start: usize,
    documents_during: usize,
    /// From its end to the first document created after it (None: none came).
    first_document_after_s: Option<f64>,
    /// From its end to the first connection through its proxy (the workers'
    /// reconnection), where it cut a connection.
    reconnected_after_s: Option<f64>,
}

/// What a run counted.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Report {
    jobs_submitted: usize,
    kills: usize,
    worker_starts: usize,
    wall_seconds: f64,
    documents: usize,
    jobs_with_a_document: usize,
    duplicate_documents: usize,
    completed_rows: usize,
    rows_by_status: BTreeMap<String, usize>,
    /// `job_completed` events beyond one per job, over every worker's
    /// trail: reported, not a failure. The audit event is written before the
    /// store's commit point (operators/src/commit.rs), so a worker killed
    /// between the two leaves an event the redelivery writes again.
    duplicate_completion_events: usize,
    /// By `stage/class` (dlq.jsonl of every worker).
    dead_letters: BTreeMap<String, usize>,
    dead_letter_queue_depth: u32,
    lost: usize,
    unexpected_documents: usize,
    fhir_violations: Vec<String>,
    faults: Vec<FaultReport>,
    jobs_per_second: f64,
}

impl Report {
    /// Ok when nothing was lost and nothing happened twice.
    fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!("{} jobs lost", self.lost));
        }
        if self.duplicate_documents > 0 {
            problems.push(format!(
                "{} duplicate DocumentReferences",
                self.duplicate_documents
            ));
        }
        if self.unexpected_documents > 0 {
            problems.push(format!(
                "{} documents of no submitted job",
                self.unexpected_documents
            ));
        }
        if self.jobs_with_a_document != self.completed_rows {
            problems.push(format!(
                "{} jobs with a document but {} completed rows",
                self.jobs_with_a_document, self.completed_rows
            ));
        }
        if !self.fhir_violations.is_empty() {
            problems.push(format!("FHIR violations: {:?}", self.fhir_violations));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The service faults, in order, each when the documents pass a fraction of the jobs.
const FAULTS: [(&str, f64); 6] = [
    ("rabbitmq", 0.15),
    ("postgresql", 0.30),
    ("redis", 0.45),
    ("fhir_500", 0.55),
    ("fhir_timeout", 0.65),
    ("fhir_slow", 0.75),
];

/// Restarts of the real services (`MMT_CHAOS_RESTART_SERVICES=1`), after the
/// cuts: the broker recovers its durable queue from disk, the database its
/// committed rows, and every connection of every worker breaks.
const RESTARTS: [(&str, f64); 2] = [("rabbitmq_restart", 0.80), ("postgresql_restart", 0.87)];

/// The faults of a run, in order, with the share of documents each waits for.
fn fault_plan(restart_services: bool) -> Vec<(&'static str, f64)> {
    let restarts = if restart_services { &RESTARTS[..] } else { &[] };
    FAULTS.iter().chain(restarts).copied().collect()
}

/// Stops (`start` false) or starts the machine's own service, as
/// `scripts/services.sh` does.
fn service(name: &str, start: bool) {
    let action = if start { "start" } else { "stop" };
    let status = match name {
        "rabbitmq_restart" => Command::new("rabbitmqctl")
            .arg(if start { "start_app" } else { "stop_app" })
            .stdout(Stdio::null())
            .status(),
        _ => {
            let version = std::fs::read_dir("/etc/postgresql")
                .expect("PostgreSQL's configuration")
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .next()
                .expect("a PostgreSQL cluster");
            Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &version, "main", action])
                .args(if start { &[][..] } else { &["-m", "fast"][..] })
                .status()
        }
    };
    assert!(
        status.is_ok_and(|status| status.success()),
        "{name}: {action} failed"
    );
}

/// Runs the faults one after the other on their own thread.
fn inject_faults(
    services: &Services,
    plan: &Plan,
    outage: Duration,
    done: &AtomicBool,
    reports: &Mutex<Vec<FaultReport>>,
) {
    let documents = || services.fhir.resource_count();
    // Waits until `ready`; false when the run ended or `limit` passed first.
    let wait_until = |ready: &dyn Fn() -> bool, limit: Duration| -> bool {
        let from = Instant::now();
        while !ready() {
            if done.load(Ordering::Relaxed) || from.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    };
    for (fault, at) in fault_plan(plan.restart_services) {
        let threshold = ((at * plan.jobs as f64).ceil() as usize).max(1);
        if !wait_until(&|| documents() >= threshold, Duration::from_secs(3600)) {
            return;
        }
        let proxy = match fault {
            "rabbitmq" | "rabbitmq_restart" => Some(&services.broker),
            "postgresql" | "postgresql_restart" => Some(&services.store),
            "redis" => Some(&services.redis),
            _ => None,
        };
        let restart = fault.ends_with("_restart");
        let documents_at_start = documents();
        eprintln!("chaos: {fault} fault begins at {documents_at_start} documents");
        let began = Instant::now();
        match (fault, proxy) {
            _ if restart => service(fault, false),
            (_, Some(proxy)) => {
                proxy.refuse(true);
                proxy.sever();
            }
            ("fhir_500", _) => services.fhir.fault(Some(Scripted::Status(500, None))),
            // The server commits, then answers after the client gave up.
            ("fhir_timeout", _) => services
                .fhir
                .fault(Some(Scripted::Slow(FHIR_TIMEOUT + Duration::from_secs(1)))),
            _ => services.fhir.fault(Some(Scripted::Slow(FHIR_TIMEOUT / 3))),
        }
        std::thread::sleep(outage);
        let accepted = proxy.map(Proxy::accepted);
        match proxy {
            _ if restart => service(fault, true),
            Some(proxy) => proxy.refuse(false),
            None => services.fhir.fault(None),
        }
        let ended = Instant::now();
        let documents_at_end = documents();
        let limit = Duration::from_secs(300);
        let reconnected_after_s = match (proxy, accepted) {
            (Some(proxy), Some(accepted)) => wait_until(&|| proxy.accepted() > accepted, limit)
                .then(|| ended.elapsed().as_secs_f64()),
            _ => None,
        };
        let first_document_after_s = wait_until(&|| documents() > documents_at_end, limit)
            .then(|| ended.elapsed().as_secs_f64());
        let report = FaultReport {
            fault,
            seconds: ended.duration_since(began).as_secs_f64(),
            documents_at_start,
            documents_during: documents_at_end - documents_at_start,
            first_document_after_s,
            reconnected_after_s,
        };
        eprintln!("chaos: {report:?}");
        reports.lock().expect("not poisoned").push(report);
    }
}

/// Submits the plan's jobs, runs three workers through the kills and faults
/// until the queue is drained, and counts.
fn run(plan: &Plan) -> Report {
    eprintln!("chaos: {plan:?}");
    let services = Services::start("chaos");
    let clips = distinct_clips(plan.first_clip, plan.jobs);
    let expected = services.submit(&clips);
    let outs = tempfile::tempdir().expect("tempdir");
    let mut slots: Vec<Slot> = (0..WORKERS)
        .map(|i| Slot {
            child: None,
            out: outs.path().join(format!("worker-{i}")),
            log: outs.path().join(format!("worker-{i}.log")),
            restart_at: Some(Instant::now()),
            starts: 0,
        })
        .collect();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let fault_reports = Mutex::new(Vec::new());
    let mut random = Random(plan.seed);
    let kill_points = plan.kill_points();
    let mut kills = 0;
    let deadline = started + Duration::from_secs(600 + 3 * plan.jobs as u64);
    std::thread::scope(|scope| {
        let faults = plan.outage.map(|outage| {
            let (services, done, reports) = (&services, &done, &fault_reports);
            scope.spawn(move || inject_faults(services, plan, outage, done, reports))
        });
        let mut last_depth_check = Instant::now() - Duration::from_secs(10);
        let mut queue_waiting = true;
        loop {
            let now = Instant::now();
            let documents = services.fhir.resource_count();
            if now.duration_since(last_depth_check) >= Duration::from_millis(500) {
                last_depth_check = now;
                queue_waiting = services
                    .on_broker(JobSubmitter::queue_depth)
                    .is_none_or(|n| n > 0);
            }
            // Reap: a worker that died is started again; one that ran out of
            // work only while work is left.
            for slot in &mut slots {
                if let Some(child) = &mut slot.child {
                    if let Some(status) = child.try_wait().expect("wait") {
                        slot.child = None;
                        slot.restart_at = if status.success() {
                            None
                        } else {
                            Some(now + Duration::from_millis(500))
                        };
                    }
                }
                if slot.child.is_none() && slot.restart_at.is_none() && queue_waiting {
                    slot.restart_at = Some(now);
                }
                if slot.child.is_none() && slot.restart_at.is_some_and(|at| at <= now) {
                    std::fs::create_dir_all(&slot.out).expect("worker out");
                    slot.child = Some(services.worker(&slot.out, &slot.log, plan.ack_on_receipt));
                    slot.restart_at = None;
                    slot.starts += 1;
                }
            }
            // Kill: a random running worker, once the documents pass the next point.
            if kills < kill_points.len() && documents >= kill_points[kills] {
                let running: Vec<usize> = (0..slots.len())
                    .filter(|&i| slots[i].child.is_some())
                    .collect();
                if !running.is_empty() {
                    let slot = &mut slots[running[random.below(running.len())]];
                    let mut child = slot.child.take().expect("running");
                    child.kill().expect("SIGKILL");
                    let _ = child.wait();
                    slot.restart_at = Some(now + Duration::from_millis(200));
                    kills += 1;
                    eprintln!("chaos: kill {kills} at {documents} documents");
                }
            }
            let idle = slots
                .iter()
                .all(|slot| slot.child.is_none() && slot.restart_at.is_none());
            if idle && !queue_waiting {
                break;
            }
            if now > deadline {
                done.store(true, Ordering::Relaxed);
                for slot in &mut slots {
                    if let Some(child) = &mut slot.child {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                let tails: Vec<String> = slots
                    .iter()
                    .map(|slot| {
                        let log = std::fs::read_to_string(&slot.log).unwrap_or_default();
                        let lines: Vec<&str> = log.lines().collect();
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    })
                    .collect();
                panic!(
                    "no end after {:?} ({documents} documents):\n{}",
                    started.elapsed(),
                    tails.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done.store(true, Ordering::Relaxed);
        if let Some(faults) = faults {
            faults.join().expect("fault thread");
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let logs: Vec<String> = slots
        .iter()
        .map(|slot| std::fs::read_to_string(&slot.log).unwrap_or_default())
        .collect();
    assert!(
        !logs.iter().any(|log| log.contains("panicked")),
        "a worker panicked:\n{}",
        logs.join("\n")
    );
    let mut report = count(&services, &expected, &slots);
    report.kills = kills;
    report.worker_starts = slots.iter().map(|slot| slot.starts).sum();
    report.wall_seconds = wall;
    report.jobs_per_second = report.completed_rows as f64 / wall;
    report.faults = fault_reports.into_inner().expect("not poisoned");
    report
}

/// Counts what the run left in the FHIR server, the job store, the audit
/// trails and the dead-letter files.
fn count(services: &Services, expected: &HashSet<String>, slots: &[Slot]) -> Report {
    let mut per_job: HashMap<String, usize> = HashMap::new();
    let resources = services.fhir.resources();
    for resource in &resources {
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
    let rows = psql(&format!(
        "SELECT id, status FROM {}.jobs",
        services.schema.0
    ));
    let mut status_of: HashMap<String, String> = HashMap::new();
    let mut rows_by_status = BTreeMap::new();
    for line in rows.lines().filter(|line| !line.is_empty()) {
        let (id, status) = line.split_once('|').expect("id|status");
        *rows_by_status.entry(status.to_owned()).or_default() += 1;
        status_of.insert(id.to_owned(), status.to_owned());
    }
    let mut completions: HashMap<String, usize> = HashMap::new();
    let mut dead_letters = BTreeMap::new();
    for slot in slots {
        for event in read_lines(&slot.out.join("audit.jsonl")) {
            if event["action"] == "job_completed" {
                let job = event["job_id"].as_str().expect("job id").to_owned();
                *completions.entry(job).or_default() += 1;
            }
        }
        for letter in read_lines(&slot.out.join("dlq.jsonl")) {
            let class = &letter["class"];
            let class = class["class"].as_str().or(class.as_str()).unwrap_or("?");
            let stage = letter["stage"].as_str().unwrap_or("?");
            *dead_letters.entry(format!("{stage}/{class}")).or_default() += 1;
        }
    }
    let finished = |id: &String| {
        matches!(
            status_of.get(id).map(String::as_str),
            Some("completed" | "dead_lettered")
        )
    };
    Report {
        jobs_submitted: expected.len(),
        documents: resources.len(),
        jobs_with_a_document: per_job.len(),
        duplicate_documents: per_job.values().map(|n| n - 1).sum(),
        completed_rows: rows_by_status.get("completed").copied().unwrap_or(0),
        rows_by_status,
        duplicate_completion_events: completions.values().map(|n| n - 1).sum(),
        dead_letters,
        dead_letter_queue_depth: services
            .on_broker(JobSubmitter::dead_letter_depth)
            .expect("depth"),
        lost: expected.iter().filter(|id| !finished(id)).count(),
        unexpected_documents: per_job.keys().filter(|id| !expected.contains(*id)).count(),
        fhir_violations: services.fhir.violations(),
        ..Report::default()
    }
}

/// Jobs per second with `workers` processes and no faults, on fresh services.
fn throughput(workers: usize, jobs: usize, first_clip: usize) -> f64 {
    let services = Services::start("chaos_rate");
    let clips = distinct_clips(first_clip, jobs);
    services.submit(&clips);
    let outs = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let mut children: Vec<Child> = (0..workers)
        .map(|i| {
            let out = outs.path().join(format!("worker-{i}"));
            std::fs::create_dir_all(&out).expect("out");
            services.worker(&out, &outs.path().join(format!("worker-{i}.log")), false)
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    while services.fhir.resource_count() < jobs {
        assert!(Instant::now() < deadline, "throughput run: no end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    rate
}

fn services_up() -> bool {
    model_ready()
        && require_service("RabbitMQ", BROKER)
        && require_service("PostgreSQL", POSTGRES)
        && require_service("Redis", REDIS)
}

#[test]
fn chaos_loses_nothing_and_duplicates_nothing() {
    if !services_up() {
        return;
    }
    let plan = Plan::from_env();
    let report = run(&plan);
    // Reported (and judged) before the optional throughput runs, so that a
    // long run stopped during them keeps its figures.
    let json = serde_json::json!({
        "plan": {"jobs": plan.jobs, "kills": plan.kills, "seed": plan.seed,
                 "outage_seconds": plan.outage.map(|o| o.as_secs_f64())},
        "report": report,
    });
    let text = serde_json::to_string_pretty(&json).expect("report");
    eprintln!("chaos report:\n{text}");
    if let Ok(path) = std::env::var("MMT_CHAOS_REPORT") {
        std::fs::write(path, &text).expect("write the report");
    }
    if let Err(problems) = report.verdict() {
        panic!("{problems}");
    }
    let throughput_jobs = std::env::var("MMT_CHAOS_THROUGHPUT_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    for workers in (1..=WORKERS).filter(|_| throughput_jobs > 0) {
        let first = plan.jobs + workers * throughput_jobs;
        let rate = throughput(workers, throughput_jobs, first);
        eprintln!(
            "chaos throughput: {workers} worker(s), {throughput_jobs} jobs, {rate:.3} jobs/s"
        );
    }
    assert_eq!(report.kills, plan.kills, "every kill was made");
    let faults: Vec<&str> = report.faults.iter().map(|f| f.fault).collect();
    let planned: Vec<&str> = fault_plan(plan.restart_services)
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(faults, planned, "every fault was injected");
    assert!(
        report
            .faults
            .iter()
            .all(|fault| fault.first_document_after_s.is_some()),
        "documents came after every fault"
    );
    assert_eq!(
        report.jobs_with_a_document,
        plan.jobs
            - report
                .rows_by_status
                .get("dead_lettered")
                .copied()
                .unwrap_or(0)
    );
}

/// The harness can fail: with acknowledgement before commit (a test-only
/// failpoint), killed workers take the jobs they held with them, and the
/// report says so.
#[test]
fn chaos_reports_the_jobs_lost_when_messages_are_acknowledged_before_commit() {
    if !services_up() {
        return;
    }
    let plan = Plan {
        jobs: 24,
        kills: 3,
        kill_window: (0.1, 0.4),
        outage: None,
        ack_on_receipt: true,
        first_clip: 5_000,
        ..Plan::from_env()
    };
    let report = run(&plan);
    eprintln!("chaos report with acknowledgement before commit: {report:#?}");
    assert!(report.kills > 0, "a worker was killed");
    assert!(report.lost > 0, "the killed workers lost jobs: {report:#?}");
    let verdict = report.verdict().expect_err("the harness reports the loss");
    assert!(verdict.contains("jobs lost"), "{verdict}");
}
