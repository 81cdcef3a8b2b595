//! The TLS links against real TLS listeners that each test starts for itself
//! (a CA made in the test, a server certificate for `localhost` it signs):
//!
//! - PostgreSQL: a second cluster (`initdb`) with `ssl=on` accepting only
//!   `hostssl` connections;
//! - MariaDB/MySQL: a second `mariadbd` on an empty data directory with
//!   `--ssl-cert`;
//! - Redis: `redis-server --tls-port` requiring a client certificate;
//! - RabbitMQ: a second node whose only listener is `listeners.ssl`, requiring
//!   a client certificate.
//!
//! Each checks that the right CA connects and does real work (queries, a
//! publish and a consume), and that a wrong CA (another CA, same names), the
//! wrong host name, and (where the server demands one) a missing client
//! certificate are refused. Kafka is not here: the broker the tests use (tansu
//! 0.6) cannot serve TLS; the Kafka TLS settings are unit-tested in
//! `src/kafka/config.rs`.
//!
//! A missing server binary skips its test, or fails it under `CI=true`.

mod tls_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mmt_connectors::envelope::{EnvelopeReader, JobEnvelope};
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig, RabbitMqSource};
use mmt_connectors::redis::RedisFilterConfig;
use mmt_connectors::tls::{TlsClientFiles, Transport};
use mmt_connectors::SqlJobStoreConfig;
use mmt_core::idempotency::{FilterAnswer, IdempotencyFilter};
use mmt_core::job::JobId;
use mmt_core::source::JobSource;
use sqlx::{Connection, Row};
use tls_support::{
    command_as, find_binary, free_port, give_to, is_certificate_refusal, require_binary,
    running_as_root, Pki, Server,
};

const STARTUP: Duration = Duration::from_secs(60);

/// Asserts that `result` failed because the server's certificate was refused.
fn assert_refused<T>(what: &str, result: Result<T, impl std::fmt::Display>) {
    match result {
        Ok(_) => panic!("{what}: connected, but must be refused"),
        Err(error) => {
            let message = error.to_string();
            assert!(is_certificate_refusal(&message), "{what}: {message}");
        }
    }
}

// ------------------------------------------------------------- PostgreSQL

/// The newest PostgreSQL's `bin` folder (Debian keeps one per version).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|dir| {
        dir.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    let candidates: Vec<PathBuf> = versions
        .iter()
        .rev()
        .map(|bin| bin.join("initdb"))
        .collect();
    find_binary("initdb", &candidates).and_then(|initdb| initdb.parent().map(Path::to_path_buf))
}

