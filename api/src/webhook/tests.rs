//! The delivery loop over an in-memory due list, with receivers on loopback
//! (the only address tests send to; the guard's refusals of other addresses
//! are tested as decisions in `target.rs`).

use super::*;
use mmt_core::control::JobRecord;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

type Outcome = (JobId, Result<(), String>, Option<i64>);

/// Due callbacks in memory: a callback is due until an outcome is recorded.
/// Pages like the job store: the longest due first, per tenant then overall.
#[derive(Default)]
struct MemoryStore {
    due: Mutex<Vec<DueCallback>>,
    outcomes: Mutex<Vec<Outcome>>,
}

impl MemoryStore {
    fn with(callbacks: Vec<DueCallback>) -> Arc<Self> {
        Arc::new(Self {
            due: Mutex::new(callbacks),
            outcomes: Mutex::default(),
        })
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

impl CallbackStore for MemoryStore {
    fn due(&self, limit: u32, per_tenant: u32) -> Result<Vec<DueCallback>, ControlError> {
        let mut taken: HashMap<String, u32> = HashMap::new();
        Ok(self
            .due
            .lock()
            .unwrap()
            .iter()
            .filter(|callback| {
                let count = taken.entry(callback.job.tenant.clone()).or_default();
                *count += 1;
                *count <= per_tenant
            })
            .take(limit as usize)
            .cloned()
            .collect())
    }

    fn record(
        &self,
        id: &JobId,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
    ) -> Result<(), ControlError> {
        self.due
            .lock()
            .unwrap()
            .retain(|callback| &callback.job.id != id);
        self.outcomes
            .lock()
            .unwrap()
            .push((id.clone(), outcome, retry_at));
        Ok(())
    }
}

fn callback(tenant: &str, id: &str, url: &str) -> DueCallback {
    DueCallback {
        job: JobRecord {
            id: JobId(id.to_owned()),
            tenant: tenant.to_owned(),
            status: JobStatus::Completed,
            priority: 0,
            received_at: 1,
            updated_at: 2,
            completed_at: Some(2),
            attempts: 1,
            failure: None,
            audio_seconds: Some(1.0),
            patient_reference: Some("Patient/p-1".into()),
            encounter_reference: None,
        },
        url: url.to_owned(),
        attempts: 0,
    }
}

/// A receiver that answers 200 to every request and reports when each came.
fn answering_receiver() -> (String, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived, arrivals) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if arrived.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    (format!("http://127.0.0.1:{port}/hook"), arrivals)
}

/// A receiver that accepts connections and never answers; counts them.
/// Dropping the returned holder closes every connection it kept.
struct SilentReceiver {
    url: String,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (count, keep) = (Arc::clone(&accepted), Arc::clone(&held));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, Ordering::SeqCst);
                keep.lock().unwrap().push(stream);
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            accepted,
            held,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentReceiver {
    fn drop(&mut self) {
        self.held.lock().unwrap().clear();
    }
}

fn on_premises(secret: &str) -> WebhookConfig {
    WebhookConfig {
        targets: TargetPolicy {
            allow_private: true,
        },
        poll_interval: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
        ..WebhookConfig::new(secret)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_silent_receiver_of_one_tenant_does_not_delay_another_tenants_callback() {
    let silent = SilentReceiver::start();
    let (answering, arrivals) = answering_receiver();
    // Tenant a's five callbacks are due before tenant b's one.
    let mut due: Vec<DueCallback> = (0..5)
        .map(|n| callback("clinic-a", &format!("a{n}"), &silent.url))
        .collect();
    due.push(callback("clinic-b", "b0", &answering));
    let store = MemoryStore::with(due);
    let config = on_premises("fairness-test-secret-0123456789abcdef");
    let runtime = runtime();
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    runtime.spawn(run(store.clone(), config.clone(), stopped));

    let arrived = arrivals
        .recv_timeout(Duration::from_secs(5))
        .expect("tenant b's callback arrives while tenant a's receiver hangs");
    assert!(arrived.duration_since(started) < Duration::from_secs(5));
    let wait = Instant::now();
    let recorded = loop {
        if let Some(outcome) = store.outcomes().into_iter().find(|(id, _, _)| id.0 == "b0") {
            break outcome;
        }
        assert!(
            wait.elapsed() < Duration::from_secs(5),
            "b0's outcome is recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(recorded.1, Ok(()));
    // Tenant a holds only its own share of deliveries, all still hanging.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(silent.accepted(), config.per_tenant_in_flight as usize);
    assert!(store
        .outcomes()
        .iter()
        .all(|(id, _, _)| !id.0.starts_with('a')));

    stop.send(true).unwrap();
    drop(silent);
    runtime.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn loopback_targets_are_refused_at_delivery_without_a_connection() {
    let silent = SilentReceiver::start();
    let port = silent
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let strict = WebhookConfig {
        timeout: Duration::from_secs(5),
        ..WebhookConfig::new("refusal-test-secret-0123456789abcdef")
    };
    let agent = agent(&strict);
    let store = MemoryStore::default();
    for (id, url) in [
        ("literal-v4", format!("http://127.0.0.1:{port}/hook")),
        ("literal-v6", format!("http://[::1]:{port}/hook")),
        ("name", format!("http://localhost:{port}/hook")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/hook")),
    ] {
        deliver_and_record(&store, &agent, &strict, &callback("clinic-a", id, &url));
    }
    let outcomes = store.outcomes();
    assert_eq!(outcomes.len(), 4);
    for (id, outcome, retry_at) in &outcomes {
        let reason = outcome.as_ref().unwrap_err();
        assert!(reason.contains("loopback"), "{id}: {reason}");
        assert!(
            !reason.contains(&port) && !reason.contains("hook"),
            "{reason}"
        );
        assert_eq!(
            *retry_at, None,
            "{id}: a refused target is given up at once"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(silent.accepted(), 0, "no connection was made");
}

#[test]
fn with_private_targets_allowed_loopback_receives_a_signed_callback() {
    let (url, arrivals) = answering_receiver();
    let config = on_premises("delivery-test-secret-0123456789abcdef");
    let store = MemoryStore::default();
    deliver_and_record(
        &store,
        &agent(&config),
        &config,
        &callback("clinic-a", "j1", &url),
    );
    arrivals
        .recv_timeout(Duration::from_secs(5))
        .expect("delivered");
    let outcomes = store.outcomes();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].1, Ok(()));
}

#[test]
fn a_failed_delivery_is_retried_later_with_jitter() {
    // Nothing listens on this port once the listener is dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = on_premises("retry-test-secret-0123456789abcdefgh");
    let store = MemoryStore::default();
    let before = unix_now();
    deliver_and_record(
        &store,
        &agent(&config),
        &config,
        &callback("clinic-a", "j1", &format!("http://127.0.0.1:{port}/")),
    );
    let (_, outcome, retry_at) = store.outcomes().remove(0);
    assert!(outcome.is_err());
    let retry_at = retry_at.expect("retried");
    assert!((before + 5..=before + 11).contains(&retry_at), "{retry_at}");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap_then_gives_up() {
    let config = WebhookConfig {
        max_attempts: 4,
        base_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(30),
        ..WebhookConfig::new("k")
    };
    let secs = |attempts| config.retry_delay(attempts).map(|d| d.as_secs_f64());
    for _ in 0..50 {
        assert!(secs(1).is_some_and(|s| (5.0..10.0).contains(&s)));
        assert!(secs(2).is_some_and(|s| (10.0..20.0).contains(&s)));
        assert!(secs(3).is_some_and(|s| (15.0..30.0).contains(&s)), "capped");
    }
    assert_eq!(config.retry_delay(4), None);
    let none = WebhookConfig {
        max_attempts: 0,
        ..config
    };
    assert_eq!(none.retry_delay(1), None);
}

#[test]
fn the_signature_is_an_hmac_of_time_and_body() {
    // Checked against an independent implementation:
    // python3 -c "import hmac,hashlib;print(hmac.new(b'secret',b'1700000000.{}',hashlib.sha256).hexdigest())"
    assert_eq!(
        sign("secret", 1_700_000_000, b"{}"),
        "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
    );
}

#[test]
fn the_config_checks_its_bounds() {
    assert_eq!(WebhookConfig::new("k").validate(), Ok(()));
    let bad = WebhookConfig {
        per_tenant_in_flight: 4,
        max_in_flight: 2,
        timeout: Duration::ZERO,
        ..WebhookConfig::new("")
    };
    assert_eq!(bad.validate().unwrap_err().len(), 3);
}
