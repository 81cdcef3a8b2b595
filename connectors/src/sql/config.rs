//! Typed configuration of the SQL job store.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::SqlJobStore;
use crate::config::{into_result, ConfigProblem};
use crate::error::{ConnectorError, Result};

/// The SQL engines the job store knows. Only SQLite is implemented; the store
/// keeps its SQL portable so Postgres and MySQL are additions, not rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// A file on this machine (or `:memory:`): development and tests only.
    Sqlite,
    /// PostgreSQL (not implemented yet).
    Postgres,
    /// MySQL or MariaDB (not implemented yet).
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
    /// `DATABASE_URL`: `sqlite://path/to/mmt.db` (the file is created if missing,
    /// and runs in WAL mode) or `sqlite::memory:` (tests). SQLite is refused in
    /// production. Its password, if any, is never printed.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Most pooled connections. SQLite runs one writer at a time (WAL lets
    /// readers run beside it), so a few are enough. Default 4.
    #[serde(default = "SqlJobStoreConfig::default_max_connections")]
    pub max_connections: u32,
    /// How long a statement waits for a locked SQLite database before failing
    /// (retryably), in milliseconds. Default 5000.
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

    /// Sets the SQLite busy timeout.
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
                problems.push(ConfigProblem::new(
                    "url",
                    format!(
                        "the {} job store is not implemented in this build yet; use sqlite:// for now",
                        serde_json::to_value(dialect)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                ));
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

    /// Validates, connects, and brings the schema up to date.
    pub fn build(&self, is_prod: bool) -> Result<SqlJobStore> {
        self.validate(is_prod)
            .map_err(|problems| ConnectorError::Config {
                component: "SQL job store",
                problems,
            })?;
        SqlJobStore::connect(self)
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
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

fn serialize_redacted<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact(url))
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
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
        assert!(SqlJobStoreConfig::new("postgres://h/db")
            .validate(true)
            .is_err());
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
        assert_eq!(redact("sqlite://mmt.db"), "sqlite://mmt.db");
    }
}
