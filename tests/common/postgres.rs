//! A private PostgreSQL schema per test on the machine's server, through `psql`.

use std::process::Command;

/// The machine's PostgreSQL (trust authentication, database `test`).
pub const POSTGRES: &str = "127.0.0.1:5432";

/// Runs `sql` with `psql` and returns its unaligned output.
pub fn psql(sql: &str) -> String {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tAqc",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A PostgreSQL schema of its own for one test, dropped afterwards.
pub struct Schema(pub String);

impl Schema {
    pub fn create(name: &str) -> Self {
        psql(&format!("CREATE SCHEMA {name}"));
        Self(name.to_owned())
    }

    /// The schema's URL on the server at `addr` (the server, or a proxy to it).
    pub fn url_at(&self, addr: &str) -> String {
        format!(
            "postgres://postgres@{addr}/test?options[search_path]={}",
            self.0
        )
    }

    pub fn url(&self) -> String {
        self.url_at(POSTGRES)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
            .output();
    }
}

/// A name no other test run uses (queues, schemas).
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}
