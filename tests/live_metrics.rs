//! `mmt run --source rabbitmq --metrics-listen`: the worker's `/metrics`,
//! scraped while it works through a queue, shows the broker's backlog (read
//! from RabbitMQ) and the per-job end-to-end histogram counting up.

mod common;

use common::postgres::unique;
use common::{distinct_recordings, model_ready, require_service, root};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const BROKER: &str = "127.0.0.1:5672";
const JOBS: usize = 5;

/// One `GET /metrics`, or `None` while the worker is not listening.
fn scrape(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .starts_with("HTTP/1.1 200")
        .then(|| {
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
        })
        .flatten()
}

/// The value of an unlabelled sample, e.g. `transcription_queue_depth 4`.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[test]
fn a_running_worker_exposes_the_backlog_and_the_end_to_end_histogram() {
    if !model_ready() || !require_service("RabbitMQ", BROKER) {
        return;
    }
    let queue = unique("mmt.test.metrics");
    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    for (i, (_, audio)) in distinct_recordings(JOBS).iter().enumerate() {
        let envelope = JobEnvelope::inline("clinic-metrics", audio, Some("wav"));
        submitter
            .submit(&envelope, &format!("metrics-{i}"), None)
            .expect("publish");
    }
    assert_eq!(submitter.queue_depth().expect("depth"), JOBS as u32);

    let out = tempfile::tempdir().expect("tempdir");
    // Prefetch 1 and batches of 1: jobs go one at a time, so the backlog
    // stays visible on the broker and the histogram counts up one by one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["run", "--source", "rabbitmq", "--no-progress"])
        .args(["--idle-exit", "8", "--batch-size", "1", "--workers", "1"])
        .args(["--metrics-listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .current_dir(root())
        .env("EXTERNAL_RABBITMQ_ENABLED", "true")
        .env("EXTERNAL_RABBITMQ_HOST", BROKER)
        .env("MMT_RABBITMQ_QUEUE", &queue)
        .env("MMT_RABBITMQ_PREFETCH", "1")
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("MMT_METRICS_LISTEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mmt run");

    // The worker names the address it bound (port 0: no race for a port).
    let log = Arc::new(Mutex::new(String::new()));
    let (address_tx, address_rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    let reader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("mmt: metrics at http://") {
                    if let Some(address) = rest.strip_suffix("/metrics") {
                        let _ = address_tx.send(address.parse::<SocketAddr>().ok());
                    }
                }
                let mut log = log.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let address = address_rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("no metrics address:\n{}", log.lock().expect("log"));
        });

    let mut backlogs = Vec::new();
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(exposition) = scrape(address) {
            if let Some(depth) = sample(&exposition, "transcription_queue_depth") {
                backlogs.push(depth);
            }
            if let Some(count) = sample(
                &exposition,
                "transcription_end_to_end_duration_seconds_count",
            ) {
                if counts.last() != Some(&count) {
                    counts.push(count);
                }
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not finish:\n{}", log.lock().expect("log"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().expect("stderr reader");
    let log = log.lock().expect("log").clone();
    assert!(status.success(), "{status}:\n{log}");
    eprintln!("backlog readings {backlogs:?}, end-to-end counts {counts:?}");

    // The broker's backlog: read from RabbitMQ while jobs were still queued.
    assert!(
        backlogs.iter().any(|&depth| depth >= 1.0),
        "no backlog seen: {backlogs:?}"
    );
    // The per-job histogram rose while the worker ran, to one per job.
    assert_eq!(counts.last(), Some(&(JOBS as f64)), "{counts:?}\n{log}");
    assert!(
        counts
            .iter()
            .any(|&count| count > 0.0 && count < JOBS as f64),
        "a scrape saw the histogram part-way: {counts:?}"
    );
    assert!(
        counts.windows(2).all(|pair| pair[0] < pair[1]),
        "{counts:?}"
    );
    assert_eq!(submitter.queue_depth().expect("depth"), 0);
    submitter.delete_queues().expect("clean up");
}

#[test]
fn retention_purge_writes_its_metrics_for_the_textfile_collector() {
    let out = tempfile::tempdir().expect("tempdir");
    let collector = tempfile::tempdir().expect("tempdir");
    let textfile = collector.path().join("mmt_retention.prom");
    let purge = || {
        Command::new(env!("CARGO_BIN_EXE_mmt"))
            .args(["retention", "purge", "--out"])
            .arg(out.path())
            .arg("--metrics-textfile")
            .arg(&textfile)
            .current_dir(root())
            .env_remove("DATABASE_URL")
            .env_remove("AUDIT_LOG_FILE")
            .output()
            .expect("mmt retention purge")
    };
    let first = purge();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = std::fs::read_to_string(&textfile).expect("the textfile");
    assert!(
        text.contains("# TYPE retention_purged_total counter"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "retention_purged_total{kind=\"job\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "retention_purged_total{kind=\"document\"}"),
        Some(0.0)
    );
    // A second run replaces the file; nothing else is left in the folder.
    assert!(purge().status.success());
    let names: Vec<_> = std::fs::read_dir(collector.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("mmt_retention.prom")]);
}
