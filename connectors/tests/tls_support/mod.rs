//! What the TLS tests need: a CA made in the test (and a second, wrong one),
//! certificates it signs, and servers started on a free loopback port in a
//! temporary folder, stopped (their whole process group) when dropped.
//!
//! A server binary that is missing skips the test with a "skipping:" line, or
//! fails it under `CI=true`, like `common::require_service`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The host name the server certificates name: tests connect to `localhost`,
/// and connecting to `127.0.0.1` shows that the host name is checked.
pub const SERVER_NAME: &str = "localhost";

/// Whether the tests run under CI, where a missing server fails them.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `path` when it is a file; otherwise `None` after a "skipping:" line, or a
/// failure under `CI=true`.
pub fn require_binary(what: &str, path: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = path.filter(|p| p.is_file()) {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "{what} is not installed, and CI=true: CI must provide it"
    );
    println!("skipping: {what} is not installed");
    None
}

/// The first of `candidates` that is a file, else `name` on `PATH`.
pub fn find_binary(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    candidates
        .iter()
        .cloned()
        .chain(on_path)
        .find(|path| path.is_file())
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Whether this process runs as root (servers like PostgreSQL then run as
/// their own system user).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// `program` run as `user` when this process is root (PostgreSQL refuses to
/// run as root), else as this user.
pub fn command_as(user: &str, program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Gives `path` to `user` when this process is root (the server reads it as
/// that user), keeping its mode.
pub fn give_to(user: &str, path: &Path) {
    if !running_as_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown {user} {}", path.display());
}

/// One CA: its certificate file, and an issuer for certificates it signs.
pub struct TestCa {
    pub cert_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("MMT test {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert_file = dir.join(format!("{name}.pem"));
        write(&cert_file, &issuer.pem(), 0o644);
        Self { cert_file, issuer }
    }

    /// A certificate for `names` (host names or IP addresses), signed by this
    /// CA, for a server or a client: `dir/<file>.pem` and its key
    /// `dir/<file>.key` (mode 0600).
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str], server: bool) -> KeyFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = KeyFiles {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        write(&files.cert, &cert.pem(), 0o644);
        write(&files.key, &key.serialize_pem(), 0o600);
        files
    }
}

/// A certificate and its key, as PEM files.
pub struct KeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files one TLS test needs, in a temporary folder: the right CA, a wrong
/// one (a different CA, same names), a server certificate for [`SERVER_NAME`]
/// and a client certificate, both signed by the right CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub wrong_ca: TestCa,
    pub server: KeyFiles,
    pub client: KeyFiles,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Servers running as another user must reach their files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let ca = TestCa::new(dir.path(), "ca");
        let wrong_ca = TestCa::new(dir.path(), "wrong-ca");
        let server = ca.issue(dir.path(), "server", &[SERVER_NAME], true);
        let client = ca.issue(dir.path(), "client", &["mmt-client"], false);
        Self {
            dir,
            ca,
            wrong_ca,
            server,
            client,
        }
    }

    /// A folder of its own under the temporary folder.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("create subdir");
        dir
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write PEM file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A server started by a test, in its own process group, stopped with the
/// group when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    name: &'static str,
    stop_signal: &'static str,
}

impl Server {
    /// Starts `command` (its output to `log`) and waits until `port` accepts
    /// connections, failing the test with the log when it exits or takes longer
    /// than `within`.
    pub fn start(
        name: &'static str,
        mut command: Command,
        port: u16,
        log: PathBuf,
        within: Duration,
    ) -> Self {
        let out = std::fs::File::create(&log).expect("server log");
        let err = out.try_clone().expect("server log");
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let mut server = Self {
            child,
            port,
            log,
            name,
            stop_signal: "-TERM",
        };
        server.wait_until_listening(within);
        server
    }

    fn wait_until_listening(&mut self, within: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within {within:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with `signal` (e.g. `-INT`, PostgreSQL's fast
    /// shutdown) instead of `-TERM`.
    pub fn stopped_with(mut self, signal: &'static str) -> Self {
        self.stop_signal = signal;
        self
    }

    /// What the server wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole group: wrappers (runuser, a start script) and the server
        // behind them. Waits for a clean shutdown, so that nothing (shared
        // memory, a node name) outlives the test; kills what is left after that.
        let group = format!("-{}", self.child.id());
        let signal = |name: &str| {
            Command::new("kill")
                .args([name, "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        signal(self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let _ = self.child.try_wait();
            if !signal("-0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Whether `message` says that the server's certificate was refused.
pub fn is_certificate_refusal(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "notvalidforname",
        "verify",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
