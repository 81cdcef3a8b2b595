//! TLS on the links to RabbitMQ, Kafka, Redis and the database: the variables
//! naming a link's TLS files, and the production rule that a link carrying PHI
//! across the network uses verified TLS.

use std::path::{Path, PathBuf};

use mmt_connectors::tls::{TlsClientFiles, Transport};

use super::vars::Vars;
use super::{Environment, Problem};

/// The three variables naming one link's TLS files.
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsFileVars {
    /// The CA file the server's certificate must chain to.
    pub(super) ca: &'static str,
    /// The client certificate.
    pub(super) cert: &'static str,
    /// The client certificate's key.
    pub(super) key: &'static str,
}

impl TlsFileVars {
    /// The variables, in the order of [`TlsClientFiles`]' fields.
    pub(super) fn names(self) -> [&'static str; 3] {
        [self.ca, self.cert, self.key]
    }

    pub(super) fn read(self, vars: &Vars) -> TlsClientFiles {
        let path = |name| vars.text(name).map(PathBuf::from);
        TlsClientFiles {
            ca_file: path(self.ca),
            cert_file: path(self.cert),
            key_file: path(self.key),
        }
    }

    /// Fatal everywhere: a path that names no file, half a client certificate,
    /// and files set while the link's TLS is off (the operator believes the
    /// link protected; it is not). `switch` says how TLS is turned on.
    pub(super) fn validate(
        self,
        files: &TlsClientFiles,
        tls_on: bool,
        switch: &str,
        out: &mut Vec<Problem>,
    ) {
        let mut problems = Vec::new();
        files.validate(self.names(), &mut problems);
        out.extend(
            problems
                .into_iter()
                .map(|problem| Problem::fatal(problem.field, problem.message)),
        );
        if tls_on {
            return;
        }
        if let Some((variable, _)) = self.set(files).first() {
            out.push(Problem::fatal(
                variable,
                format!(
                    "is set but TLS is off, so it would be ignored and the link left in \
                     plaintext: {switch}, or unset it"
                ),
            ));
        }
    }

    /// The variables that are set, with their paths (for the file checks).
    pub(super) fn set(self, files: &TlsClientFiles) -> Vec<(&'static str, &Path)> {
        self.names()
            .into_iter()
            .zip([&files.ca_file, &files.cert_file, &files.key_file])
            .filter_map(|(name, path)| path.as_deref().map(|path| (name, path)))
            .collect()
    }
}

/// One link to a service, for the production rule.
#[derive(Debug)]
pub(super) struct PhiLink {
    /// The variable to change (the link's TLS switch, or its URL).
    pub(super) variable: &'static str,
    /// The service and where it is configured, e.g. `RabbitMQ (EXTERNAL_RABBITMQ_HOST)`.
    pub(super) service: &'static str,
    /// What crosses the link, e.g. `job messages (audio, patient references)`.
    pub(super) carries: &'static str,
    /// How the link is protected as configured.
    pub(super) transport: Transport,
    /// Whether the server is on this machine (then nothing crosses the network).
    pub(super) local: bool,
    /// How to turn verified TLS on.
    pub(super) fix: &'static str,
}

