//! Typed configuration of the SQL job store.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::SqlJobStore;
use crate::config::{into_result, redact_url, validated, ConfigProblem};
use crate::error::Result;
use crate::tls::{is_local_host, Transport};

/// The SQL engines the job store runs on, named by the URL's scheme. One set of
/// statements serves all three (see the store's module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// A file on this machine (or `:memory:`): development and tests only.
    Sqlite,
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// MySQL 8 or MariaDB 10.5+ (`mysql://` or `mariadb://`).
    Mysql,
}

impl Dialect {
    /// The engine a URL names, from its scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        let (scheme, _) = url.split_once(':')?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::Mysql),
            _ => None,
        }
    }
}

/// The SQL job store.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlJobStoreConfig {
    /// `DATABASE_URL`: `postgres://user:password@host:5432/mmt`,
    /// `mysql://user:password@host:3306/mmt` (or `mariadb://…`), or, for
    /// development, `sqlite://path/to/mmt.db` (the file is created if missing, and
    /// runs in WAL mode) or `sqlite::memory:` (tests); SQLite is refused in
    /// production. The URL must name a database. Its password is never printed.
    #[serde(serialize_with = "crate::config::serialize_redacted_url")]
    pub url: String,
    /// Most pooled connections, per process. The store makes one call at a time
    /// (its callers block on it), and SQLite runs one writer at a time anyway, so
    /// a few are enough; on Postgres and MySQL each replica holds at most this
    /// many server connections, idle ones closing after ten minutes. Default 4.
    #[serde(default = "SqlJobStoreConfig::default_max_connections")]
    pub max_connections: u32,
    /// How long a statement waits for a lock another writer holds before failing
    /// (retryably), in milliseconds: SQLite's busy timeout, Postgres's
    /// `lock_timeout`, MySQL's `innodb_lock_wait_timeout` (whole seconds, rounded
    /// up). Default 5000.
    #[serde(default = "SqlJobStoreConfig::default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
    /// How long a call waits for a free pooled connection, in milliseconds.
    /// Default 10000.
    #[serde(default = "SqlJobStoreConfig::default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl SqlJobStoreConfig {
    /// A config for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: Self::default_max_connections(),
            busy_timeout_ms: Self::default_busy_timeout_ms(),
            acquire_timeout_ms: Self::default_acquire_timeout_ms(),
        }
    }

    fn default_max_connections() -> u32 {
        4
    }

    fn default_busy_timeout_ms() -> u64 {
        5_000
    }

    fn default_acquire_timeout_ms() -> u64 {
        10_000
    }

    /// Sets the most pooled connections.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets how long a statement waits for another writer's lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets how long a call waits for a pooled connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The engine `url` names, if known.
    pub fn dialect(&self) -> Option<Dialect> {
        Dialect::of_url(&self.url)
    }

    /// Checks the config without touching the database. `is_prod`: whether this
    /// process runs in production (`ENV=prod`), where SQLite is refused.
    pub fn validate(&self, is_prod: bool) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        match self.dialect() {
            None => problems.push(ConfigProblem::new(
                "url",
                "must start with sqlite:, postgres:// or mysql:// (e.g. sqlite://mmt.db)",
            )),
            Some(Dialect::Sqlite) if is_prod => problems.push(ConfigProblem::new(
                "url",
                "SQLite is for development only and is refused in production: a job \
                 store on one pod's disk is lost with the pod and cannot be shared by \
                 competing workers; use a postgres:// or mysql:// URL",
            )),
            Some(Dialect::Sqlite) => {
                let target = self.url["sqlite:".len()..].trim_start_matches('/');
                let target = target.split('?').next().unwrap_or_default();
                if target.is_empty() {
                    problems.push(ConfigProblem::new(
                        "url",
                        "names no database file (e.g. sqlite://mmt.db or sqlite::memory:)",
                    ));
                }
            }
            Some(dialect @ (Dialect::Postgres | Dialect::Mysql)) => {
                if !names_server_database(&self.url) {
                    problems.push(ConfigProblem::new(
                        "url",
                        "names no database (e.g. postgres://mmt@db:5432/mmt or \
                         mysql://mmt@db:3306/mmt)",
                    ));
                }
                self.validate_ssl_mode(dialect, &mut problems);
            }
        }
        if self.max_connections == 0 {
            problems.push(ConfigProblem::new("max_connections", "must be at least 1"));
        }
        if self.busy_timeout_ms == 0 {
            problems.push(ConfigProblem::new(
                "busy_timeout_ms",
                "must be above 0, or every concurrent write fails at once",
            ));
        }
        if self.acquire_timeout_ms == 0 {
            problems.push(ConfigProblem::new("acquire_timeout_ms", "must be above 0"));
        }
        into_result(problems)
    }

    /// How the link to the database server is protected, from the URL's
    /// `sslmode` (PostgreSQL) or `ssl-mode` (MySQL) parameter; `None` for
    /// SQLite, which has no link. Without the parameter the drivers "prefer"
    /// TLS (use it when offered, accept any certificate, fall back to
    /// plaintext), which is [`Transport::Plaintext`]: an attacker on the path
    /// strips it. `pg_ssl_mode_fallback` is the `PGSSLMODE` variable, which the
    /// PostgreSQL driver reads when the URL names no mode. Only
    /// `verify-full`/`VERIFY_IDENTITY` verify both the CA and the host name.
    pub fn transport(&self, pg_ssl_mode_fallback: Option<&str>) -> Option<Transport> {
        let dialect = self.dialect()?;
        let mode = self.ssl_mode_parameter();
        let transport = match dialect {
            Dialect::Sqlite => return None,
            Dialect::Postgres => {
                let mode = mode.or_else(|| pg_ssl_mode_fallback.map(str::to_ascii_lowercase));
                match mode.as_deref().unwrap_or("prefer") {
                    "verify-full" => Transport::VerifiedTls,
                    "require" | "verify-ca" => Transport::UnverifiedTls,
                    _ => Transport::Plaintext,
                }
            }
            Dialect::Mysql => match mode.as_deref().unwrap_or("preferred") {
                "verify_identity" => Transport::VerifiedTls,
                "required" | "verify_ca" => Transport::UnverifiedTls,
                _ => Transport::Plaintext,
            },
        };
        Some(transport)
    }

    /// The URL's TLS mode parameter, lower-cased (the drivers ignore case); the
    /// last one wins, as in the drivers.
    fn ssl_mode_parameter(&self) -> Option<String> {
        let url = Url::parse(&self.driver_url()).ok()?;
        url.query_pairs()
            .filter(|(key, _)| matches!(&**key, "sslmode" | "ssl-mode"))
            .last()
            .map(|(_, value)| value.to_ascii_lowercase())
    }

    /// Whether the server is on this machine: a loopback host, `localhost`, or
    /// a Unix socket (`host=/path` for PostgreSQL, `socket=` for MySQL). A URL
    /// naming no host counts as remote, since PostgreSQL's driver then takes
    /// the host from `PGHOST`. SQLite is local.
    pub fn server_is_local(&self) -> bool {
        let dialect = self.dialect();
        if dialect == Some(Dialect::Sqlite) {
            return true;
        }
        let Ok(url) = Url::parse(&self.driver_url()) else {
            return false;
        };
        let mut host = url
            .host_str()
            .map(|h| h.trim_matches(['[', ']']).to_owned());
        for (key, value) in url.query_pairs() {
            match (dialect, &*key) {
                (Some(Dialect::Postgres), "host" | "hostaddr") => host = Some(value.into_owned()),
                (Some(Dialect::Mysql), "socket") => return true,
                _ => {}
            }
        }
        host.is_some_and(|host| host.starts_with('/') || is_local_host(&host))
    }

    /// A TLS mode the driver would refuse is reported now, naming the choices
    /// (the value itself is not echoed: it sits in a URL that holds a password).
    fn validate_ssl_mode(&self, dialect: Dialect, problems: &mut Vec<ConfigProblem>) {
        let Some(mode) = self.ssl_mode_parameter() else {
            return;
        };
        let (known, message): (&[&str], _) = match dialect {
            Dialect::Postgres => (
                &[
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ],
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full \
                 (production needs verify-full)",
            ),
            _ => (
                &[
                    "disabled",
                    "preferred",
                    "required",
                    "verify_ca",
                    "verify_identity",
                ],
                "ssl-mode must be DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY \
                 (production needs VERIFY_IDENTITY)",
            ),
        };
        if !known.contains(&mode.as_str()) {
            problems.push(ConfigProblem::new("url", message));
        }
    }

    /// Validates, connects, and brings the schema up to date.
    pub fn build(&self, is_prod: bool) -> Result<SqlJobStore> {
        validated("SQL job store", self.validate(is_prod))?;
        SqlJobStore::connect(self)
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The URL as the driver takes it: sqlx's MySQL driver knows only `mysql://`,
    /// so a `mariadb://` scheme is rewritten.
    pub(crate) fn driver_url(&self) -> Cow<'_, str> {
        match self.url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => {
                Cow::Owned(format!("mysql://{rest}"))
            }
            _ => Cow::Borrowed(&self.url),
        }
    }
}

