//! A real `mmt serve` process on loopback for a test, every line of its
//! log kept (to scan it for what must never be logged).

use super::root;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `mmt serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// `mmt serve --listen 127.0.0.1:0 --out <out> <args…>` with `env`, and
    /// nothing from the caller's environment that points elsewhere.
    pub fn start(out: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
            .args(["serve", "--listen", "127.0.0.1:0", "--out"])
            .arg(out)
            .args(args)
            .current_dir(root())
            .env_remove("DATABASE_URL")
            .env_remove("AUDIT_LOG_FILE")
            .env_remove("ENABLE_REDIS_BLOOM_IDEMPOTENCY")
            .env_remove("EXTERNAL_REDIS_ENABLED")
            .env_remove("EXTERNAL_RABBITMQ_ENABLED")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_KEY_FILE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mmt serve starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving the job API on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = found.send(url);
                }
                if let Ok(mut log) = kept.lock() {
                    log.extend_from_slice(line.as_bytes());
                    log.push(b'\n');
                }
            }
        });
        let base = address
            .recv_timeout(Duration::from_secs(60))
            .expect("the server announces its address");
        Self { child, base, log }
    }

    /// The log so far.
    pub fn log(&self) -> Vec<u8> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most `limit`) until the log holds `needle`; whether it does.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if String::from_utf8_lossy(&self.log()).contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM, then waits (at most a minute) for the process to finish;
    /// its exit status and whole log.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server stops"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread drains what is left of the pipe.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