impl PhiLink {
    /// Fatal in `prod`, a warning in `staging`: a link to another machine that
    /// carries PHI without verified TLS. Loopback links are exempt, so a
    /// broker or a TLS-terminating sidecar on the pod itself stays possible.
    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        let Some(severity) = env.production_rule() else {
            return;
        };
        if self.local || self.transport.is_verified() {
            return;
        }
        let Self {
            service,
            carries,
            fix,
            ..
        } = self;
        let how = match self.transport {
            Transport::UnverifiedTls => {
                "uses TLS without verifying the server's certificate and host name \
                 (a man in the middle reads everything)"
            }
            _ => "is plaintext",
        };
        out.push(Problem {
            variable: self.variable,
            message: format!(
                "the link to {service} {how}, and it carries PHI ({carries}); {env} needs \
                 verified TLS: {fix}"
            ),
            severity,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    const VARS: TlsFileVars = TlsFileVars {
        ca: "X_TLS_CA_FILE",
        cert: "X_TLS_CERT_FILE",
        key: "X_TLS_KEY_FILE",
    };

    fn link(transport: Transport, local: bool) -> PhiLink {
        PhiLink {
            variable: "X_TLS",
            service: "X (X_HOST)",
            carries: "audio",
            transport,
            local,
            fix: "set X_TLS=true",
        }
    }

    fn judged(link: &PhiLink, env: Environment) -> Vec<Problem> {
        let mut out = Vec::new();
        link.validate(env, &mut out);
        out
    }

    #[test]
    fn a_remote_link_without_verified_tls_is_fatal_in_prod_only() {
        for transport in [Transport::Plaintext, Transport::UnverifiedTls] {
            let remote = link(transport, false);
            let prod = judged(&remote, Environment::Prod);
            assert_eq!(prod.len(), 1);
            assert_eq!(prod[0].severity, Severity::Fatal);
            assert_eq!(prod[0].variable, "X_TLS");
            assert!(prod[0].message.contains("X (X_HOST)"), "{}", prod[0]);
            assert!(prod[0].message.contains("set X_TLS=true"), "{}", prod[0]);
            let staging = judged(&remote, Environment::Staging);
            assert_eq!(staging[0].severity, Severity::Warning);
            assert!(judged(&remote, Environment::Dev).is_empty());
            assert!(judged(&remote, Environment::Test).is_empty());
        }
        assert!(judged(&link(Transport::VerifiedTls, false), Environment::Prod).is_empty());
    }

    #[test]
    fn a_loopback_link_is_exempt() {
        assert!(judged(&link(Transport::Plaintext, true), Environment::Prod).is_empty());
    }

    #[test]
    fn files_with_tls_off_or_half_a_certificate_are_fatal_everywhere() {
        let mut out = Vec::new();
        VARS.validate(
            &TlsClientFiles::with_ca("/etc/mmt/ca.pem"),
            false,
            "set X_TLS=true",
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].variable, "X_TLS_CA_FILE");
        assert!(out[0].is_fatal());
        let mut out = Vec::new();
        let half = TlsClientFiles {
            cert_file: Some("/etc/mmt/c.pem".into()),
            ..TlsClientFiles::default()
        };
        VARS.validate(&half, true, "set X_TLS=true", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].variable, "X_TLS_KEY_FILE");
        let mut out = Vec::new();
        VARS.validate(&TlsClientFiles::default(), false, "", &mut out);
        assert!(out.is_empty());
    }

    // ------------------------------------------------- the whole configuration

    use crate::config::{Config, Loaded};

    const VERIFIED_DB: &str =
        "postgres://mmt:pw@db.internal:5432/mmt?sslmode=verify-full&sslrootcert=/etc/mmt/db-ca.pem";

    /// `vars` over a production base whose links are all verified or local.
    fn load(env: &str, vars: &[(&str, &str)]) -> Loaded {
        let mut all: Vec<(String, String)> = [
            ("ENV", env),
            ("DATABASE_URL", VERIFIED_DB),
            ("INTERNAL_JWT_SECRET", "s3cr3t-0123456789-abcdefghijklmnop"),
            ("SSL_CERT_FILE", "/etc/mmt/tls.crt"),
            ("SSL_KEY_FILE", "/etc/mmt/tls.key"),
        ]
        .iter()
        .filter(|(name, _)| !vars.iter().any(|(n, _)| n == name))
        .chain(vars)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        all.sort();
        Config::load_vars(all)
    }

    /// The problems with the TLS of the links (their switches and `DATABASE_URL`).
    fn link_problems(env: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
        const SWITCHES: [&str; 4] = [
            "MMT_RABBITMQ_TLS",
            "MMT_REDIS_TLS",
            "MMT_KAFKA_SECURITY_PROTOCOL",
            "DATABASE_URL",
        ];
        load(env, vars)
            .report
            .problems()
            .iter()
            .filter(|p| SWITCHES.contains(&p.variable))
            .cloned()
            .collect()
    }