impl fmt::Debug for SqlJobStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlJobStoreConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("busy_timeout_ms", &self.busy_timeout_ms)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

/// Whether a server URL names its database: a path after the host, or
/// Postgres's `dbname=` parameter. Parsed by the `url` crate only (not by the
/// driver, which would read `~/.pgpass`).
fn names_server_database(url: &str) -> bool {
    let Ok(parsed) = Url::parse(url) else {
        return false;
    };
    !parsed.path().trim_matches('/').is_empty()
        || parsed
            .query_pairs()
            .any(|(key, value)| key == "dbname" && !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_is_fine_outside_prod() {
        assert_eq!(
            SqlJobStoreConfig::new("sqlite://mmt.db").validate(false),
            Ok(())
        );
        assert_eq!(
            SqlJobStoreConfig::new("sqlite::memory:").validate(false),
            Ok(())
        );
    }

    #[test]
    fn sqlite_is_refused_in_prod() {
        let problems = SqlJobStoreConfig::new("sqlite://mmt.db")
            .validate(true)
            .expect_err("refused");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "url");
        assert!(problems[0].message.contains("refused in production"));
        let error = SqlJobStoreConfig::new("sqlite://mmt.db")
            .build(true)
            .expect_err("refused");
        assert!(error.to_string().contains("SQLite is for development only"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = SqlJobStoreConfig {
            url: "oracle://db".into(),
            max_connections: 0,
            busy_timeout_ms: 0,
            acquire_timeout_ms: 0,
        };
        let fields: Vec<_> = config
            .validate(false)
            .expect_err("invalid")
            .iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "url",
                "max_connections",
                "busy_timeout_ms",
                "acquire_timeout_ms"
            ]
        );
        assert!(SqlJobStoreConfig::new("sqlite://").validate(false).is_err());
    }

    #[test]
    fn server_databases_are_fine_in_prod() {
        for url in [
            "postgres://mmt:pw@db:5432/mmt",
            "postgresql://db/mmt?sslmode=require",
            "postgres:///mmt?host=/var/run/postgresql",
            "postgres://db?dbname=mmt",
            "mysql://mmt:pw@db:3306/mmt",
            "mariadb://mmt@db/mmt",
        ] {
            assert_eq!(SqlJobStoreConfig::new(url).validate(true), Ok(()), "{url}");
        }
        assert_eq!(
            SqlJobStoreConfig::new("postgresql://db/mmt").dialect(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            SqlJobStoreConfig::new("MariaDB://db/mmt").dialect(),
            Some(Dialect::Mysql)
        );
    }

    #[test]
    fn server_urls_must_name_a_database() {
        for url in [
            "postgres://db:5432",
            "postgres://mmt:pw@db:5432/",
            "mysql://root@db:3306",
            "mariadb://db/?ssl-mode=required",
        ] {
            let problems = SqlJobStoreConfig::new(url)
                .validate(true)
                .expect_err("no database");
            assert_eq!(problems.len(), 1, "{url}");
            assert!(problems[0].message.contains("names no database"), "{url}");
        }
    }

    #[test]
    fn only_modes_that_verify_the_host_count_as_verified_tls() {
        let transport = |url: &str| SqlJobStoreConfig::new(url).transport(None);
        for (url, expected) in [
            ("postgres://db/mmt", Transport::Plaintext),
            ("postgres://db/mmt?sslmode=prefer", Transport::Plaintext),
            ("postgres://db/mmt?sslmode=disable", Transport::Plaintext),
            (
                "postgres://db/mmt?sslmode=require",
                Transport::UnverifiedTls,
            ),
            (
                "postgres://db/mmt?sslmode=verify-ca",
                Transport::UnverifiedTls,
            ),
            (
                "postgres://db/mmt?sslmode=verify-full&sslrootcert=/etc/mmt/db-ca.pem",
                Transport::VerifiedTls,
            ),
            (
                "postgresql://db/mmt?ssl-mode=VERIFY-FULL",
                Transport::VerifiedTls,
            ),
            // The last parameter wins, as in the driver.
            (
                "postgres://db/mmt?sslmode=verify-full&sslmode=prefer",
                Transport::Plaintext,
            ),
            ("mysql://db/mmt", Transport::Plaintext),
            ("mysql://db/mmt?ssl-mode=PREFERRED", Transport::Plaintext),
            ("mysql://db/mmt?ssl-mode=REQUIRED", Transport::UnverifiedTls),
            (
                "mariadb://db/mmt?ssl-mode=VERIFY_CA",
                Transport::UnverifiedTls,
            ),
            (
                "mariadb://db/mmt?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/mmt/db-ca.pem",
                Transport::VerifiedTls,
            ),
        ] {
            assert_eq!(transport(url), Some(expected), "{url}");
        }
        assert_eq!(transport("sqlite://mmt.db"), None);
        // PGSSLMODE applies when the URL names no mode, never over it.
        let pg = SqlJobStoreConfig::new("postgres://db/mmt");
        assert_eq!(
            pg.transport(Some("verify-full")),
            Some(Transport::VerifiedTls)
        );
        let prefer = SqlJobStoreConfig::new("postgres://db/mmt?sslmode=prefer");
        assert_eq!(
            prefer.transport(Some("verify-full")),
            Some(Transport::Plaintext)
        );
        let mysql = SqlJobStoreConfig::new("mysql://db/mmt");
        assert_eq!(
            mysql.transport(Some("verify-full")),
            Some(Transport::Plaintext)
        );
    }

    #[test]
    fn unknown_tls_modes_are_refused_without_echoing_the_url() {
        for url in [
            "postgres://mmt:s3cret@db/mmt?sslmode=verify_full",
            "mysql://mmt:s3cret@db/mmt?ssl-mode=verify-full",
        ] {
            let problems = SqlJobStoreConfig::new(url)
                .validate(true)
                .expect_err("unknown mode");
            assert_eq!(problems.len(), 1, "{url}");
            assert!(problems[0].message.contains("mode must be"), "{url}");
            assert!(!problems[0].message.contains("s3cret"));
        }
    }

    #[test]
    fn local_servers_are_loopback_hosts_and_sockets() {
        let local = |url: &str| SqlJobStoreConfig::new(url).server_is_local();
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://localhost/test",
            "postgres://[::1]:5432/test",
            "postgres:///mmt?host=/var/run/postgresql",
            "mysql://root@127.0.0.1:3306/test",
            "mysql://root@db/test?socket=/run/mysqld/mysqld.sock",
            "sqlite://mmt.db",
        ] {
            assert!(local(url), "{url}");
        }
        for url in [
            "postgres://db.internal/mmt",
            "postgres://10.0.0.5/mmt",
            "postgres:///mmt",
            "postgres://127.0.0.1/mmt?host=db.internal",
            "mariadb://db/mmt",
        ] {
            assert!(!local(url), "{url}");
        }
    }

    #[test]
    fn mariadb_urls_reach_the_mysql_driver_as_mysql() {
        let config = SqlJobStoreConfig::new("mariadb://root@127.0.0.1:3306/test");
        assert_eq!(config.driver_url(), "mysql://root@127.0.0.1:3306/test");
        let config = SqlJobStoreConfig::new("postgres://db/mmt");
        assert_eq!(config.driver_url(), "postgres://db/mmt");
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let parsed: SqlJobStoreConfig =
            serde_json::from_str(r#"{"url": "sqlite://a.db"}"#).expect("valid");
        assert_eq!(parsed, SqlJobStoreConfig::new("sqlite://a.db"));
        let parsed: Result<SqlJobStoreConfig, _> =
            serde_json::from_str(r#"{"url": "sqlite://a.db", "pool": 3}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn passwords_are_never_printed() {
        let config = SqlJobStoreConfig::new("postgres://mmt:s3cret@db:5432/mmt");
        assert_eq!(config.redacted_url(), "postgres://mmt:***@db:5432/mmt");
        assert!(!format!("{config:?}").contains("s3cret"));
        let json = serde_json::to_string(&config).expect("json");
        assert!(!json.contains("s3cret"));
        assert_eq!(redact_url("sqlite://mmt.db"), "sqlite://mmt.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn server_passwords_are_never_printed() {
        for (url, redacted) in [
            (
                "postgresql://mmt:s3cret@db.internal:5432/mmt?sslmode=require",
                "postgresql://mmt:***@db.internal:5432/mmt?sslmode=require",
            ),
            (
                "mysql://root:s3cret@127.0.0.1:3306/test",
                "mysql://root:***@127.0.0.1:3306/test",
            ),
            ("mariadb://mmt:s3cret@db/mmt", "mariadb://mmt:***@db/mmt"),
            (
                "postgres://db/mmt?user=mmt&password=s3cret&sslmode=verify-full",
                "postgres://db/mmt?user=mmt&password=***&sslmode=verify-full",
            ),
            // Unescaped `@`, `/` and `?` in the password: where it ends
            // cannot be told, so nothing of the URL is shown.
            (
                "postgres://mmt:s3c@r/e?t@db/mmt",
                mmt_core::redact::UNREADABLE_URL,
            ),
            (
                "mysql://root@127.0.0.1:3306/test",
                "mysql://root@127.0.0.1:3306/test",
            ),
        ] {
            let config = SqlJobStoreConfig::new(url);
            assert_eq!(config.redacted_url(), redacted);
            assert!(!format!("{config:?}").contains("s3c"), "{url}");
            let json = serde_json::to_string(&config).expect("json");
            assert!(!json.contains("s3c"), "{url}");
            let problems = format!("{:?}", config.validate(true));
            assert!(!problems.contains("s3c"), "{url}");
        }
    }
}