/// A PostgreSQL cluster of its own: TLS only (`hostssl`), trust auth.
fn start_postgres(pki: &Pki) -> Option<Server> {
    let bin = require_binary(
        "PostgreSQL (initdb)",
        postgres_bin().map(|b| b.join("initdb")),
    )?;
    let bin = bin.parent().expect("bin folder");
    let dir = pki.subdir("postgres");
    let data = dir.join("data");
    // The server reads its key as its own user, and insists on mode 0600.
    for (from, to) in [
        (&pki.server.cert, "server.pem"),
        (&pki.server.key, "server.key"),
    ] {
        std::fs::copy(from, dir.join(to)).expect("copy server files");
    }
    give_to("postgres", &dir);
    let initdb = command_as("postgres", &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("initdb runs");
    assert!(
        initdb.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .expect("pg_hba.conf");
    let port = free_port();
    let mut postgres = command_as("postgres", &bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()]);
    for setting in [
        "listen_addresses=127.0.0.1".to_owned(),
        format!("unix_socket_directories={}", dir.display()),
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", dir.join("server.pem").display()),
        format!("ssl_key_file={}", dir.join("server.key").display()),
        "fsync=off".to_owned(),
    ] {
        postgres.arg("-c").arg(setting);
    }
    let server = Server::start(
        "postgres",
        postgres,
        port,
        dir.join("postgres.log"),
        STARTUP,
    );
    // SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for clients).
    Some(server.stopped_with("-INT"))
}

fn postgres_url(host: &str, port: u16, mode: &str, ca: &Path) -> String {
    format!(
        "postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={}",
        ca.display()
    )
}

fn sql_store(url: &str) -> SqlJobStoreConfig {
    SqlJobStoreConfig::new(url).acquire_timeout(Duration::from_secs(5))
}

#[test]
fn postgres_verify_full_connects_with_the_right_ca_only() {
    let pki = Pki::new();
    let Some(server) = start_postgres(&pki) else {
        return;
    };
    let url = postgres_url("localhost", server.port, "verify-full", &pki.ca.cert_file);
    assert_eq!(
        sql_store(&url).transport(None),
        Some(Transport::VerifiedTls)
    );
    // The store connects and migrates its schema over TLS.
    let store = sql_store(&url).build(true);
    assert!(store.is_ok(), "{:?}\n{}", store.err(), server.log_text());
    drop(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let encrypted: bool = runtime.block_on(async {
        let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect");
        let row = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut connection)
            .await
            .expect("query");
        row.get(0)
    });
    assert!(encrypted, "the session is not encrypted");

    let wrong = postgres_url(
        "localhost",
        server.port,
        "verify-full",
        &pki.wrong_ca.cert_file,
    );
    assert_refused("wrong CA", sql_store(&wrong).build(true));
    // The certificate names localhost, not 127.0.0.1: verify-full checks it.
    let other_name = postgres_url("127.0.0.1", server.port, "verify-full", &pki.ca.cert_file);
    assert_refused("wrong host name", sql_store(&other_name).build(true));
    // The server takes TLS only, so the connections above were encrypted.
    let plaintext = postgres_url("localhost", server.port, "disable", &pki.ca.cert_file);
    assert!(sql_store(&plaintext).build(false).is_err());
}

// ------------------------------------------------------------ MariaDB/MySQL

/// A `mariadbd` of its own on an empty data directory, TLS required.
fn start_mariadb(pki: &Pki) -> Option<Server> {
    let candidates = [
        PathBuf::from("/usr/sbin/mariadbd"),
        PathBuf::from("/usr/sbin/mysqld"),
    ];
    let binary = require_binary("MariaDB (mariadbd)", find_binary("mariadbd", &candidates))?;
    let dir = pki.subdir("mariadb");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let init = dir.join("init.sql");
    std::fs::write(&init, "CREATE DATABASE IF NOT EXISTS mmt;\n").expect("init.sql");
    let port = free_port();
    let mut command = Command::new(binary);
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
        .arg(format!("--init-file={}", init.display()))
        .arg(format!("--ssl-cert={}", pki.server.cert.display()))
        .arg(format!("--ssl-key={}", pki.server.key.display()))
        .arg(format!("--ssl-ca={}", pki.ca.cert_file.display()))
        .arg("--require-secure-transport=ON")
        // No system tables in an empty data directory: no accounts to check.
        .arg("--skip-grant-tables")
        .arg("--skip-log-bin")
        .arg("--innodb-buffer-pool-size=16M");
    if running_as_root() {
        command.arg("--user=root");
    }
    Some(Server::start(
        "mariadbd",
        command,
        port,
        dir.join("mariadbd.log"),
        STARTUP,
    ))
}

fn mysql_url(host: &str, port: u16, mode: &str, ca: &Path) -> String {
    format!(
        "mysql://root@{host}:{port}/mmt?ssl-mode={mode}&ssl-ca={}",
        ca.display()
    )
}

#[test]
fn mysql_verify_identity_connects_with_the_right_ca_only() {
    let pki = Pki::new();
    let Some(server) = start_mariadb(&pki) else {
        return;
    };
    let url = mysql_url(
        "localhost",
        server.port,
        "VERIFY_IDENTITY",
        &pki.ca.cert_file,
    );
    assert_eq!(
        sql_store(&url).transport(None),
        Some(Transport::VerifiedTls)
    );
    let store = sql_store(&url).build(true);
    assert!(store.is_ok(), "{:?}\n{}", store.err(), server.log_text());
    drop(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cipher: String = runtime.block_on(async {
        let mut connection = sqlx::MySqlConnection::connect(&url).await.expect("connect");
        let row = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .fetch_one(&mut connection)
            .await
            .expect("query");
        row.get(1)
    });
    assert!(!cipher.is_empty(), "the session is not encrypted");

    let wrong = mysql_url(
        "localhost",
        server.port,
        "VERIFY_IDENTITY",
        &pki.wrong_ca.cert_file,
    );
    assert_refused("wrong CA", sql_store(&wrong).build(true));
    let other_name = mysql_url(
        "127.0.0.1",
        server.port,
        "VERIFY_IDENTITY",
        &pki.ca.cert_file,
    );
    assert_refused("wrong host name", sql_store(&other_name).build(true));
}

// -------------------------------------------------------------------- Redis

/// A `redis-server` of its own with only a TLS port, client certificates required.
fn start_redis(pki: &Pki) -> Option<Server> {
    let binary = require_binary("Redis (redis-server)", find_binary("redis-server", &[]))?;
    let dir = pki.subdir("redis");
    let port = free_port();
    let mut command = Command::new(binary);
    command
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--tls-cert-file")
        .arg(&pki.server.cert)
        .arg("--tls-key-file")
        .arg(&pki.server.key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca.cert_file)
        .args(["--tls-auth-clients", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    Some(Server::start(
        "redis-server",
        command,
        port,
        dir.join("redis.log"),
        STARTUP,
    ))
}

fn redis_filter(host: &str, port: u16, files: TlsClientFiles) -> RedisFilterConfig {
    RedisFilterConfig::new(format!("rediss://{host}:{port}"))
        .with_tls(files)
        .key_prefix("mmt-tls-test")
        .timeouts(Duration::from_secs(3), Duration::from_secs(3))
}

#[test]
fn redis_over_tls_connects_with_the_right_ca_and_client_certificate_only() {
    let pki = Pki::new();
    let Some(server) = start_redis(&pki) else {
        return;
    };
    let port = server.port;
    let mtls = |ca: &Path| {
        TlsClientFiles::with_ca(ca).client_certificate(&pki.client.cert, &pki.client.key)
    };
    let config = redis_filter("localhost", port, mtls(&pki.ca.cert_file));
    assert_eq!(config.transport(), Transport::VerifiedTls);
    let health = config.health_check();
    assert!(health.is_ok(), "{:?}\n{}", health.err(), server.log_text());
    let mut filter = config.build().expect("filter over TLS");
    let id = JobId("tls-job-1".into());
    assert_eq!(
        filter.check(&id).expect("check"),
        FilterAnswer::CertainlyNew
    );
    filter.insert(&id).expect("insert");
    assert_eq!(filter.check(&id).expect("check"), FilterAnswer::MaybeSeen);

    assert_refused(
        "wrong CA",
        redis_filter("localhost", port, mtls(&pki.wrong_ca.cert_file)).health_check(),
    );
    assert_refused(
        "wrong host name",
        redis_filter("127.0.0.1", port, mtls(&pki.ca.cert_file)).health_check(),
    );
    // The server demands a client certificate.
    let anonymous = TlsClientFiles::with_ca(&pki.ca.cert_file);
    assert!(redis_filter("localhost", port, anonymous)
        .health_check()
        .is_err());
}

// ----------------------------------------------------------------- RabbitMQ

/// A RabbitMQ node of its own whose only listener is TLS, requiring client
/// certificates. Its start script is called directly (Debian's wrapper in
/// `/usr/sbin` switches to the `rabbitmq` user), with its own node name,
/// distribution port, data, logs, configuration and Erlang cookie.
fn start_rabbitmq(pki: &Pki) -> Option<Server> {
    let candidates = [PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server")];
    let binary = require_binary(
        "RabbitMQ (rabbitmq-server)",
        find_binary("rabbitmq-server", &candidates),
    )?;
    let dir = pki.subdir("rabbitmq");
    let port = free_port();
    let config = dir.join("rabbitmq.conf");
    std::fs::write(
        &config,
        format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            pki.ca.cert_file.display(),
            pki.server.cert.display(),
            pki.server.key.display()
        ),
    )
    .expect("rabbitmq.conf");
    std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
    let mut command = Command::new(binary);
    command
        .current_dir(&dir)
        // The Erlang cookie is written to $HOME.
        .env("HOME", &dir)
        .env("RABBITMQ_NODENAME", format!("mmt-tls-{port}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_DIST_PORT", free_port().to_string())
        .env("RABBITMQ_CONFIG_FILE", &config)
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"));
    Some(Server::start(
        "rabbitmq-server",
        command,
        port,
        dir.join("rabbitmq.log"),
        STARTUP,
    ))
}

fn amqps(host: &str, port: u16, queue: &str, files: TlsClientFiles) -> RabbitMqConfig {
    let mut config = RabbitMqConfig::new(format!("amqps://guest:guest@{host}:{port}/%2f"))
        .with_queue(queue)
        .with_tls(files);
    config.connect_timeout_ms = 10_000;
    config
}

#[test]
fn rabbitmq_over_tls_publishes_and_consumes_with_the_right_ca_only() {
    let pki = Pki::new();
    let Some(server) = start_rabbitmq(&pki) else {
        return;
    };
    let port = server.port;
    let mtls = |ca: &Path| {
        TlsClientFiles::with_ca(ca).client_certificate(&pki.client.cert, &pki.client.key)
    };
    let config = amqps("localhost", port, "mmt.tls", mtls(&pki.ca.cert_file));
    assert_eq!(config.transport(), Transport::VerifiedTls);
    let submitter = JobSubmitter::connect(&config);
    let submitter = submitter.unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let envelope = JobEnvelope::inline("clinic-a", b"audio over tls", Some("wav"));
    submitter
        .submit(&envelope, "tls-msg-1", None)
        .expect("publish confirmed over TLS");
    let mut source = RabbitMqSource::connect(&config, EnvelopeReader::new(None, "unknown"))
        .expect("consumer over TLS");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut received = Vec::new();
    while received.is_empty() && Instant::now() < deadline {
        received = source.poll(1, Duration::from_millis(200)).expect("poll");
    }
    assert_eq!(received.len(), 1, "the message came back over TLS");
    assert_eq!(received[0].record.bytes, b"audio over tls");
    drop(source);
    drop(submitter);

    assert_refused(
        "wrong CA",
        JobSubmitter::connect(&amqps(
            "localhost",
            port,
            "mmt.tls",
            mtls(&pki.wrong_ca.cert_file),
        )),
    );
    assert_refused(
        "wrong host name",
        JobSubmitter::connect(&amqps(
            "127.0.0.1",
            port,
            "mmt.tls",
            mtls(&pki.ca.cert_file),
        )),
    );
    // The broker demands a client certificate.
    let anonymous = TlsClientFiles::with_ca(&pki.ca.cert_file);
    assert!(JobSubmitter::connect(&amqps("localhost", port, "mmt.tls", anonymous)).is_err());
}