    const RABBITMQ: &[(&str, &str)] = &[
        ("EXTERNAL_RABBITMQ_ENABLED", "true"),
        ("EXTERNAL_RABBITMQ_HOST", "rabbitmq.internal"),
        ("MMT_RABBITMQ_PASSWORD", "not-guest"),
    ];
    const REDIS: &[(&str, &str)] = &[
        ("EXTERNAL_REDIS_ENABLED", "true"),
        ("EXTERNAL_REDIS_HOST", "redis.internal:6380"),
    ];
    const KAFKA: &[(&str, &str)] = &[("MMT_KAFKA_BROKERS", "kafka-0:9092,kafka-1:9092")];

    fn with<'a>(
        base: &[(&'a str, &'a str)],
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        base.iter().chain(extra).copied().collect()
    }

    #[test]
    fn every_plaintext_link_is_fatal_in_prod_and_named() {
        let sasl_plaintext = with(
            KAFKA,
            &[
                ("MMT_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                ("MMT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("MMT_KAFKA_SASL_USERNAME", "mmt"),
                ("MMT_KAFKA_SASL_PASSWORD", "pw"),
            ],
        );
        // (variables, the variable named, the service named)
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (RABBITMQ.to_vec(), "MMT_RABBITMQ_TLS", "RabbitMQ"),
            (REDIS.to_vec(), "MMT_REDIS_TLS", "Redis"),
            (KAFKA.to_vec(), "MMT_KAFKA_SECURITY_PROTOCOL", "Kafka"),
            (sasl_plaintext, "MMT_KAFKA_SECURITY_PROTOCOL", "Kafka"),
            (
                vec![("DATABASE_URL", "postgres://mmt@db.internal/mmt")],
                "DATABASE_URL",
                "PostgreSQL",
            ),
            (
                vec![(
                    "DATABASE_URL",
                    "postgres://mmt@db.internal/mmt?sslmode=prefer",
                )],
                "DATABASE_URL",
                "PostgreSQL",
            ),
            (
                vec![(
                    "DATABASE_URL",
                    "postgres://mmt@db.internal/mmt?sslmode=require",
                )],
                "DATABASE_URL",
                "without verifying",
            ),
            (
                vec![(
                    "DATABASE_URL",
                    "postgres://mmt@db.internal/mmt?sslmode=verify-ca",
                )],
                "DATABASE_URL",
                "without verifying",
            ),
            (
                vec![("DATABASE_URL", "mysql://mmt@db.internal/mmt")],
                "DATABASE_URL",
                "MySQL/MariaDB",
            ),
            (
                vec![(
                    "DATABASE_URL",
                    "mariadb://mmt@db.internal/mmt?ssl-mode=REQUIRED",
                )],
                "DATABASE_URL",
                "without verifying",
            ),
        ];
        for (vars, variable, named) in cases {
            let problems = link_problems("prod", &vars);
            assert_eq!(problems.len(), 1, "{vars:?}: {problems:?}");
            let problem = &problems[0];
            assert_eq!(problem.variable, variable, "{vars:?}");
            assert!(problem.is_fatal(), "{vars:?}");
            assert!(problem.message.contains(named), "{vars:?}: {problem}");
            assert!(problem.message.contains("PHI"), "{problem}");
            assert!(load("prod", &vars).report.refuses_start());
            // A rehearsal shows it; development does not care.
            let staging = link_problems("staging", &vars);
            assert_eq!(staging.len(), 1, "{vars:?}");
            assert!(!staging[0].is_fatal());
            assert!(link_problems("dev", &vars).is_empty(), "{vars:?}");
        }
    }

    #[test]
    fn verified_links_pass_in_prod() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            with(
                RABBITMQ,
                &[
                    ("MMT_RABBITMQ_TLS", "true"),
                    ("MMT_RABBITMQ_TLS_CA_FILE", "/etc/mmt/rabbitmq-ca.pem"),
                    ("MMT_RABBITMQ_TLS_CERT_FILE", "/etc/mmt/mmt.crt"),
                    ("MMT_RABBITMQ_TLS_KEY_FILE", "/etc/mmt/mmt.key"),
                ],
            ),
            // The system's trust store is verification too.
            with(RABBITMQ, &[("MMT_RABBITMQ_TLS", "true")]),
            with(
                REDIS,
                &[
                    ("MMT_REDIS_TLS", "true"),
                    ("MMT_REDIS_TLS_CA_FILE", "/etc/mmt/redis-ca.pem"),
                ],
            ),
            with(
                KAFKA,
                &[
                    ("MMT_KAFKA_SECURITY_PROTOCOL", "SSL"),
                    ("MMT_KAFKA_TLS_CA_FILE", "/etc/mmt/kafka-ca.pem"),
                ],
            ),
            with(
                KAFKA,
                &[
                    ("MMT_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("MMT_KAFKA_SASL_MECHANISM", "scram-sha-256"),
                    ("MMT_KAFKA_SASL_USERNAME", "mmt"),
                    ("MMT_KAFKA_SASL_PASSWORD", "pw"),
                ],
            ),
            vec![(
                "DATABASE_URL",
                "mysql://mmt@db.internal/mmt?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/mmt/db-ca.pem",
            )],
            // PGSSLMODE applies when the URL names no mode.
            vec![
                ("DATABASE_URL", "postgres://mmt@db.internal/mmt"),
                ("PGSSLMODE", "verify-full"),
            ],
        ];
        for vars in cases {
            let loaded = load("prod", &vars);
            let problems: Vec<_> = loaded
                .report
                .problems()
                .iter()
                .filter(|p| {
                    p.variable.contains("TLS")
                        || p.variable.contains("KAFKA")
                        || p.variable == "DATABASE_URL"
                })
                .collect();
            assert!(problems.is_empty(), "{vars:?}: {problems:?}");
        }
    }

    #[test]
    fn loopback_links_are_exempt_in_prod() {
        for vars in [
            vec![],
            vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")],
            vec![("DATABASE_URL", "postgres:///mmt?host=/var/run/postgresql")],
            vec![("DATABASE_URL", "mysql://root@localhost:3306/test")],
            vec![("MMT_KAFKA_BROKERS", "127.0.0.1:9092,[::1]:9093")],
            vec![
                ("EXTERNAL_RABBITMQ_ENABLED", "true"),
                ("EXTERNAL_RABBITMQ_HOST", "127.0.0.1"),
            ],
        ] {
            assert!(link_problems("prod", &vars).is_empty(), "{vars:?}");
        }
    }

    #[test]
    fn tls_files_without_tls_are_fatal_everywhere() {
        for (file, switch) in [
            ("MMT_RABBITMQ_TLS_CA_FILE", "MMT_RABBITMQ_TLS"),
            ("MMT_REDIS_TLS_CA_FILE", "MMT_REDIS_TLS"),
            ("MMT_KAFKA_TLS_CA_FILE", "MMT_KAFKA_SECURITY_PROTOCOL"),
        ] {
            let loaded = load("dev", &[(file, "/etc/mmt/ca.pem")]);
            let problems: Vec<_> = loaded
                .report
                .problems()
                .iter()
                .filter(|p| p.variable == file)
                .collect();
            assert_eq!(problems.len(), 1, "{file}");
            assert!(problems[0].is_fatal());
            assert!(problems[0].message.contains(switch), "{}", problems[0]);
        }
        let half = load(
            "dev",
            &[
                ("MMT_REDIS_TLS", "true"),
                ("MMT_REDIS_TLS_CERT_FILE", "/etc/mmt/redis.crt"),
            ],
        );
        assert!(half
            .report
            .problems()
            .iter()
            .any(|p| p.variable == "MMT_REDIS_TLS_KEY_FILE" && p.is_fatal()));
    }

    #[test]
    fn kafka_sasl_settings_must_match_the_protocol() {
        let missing = load("dev", &[("MMT_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")]);
        let fatal: Vec<_> = missing
            .report
            .problems()
            .iter()
            .filter(|p| p.is_fatal())
            .map(|p| p.variable)
            .collect();
        assert_eq!(
            fatal,
            [
                "MMT_KAFKA_SASL_MECHANISM",
                "MMT_KAFKA_SASL_USERNAME",
                "MMT_KAFKA_SASL_PASSWORD"
            ]
        );
        let ignored = load("dev", &[("MMT_KAFKA_SASL_USERNAME", "mmt")]);
        assert!(ignored
            .report
            .problems()
            .iter()
            .any(|p| p.variable == "MMT_KAFKA_SASL_USERNAME" && p.is_fatal()));
        let bad = load(
            "dev",
            &[
                ("MMT_KAFKA_SECURITY_PROTOCOL", "tls"),
                ("MMT_KAFKA_SASL_MECHANISM", "GSSAPI"),
            ],
        );
        let variables: Vec<_> = bad.report.problems().iter().map(|p| p.variable).collect();
        assert!(
            variables.contains(&"MMT_KAFKA_SECURITY_PROTOCOL"),
            "{variables:?}"
        );
        assert!(
            variables.contains(&"MMT_KAFKA_SASL_MECHANISM"),
            "{variables:?}"
        );
    }

    #[test]
    fn clients_get_the_tls_urls_and_the_password_stays_hidden() {
        let config = load(
            "dev",
            &[
                ("MMT_RABBITMQ_TLS", "true"),
                ("EXTERNAL_RABBITMQ_ENABLED", "true"),
                ("EXTERNAL_RABBITMQ_HOST", "rabbitmq.internal"),
                ("MMT_REDIS_TLS", "true"),
                ("EXTERNAL_REDIS_ENABLED", "true"),
                ("EXTERNAL_REDIS_HOST", "redis.internal"),
                ("MMT_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("MMT_KAFKA_SASL_MECHANISM", "PLAIN"),
                ("MMT_KAFKA_SASL_USERNAME", "mmt"),
                ("MMT_KAFKA_SASL_PASSWORD", "kafka-pa55word"),
            ],
        )
        .config;
        assert_eq!(
            config.rabbitmq.url(),
            "amqps://guest:guest@rabbitmq.internal:5671/%2F"
        );
        assert_eq!(config.redis.url(), "rediss://redis.internal:6379");
        let source = config.kafka.source_config();
        assert_eq!(source.transport(), Transport::VerifiedTls);
        assert_eq!(source.validate(), Ok(()));
        assert_eq!(
            source.sasl.as_ref().map(|s| s.password.as_str()),
            Some("kafka-pa55word")
        );
        let shown = format!(
            "{config:?}{}",
            serde_json::to_string(&config).expect("json")
        );
        assert!(!shown.contains("kafka-pa55word"), "{shown}");
        let plain = load("dev", &[]).config;
        assert_eq!(
            plain.rabbitmq.url(),
            "amqp://guest:guest@127.0.0.1:5672/%2F"
        );
        assert_eq!(plain.redis.url(), "redis://127.0.0.1:6379");
    }

    #[test]
    fn check_files_reports_missing_ca_files() {
        let config = load(
            "dev",
            &[
                ("MMT_RABBITMQ_TLS", "true"),
                (
                    "MMT_RABBITMQ_TLS_CA_FILE",
                    "/nonexistent/mmt/rabbitmq-ca.pem",
                ),
                ("MMT_KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("MMT_KAFKA_TLS_CA_FILE", "/nonexistent/mmt/kafka-ca.pem"),
            ],
        )
        .config;
        let variables: Vec<_> = config.check_files().iter().map(|p| p.variable).collect();
        assert!(
            variables.contains(&"MMT_RABBITMQ_TLS_CA_FILE"),
            "{variables:?}"
        );
        assert!(
            variables.contains(&"MMT_KAFKA_TLS_CA_FILE"),
            "{variables:?}"
        );
    }
}
