//! The Redis idempotency filter against real Redis.
//!
//! - The shared Redis on 127.0.0.1:6379 (never flushed or stopped here): every
//!   test uses its own random key prefix and deletes its keys at the end. It has
//!   no RedisBloom module, so these tests run the bitmap backend; the RedisBloom
//!   commands and the detection are unit-tested in `src/redis/filter.rs`.
//! - Failure behaviour: a private `redis-server` started on a free loopback
//!   port, killed (and frozen) mid-test, then restarted.
//!
//! When the shared Redis is down the tests print "skipping: ..." and pass,
//! unless `CI=true` (then they fail): see `common::require_service`.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mmt_connectors::redis::filter::{generation, key};
use mmt_connectors::redis::{Backend, BackendChoice, RedisFilterConfig, RedisIdempotencyFilter};
use mmt_core::error::ErrorClass;
use mmt_core::idempotency::{FilterAnswer, IdempotencyFilter};
use mmt_core::job::JobId;

const SHARED: &str = "127.0.0.1:6379";

/// A key prefix no other test (or run) uses, whose keys are deleted on drop.
struct Keys {
    prefix: String,
    admin: redis::Connection,
}

impl Keys {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("mmt-test:{test}:{}:{nanos}", std::process::id());
        let admin = redis::Client::open(format!("redis://{SHARED}"))
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("admin connection to the shared Redis");
        Self { prefix, admin }
    }

    fn config(&self) -> RedisFilterConfig {
        RedisFilterConfig::new(SHARED).key_prefix(self.prefix.clone())
    }

    fn list(&mut self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut self.admin)
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Seconds until `key` expires (-1: no expiry, -2: no such key).
    fn ttl(&mut self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query(&mut self.admin)
            .expect("TTL")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        for key in self.list() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query(&mut self.admin);
        }
    }
}

