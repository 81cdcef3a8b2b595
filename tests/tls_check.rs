//! `ENV=prod mmt check` with each link that carries PHI in plaintext (or with
//! TLS that does not verify the server), one at a time: it exits non-zero with
//! a FATAL line naming the link, one fatal problem more than the same
//! configuration with every link verified. `mmt run` refuses to start on the
//! same problem, before connecting to anything. Development is unchanged.
//!
//! Nothing here touches the network: the configuration is judged as written.

mod common;

use std::process::{Command, Output};

/// A production configuration whose links are all verified TLS.
const VERIFIED: &[(&str, &str)] = &[
    ("ENV", "prod"),
    (
        "DATABASE_URL",
        "postgres://mmt:pw@db.internal:5432/mmt?sslmode=verify-full&sslrootcert=/etc/mmt/db-ca.pem",
    ),
    ("INTERNAL_JWT_SECRET", "s3cr3t-0123456789-abcdefghijklmnop"),
    ("SSL_CERT_FILE", "/etc/mmt/tls.crt"),
    ("SSL_KEY_FILE", "/etc/mmt/tls.key"),
    ("AUDIT_LOG_FILE", "/var/log/mmt/audit.jsonl"),
    ("EXTERNAL_RABBITMQ_ENABLED", "true"),
    ("EXTERNAL_RABBITMQ_HOST", "rabbitmq.internal"),
    ("MMT_RABBITMQ_PASSWORD", "not-the-default"),
    ("MMT_RABBITMQ_TLS", "true"),
    ("MMT_RABBITMQ_TLS_CA_FILE", "/etc/mmt/rabbitmq-ca.pem"),
    ("EXTERNAL_REDIS_ENABLED", "true"),
    ("EXTERNAL_REDIS_HOST", "redis.internal:6380"),
    ("MMT_REDIS_TLS", "true"),
    ("MMT_REDIS_TLS_CA_FILE", "/etc/mmt/redis-ca.pem"),
    (
        "MMT_KAFKA_BROKERS",
        "kafka-0.internal:9093,kafka-1.internal:9093",
    ),
    ("MMT_KAFKA_SECURITY_PROTOCOL", "ssl"),
    ("MMT_KAFKA_TLS_CA_FILE", "/etc/mmt/kafka-ca.pem"),
];

/// One link without verified TLS: the variables that make it so, the
/// variable its FATAL line names, and the service it names.
struct Link {
    overrides: &'static [(&'static str, &'static str)],
    variable: &'static str,
    service: &'static str,
}

/// Each link in turn.
const PLAINTEXT_LINKS: &[Link] = &[
    Link {
        overrides: &[
            ("MMT_RABBITMQ_TLS", "false"),
            ("MMT_RABBITMQ_TLS_CA_FILE", ""),
        ],
        variable: "MMT_RABBITMQ_TLS",
        service: "RabbitMQ",
    },
    Link {
        overrides: &[("MMT_REDIS_TLS", "false"), ("MMT_REDIS_TLS_CA_FILE", "")],
        variable: "MMT_REDIS_TLS",
        service: "Redis",
    },
    Link {
        overrides: &[
            ("MMT_KAFKA_SECURITY_PROTOCOL", "plaintext"),
            ("MMT_KAFKA_TLS_CA_FILE", ""),
        ],
        variable: "MMT_KAFKA_SECURITY_PROTOCOL",
        service: "Kafka",
    },
    Link {
        overrides: &[("DATABASE_URL", "postgres://mmt:pw@db.internal:5432/mmt")],
        variable: "DATABASE_URL",
        service: "PostgreSQL",
    },
    Link {
        overrides: &[(
            "DATABASE_URL",
            "postgres://mmt:pw@db.internal:5432/mmt?sslmode=require",
        )],
        variable: "DATABASE_URL",
        service: "PostgreSQL",
    },
    Link {
        overrides: &[("DATABASE_URL", "mysql://mmt:pw@db.internal:3306/mmt")],
        variable: "DATABASE_URL",
        service: "MySQL",
    },
];

/// `VERIFIED` with `overrides` (an empty value unsets).
fn vars<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    VERIFIED
        .iter()
        .filter(|(name, _)| !overrides.iter().any(|(n, _)| n == name))
        .chain(overrides)
        .copied()
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

/// Runs `mmt <args>` with exactly `vars` (nothing inherited but `PATH`).
fn mmt(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .current_dir(common::root())
        .output()
        .expect("mmt runs")
}

/// The number of fatal problems in `mmt check`'s summary line.
fn fatal_count(stdout: &str) -> usize {
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("ENV="))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    summary
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(" fatal"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("unreadable summary: {summary}"))
}

/// The FATAL lines about `variable`.
fn fatal_lines<'a>(stdout: &'a str, variable: &str) -> Vec<&'a str> {
    let prefix = format!("FATAL {variable}:");
    stdout.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn prod_check_refuses_each_phi_link_without_verified_tls_naming_it() {
    let verified = mmt(&["check"], VERIFIED);
    let verified_out = String::from_utf8_lossy(&verified.stdout).into_owned();
    let baseline = fatal_count(&verified_out);
    for link in PLAINTEXT_LINKS {
        assert!(
            fatal_lines(&verified_out, link.variable).is_empty(),
            "verified links are accepted:\n{verified_out}"
        );
    }
    for Link {
        overrides,
        variable,
        service,
    } in PLAINTEXT_LINKS
    {
        let output = mmt(&["check"], &vars(overrides));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{overrides:?}:\n{stdout}");
        let lines = fatal_lines(&stdout, variable);
        assert_eq!(lines.len(), 1, "{overrides:?}:\n{stdout}");
        assert!(lines[0].contains(service), "{}", lines[0]);
        assert!(lines[0].contains("PHI"), "{}", lines[0]);
        // A CA file the override unsets no longer has its own problem
        // (the verified set-up names files this machine does not hold).
        let unset_file_problems: usize = overrides
            .iter()
            .filter(|(_, value)| value.is_empty())
            .map(|(name, _)| fatal_lines(&verified_out, name).len())
            .sum();
        assert_eq!(
            fatal_count(&stdout),
            baseline + 1 - unset_file_problems,
            "{overrides:?}: the link is the one new fatal problem:\n{stdout}"
        );
        // The URL's password is never shown.
        assert!(!stdout.contains(":pw@"), "{stdout}");
    }
}

#[test]
fn prod_run_refuses_to_start_on_a_plaintext_broker() {
    let out = tempfile::tempdir().expect("temp dir");
    let out_dir = out.path().to_str().expect("UTF-8 temp path");
    let output = mmt(
        &["run", "--source", "rabbitmq", "--out", out_dir],
        &vars(&[
            ("MMT_RABBITMQ_TLS", "false"),
            ("MMT_RABBITMQ_TLS_CA_FILE", ""),
        ]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("MMT_RABBITMQ_TLS"), "{stderr}");
    assert!(stderr.contains("RabbitMQ"), "{stderr}");
}

#[test]
fn development_keeps_plaintext_links() {
    for Link {
        overrides,
        variable,
        ..
    } in PLAINTEXT_LINKS
    {
        let mut dev = vars(overrides);
        dev.retain(|(name, _)| *name != "ENV");
        dev.push(("ENV", "dev"));
        let output = mmt(&["check"], &dev);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains(&format!(" {variable}: the link")),
            "{overrides:?}:\n{stdout}"
        );
    }
}
