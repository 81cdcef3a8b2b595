//! `mmt run` with the Redis idempotency filter, on a private `redis-server`
//! (never the machine's shared one) killed in the middle of the run: dedupe
//! falls back to the job store, says so once in the log and in the metrics,
//! and every distinct job still yields exactly one document. A second run with
//! a fresh (empty) Redis writes nothing: the store knows the finished jobs.

mod common;

use common::{
    completed_events, distinct_recordings, documents, documents_written, model_ready, read_lines,
    root,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The warning dedupe logs once per outage (operators/src/dedupe.rs).
const OUTAGE_WARNING: &str =
    "idempotency filter failed; deduplicating with the job store alone until it recovers";

/// A private redis-server on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one, or says why not: `None` means "skip" (a failure under CI=true).
    fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(redis) => Some(redis),
            Err(reason) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "redis-server unavailable under CI=true: {reason}"
                );
                eprintln!("skipping: {reason}");
                None
            }
        }
    }

    fn try_start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server does not start: {e}"))?;
        let mut redis = Self { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(redis);
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not listen on {addr} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mmt run` over `input` with the filter on the Redis at `redis`, stderr to `log`.
fn spawn_run(
    input: &Path,
    out: &Path,
    redis: &str,
    prefix: &str,
    log: &Path,
    follow: bool,
) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    if follow {
        command.arg("run").arg("--follow");
    } else {
        command.arg("run");
    }
    command
        .args(["--no-progress", "--batch-size", "2", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--metrics-file")
        .arg(out.join("metrics.prom"))
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .env("ENABLE_REDIS_BLOOM_IDEMPOTENCY", "true")
        .env("EXTERNAL_REDIS_ENABLED", "true")
        .env("EXTERNAL_REDIS_HOST", redis)
        .env("REDIS_BLOOM_KEY_PREFIX", prefix)
        .env(
            "RUST_LOG",
            "mmt=info,mmt_operators=info,mmt_pipeline=info,warn",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mmt run")
}

/// The value of an unlabelled metric, or the sum over a labelled one's series.
fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn a_redis_outage_mid_run_falls_back_to_the_job_store() {
    if !model_ready() {
        return;
    }
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let prefix = format!("mmt:test:outage:{}", std::process::id());

    // 24 distinct recordings and 4 byte-identical copies of some of them; the
    // second half arrives (the run follows the folder) after Redis has died,
    // so those jobs are deduplicated with Redis down.
    let input = tempfile::tempdir().expect("tempdir");
    let recordings = distinct_recordings(24);
    let write_half = |half: usize| {
        for (name, bytes) in &recordings[half * 12..half * 12 + 12] {
            std::fs::write(input.path().join(name), bytes).expect("write");
        }
        for i in half * 2..half * 2 + 2 {
            let (_, bytes) = &recordings[i * 5 + 1];
            std::fs::write(input.path().join(format!("copy_{i}.wav")), bytes).expect("write");
        }
    };
    write_half(0);
    let out = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");

    // First run: Redis dies once a few documents exist.
    let first_log: PathBuf = logs.path().join("first.log");
    let started = Instant::now();
    let mut run = spawn_run(
        input.path(),
        out.path(),
        &redis.address(),
        &prefix,
        &first_log,
        true,
    );
    let wait_for_documents = |run: &mut Child, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while documents_written(out.path()) < count {
            if let Some(status) = run.try_wait().expect("wait") {
                let log = std::fs::read_to_string(&first_log).unwrap_or_default();
                panic!("the run ended ({status}) before {count} documents existed:\n{log}");
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&first_log).unwrap_or_default();
                let letters = read_lines(&out.path().join("dlq.jsonl"));
                panic!(
                    "{} of {count} documents after 180 s; dead letters: {letters:?}\n{log}",
                    documents_written(out.path())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_documents(&mut run, 3);
    redis.kill();
    let killed_at = documents_written(out.path());
    write_half(1);
    wait_for_documents(&mut run, 24);
    let stopped = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    let status = run.wait().expect("wait");
    eprintln!(
        "first run: {:.1} s, Redis killed at {killed_at} documents",
        started.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&first_log).unwrap_or_default();
    assert!(status.success(), "first run: {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        killed_at < 12,
        "Redis was killed mid-run ({killed_at} documents)"
    );

    let mut per_id: HashMap<String, usize> = HashMap::new();
    for doc in documents(out.path()) {
        *per_id
            .entry(doc["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), 24, "one document per distinct job\n{log}");
    assert!(
        per_id.values().all(|&n| n == 1),
        "duplicates made no second document: {per_id:?}"
    );
    assert_eq!(
        completed_events(out.path()),
        24,
        "one completion event per job"
    );
    assert!(
        log.contains(OUTAGE_WARNING),
        "the log reports the filter outage:\n{log}"
    );
    let metrics = std::fs::read_to_string(out.path().join("metrics.prom")).expect("metrics file");
    let fallbacks = metric(&metrics, "idempotency_filter_fallback_total");
    assert!(
        fallbacks.is_some_and(|n| n > 0.0),
        "fallbacks counted ({fallbacks:?}):\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "idempotency_filter_available"),
        Some(0.0),
        "the filter is reported down:\n{metrics}"
    );

    // Second run, on a fresh and empty Redis: the store confirms every job.
    let Some(fresh) = Redis::start() else {
        panic!("redis-server started once but not twice");
    };
    let second_log = logs.path().join("second.log");
    let started = Instant::now();
    let status = spawn_run(
        input.path(),
        out.path(),
        &fresh.address(),
        &prefix,
        &second_log,
        false,
    )
    .wait()
    .expect("wait");
    eprintln!("second run: {:.1} s", started.elapsed().as_secs_f64());
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(status.success(), "second run: {status}\n{log}");
    assert_eq!(documents(out.path()).len(), 24, "no new document\n{log}");
    assert_eq!(completed_events(out.path()), 24, "no new completion event");
    let letters = read_lines(&out.path().join("dlq.jsonl"));
    assert!(letters.is_empty(), "no dead letters: {letters:?}");
}