/// Distinct job ids.
fn ids(run: &str, range: std::ops::Range<u64>) -> Vec<JobId> {
    range.map(|n| JobId(format!("{run}-{n:016x}"))).collect()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn no_false_negatives_and_the_configured_false_positive_rate() {
    if !common::require_service("Redis", SHARED) {
        return;
    }
    let mut keys = Keys::new("fp-rate");
    let rate = 0.01;
    let mut filter = keys
        .config()
        .sized_for(5_000, rate)
        .ttl(Duration::from_secs(3_600))
        .build()
        .expect("connect");
    let Backend::Bitmap(layout) = filter.backend() else {
        panic!(
            "the shared Redis has no RedisBloom module; got {:?}",
            filter.backend()
        );
    };
    assert_eq!(filter.kind(), "redis-bitmap");

    let inserted = ids("in", 0..5_000);
    let started = Instant::now();
    for id in &inserted {
        filter.insert(id).expect("insert");
    }
    let insert_time = started.elapsed();
    let started = Instant::now();
    for id in &inserted {
        assert_eq!(
            filter.check(id).expect("check"),
            FilterAnswer::MaybeSeen,
            "false negative for {id}"
        );
    }
    let check_time = started.elapsed();

    let probes = ids("out", 0..20_000);
    let false_positives = probes
        .iter()
        .filter(|id| filter.check(id).expect("check") == FilterAnswer::MaybeSeen)
        .count();
    let measured = false_positives as f64 / probes.len() as f64;
    println!(
        "bitmap {} bits, {} hashes: {false_positives}/{} false positives = {measured:.4} \
         (configured {rate}, theory {:.4}); 5000 inserts {insert_time:?}, 5000 checks {check_time:?}",
        layout.bits,
        layout.hashes,
        probes.len(),
        layout.expected_false_positive_rate(5_000),
    );
    assert!(
        measured <= rate * 1.6,
        "false-positive rate {measured} far above the configured {rate}"
    );
    assert!(
        measured > 0.0,
        "0 false positives in 20,000 probes: is it hashing at all?"
    );
    let written = keys.list();
    assert!(!written.is_empty() && written.len() <= 2, "{written:?}");
}

#[test]
fn keys_expire_two_ttls_after_their_last_write() {
    if !common::require_service("Redis", SHARED) {
        return;
    }
    let mut keys = Keys::new("ttl");
    let mut filter = keys
        .config()
        .sized_for(1_000, 0.01)
        .ttl(Duration::from_secs(30))
        .build()
        .expect("connect");
    filter.insert(&JobId("job-1".into())).expect("insert");
    let key = filter.current_key();
    assert!(key.starts_with(&format!("{}:bm:", keys.prefix)), "{key}");
    let ttl = keys.ttl(&key);
    assert!((55..=60).contains(&ttl), "TTL {ttl}, want about 2 × 30 s");
    assert_eq!(keys.list(), [key]);
}

#[test]
fn generations_roll_over_and_old_ones_are_forgotten() {
    if !common::require_service("Redis", SHARED) {
        return;
    }
    let mut keys = Keys::new("rollover");
    let config = keys
        .config()
        .sized_for(1_000, 0.01)
        .ttl(Duration::from_secs(1));
    let mut filter = config.build().expect("connect");
    let backend = filter.backend();
    let id = JobId("job-rollover".into());

    // Start just after a generation boundary so the steps below are not racing one.
    let sleep_to_generation = |g: u64| {
        while generation(unix_seconds(), 1) < g {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = generation(unix_seconds(), 1) + 1;
    sleep_to_generation(first);
    filter.insert(&id).expect("insert");
    let first_key = key(&keys.prefix, &backend, first);
    assert_eq!(filter.current_key(), first_key);
    assert!(
        (1..=2).contains(&keys.ttl(&first_key)),
        "expires after 2 × 1 s"
    );
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);

    sleep_to_generation(first + 1);
    assert_ne!(filter.current_key(), first_key, "a new generation");
    assert_eq!(
        filter.check(&id).expect("check"),
        FilterAnswer::MaybeSeen,
        "still remembered through the previous generation"
    );
    // Written again now, it would live on in the new generation; don't.
    sleep_to_generation(first + 2);
    assert_eq!(
        filter.check(&id).expect("check"),
        FilterAnswer::CertainlyNew,
        "two generations later it is forgotten"
    );
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(keys.ttl(&first_key), -2, "the old generation's key expired");
}

#[test]
fn health_check_reports_the_backend_and_unreachable_redis() {
    if !common::require_service("Redis", SHARED) {
        return;
    }
    let keys = Keys::new("health");
    let backend = keys.config().health_check().expect("healthy");
    assert!(matches!(backend, Backend::Bitmap(_)), "{backend:?}");
    // Forcing RedisBloom on a Redis without the module is refused, not retried.
    let error = keys
        .config()
        .backend(BackendChoice::RedisBloom)
        .build()
        .expect_err("no module");
    assert_eq!(error.class(), ErrorClass::Internal);
    assert!(
        error.to_string().contains("no RedisBloom module"),
        "{error}"
    );

    let port = free_port();
    let started = Instant::now();
    let error = RedisFilterConfig::new(format!("127.0.0.1:{port}"))
        .health_check()
        .expect_err("nothing listens there");
    assert!(error.class().is_retryable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A `redis-server` of this test's own, on a free loopback port.
struct PrivateRedis {
    port: u16,
    child: Child,
    /// Sent SIGSTOP and not yet SIGCONT.
    frozen: bool,
    reaped: bool,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let server = Self {
            port,
            child,
            frozen: false,
            reaped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn signal(&mut self, signal: &str) {
        self.frozen = signal == "-STOP";
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        if self.frozen {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // Never leave a frozen or running server behind.
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Calls `check` and returns its error and how long it took.
fn failing_check(filter: &mut RedisIdempotencyFilter, id: &JobId) -> (ErrorClass, Duration) {
    let started = Instant::now();
    let error = filter.check(id).expect_err("Redis is down");
    (error.class, started.elapsed())
}

#[test]
fn a_dead_redis_fails_fast_and_the_filter_reconnects() {
    let server = PrivateRedis::start(free_port());
    let port = server.port;
    let mut filter = RedisFilterConfig::new(format!("127.0.0.1:{port}"))
        .key_prefix("mmt-test:private")
        .sized_for(1_000, 0.01)
        .timeouts(Duration::from_millis(500), Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(300), Duration::from_secs(1))
        .build()
        .expect("connect");
    let id = JobId("job-outage".into());
    filter.insert(&id).expect("insert");
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);

    // Killed: the connection breaks, the one immediate reconnect is refused,
    // and later calls fail without touching the network until the backoff ends.
    server.stop();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..50 {
        let (class, took) = failing_check(&mut filter, &id);
        assert_eq!(class, ErrorClass::External { retryable: true });
        slowest = slowest.max(took);
    }
    let fifty = started.elapsed();
    assert!(filter.insert(&id).is_err());
    println!("redis killed: slowest failing call {slowest:?}, 50 calls in {fifty:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a dead Redis must fail fast"
    );
    assert!(fifty < Duration::from_secs(2), "no redial on every job");

    // Back on the same port (empty: it kept nothing): after the backoff the
    // filter reconnects by itself.
    let mut server = PrivateRedis::start(port);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let answer = loop {
        match filter.check(&id) {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(Instant::now() < deadline, "no reconnect: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    println!("reconnected {:?} after the restart", started.elapsed());
    assert_eq!(
        answer,
        FilterAnswer::CertainlyNew,
        "a restarted Redis forgot"
    );
    filter.insert(&id).expect("insert after reconnect");
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);

    // Frozen (SIGSTOP): TCP still connects but nothing answers; the command
    // timeout bounds the call.
    server.signal("-STOP");
    let (class, took) = failing_check(&mut filter, &id);
    println!("redis frozen: failing call {took:?}");
    assert!(class.is_retryable());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (_, took) = failing_check(&mut filter, &id);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    server.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while filter.check(&id).is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);
}

#[test]
fn a_lazy_filter_starts_before_redis_and_connects_later() {
    let port = free_port();
    let mut filter = RedisFilterConfig::new(format!("127.0.0.1:{port}"))
        .key_prefix("mmt-test:lazy")
        .sized_for(1_000, 0.01)
        .reconnect_backoff(Duration::from_millis(200), Duration::from_millis(400))
        .build_lazy()
        .expect("no connection needed");
    let id = JobId("job-lazy".into());
    let (class, took) = failing_check(&mut filter, &id);
    assert!(class.is_retryable());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let _server = PrivateRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match filter.check(&id) {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(Instant::now() < deadline, "never connected: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(answer, FilterAnswer::CertainlyNew);
    assert!(
        matches!(filter.backend(), Backend::Bitmap(_)),
        "detected on connect"
    );
    filter.insert(&id).expect("insert");
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);
}
