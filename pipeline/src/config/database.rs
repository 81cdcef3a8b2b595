//! `DATABASE_URL`: the job store.

use std::fmt;

use mmt_connectors::sql::SqlJobStoreConfig;
use serde::{Serialize, Serializer};

use mmt_core::redact::redact_url;
use url::Url;

use super::secret::Secret;
use super::tls::PhiLink;
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const DATABASE_URL: &str = "DATABASE_URL";
const PGSSLMODE: &str = "PGSSLMODE";

/// The variables this section reads beyond DESIGN.md's.
pub(super) const VARIABLES: &[&str] = &[PGSSLMODE];

/// The job store's database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// SQLite: a file on this machine; development only.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl DatabaseKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
            Self::Mysql => "MySQL",
        }
    }

    /// The query parameters sqlx 0.9 reads from a URL of this engine
    /// (`sqlx-*/src/options/parse.rs`); PostgreSQL also reads `options[<name>]`.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::Sqlite => &["mode", "cache", "immutable", "vfs"],
            Self::Postgres => &[
                "sslmode",
                "ssl-mode",
                "sslrootcert",
                "ssl-root-cert",
                "ssl-ca",
                "sslcert",
                "ssl-cert",
                "sslkey",
                "ssl-key",
                "statement-cache-capacity",
                "host",
                "hostaddr",
                "port",
                "dbname",
                "user",
                "password",
                "application_name",
                "options",
            ],
            Self::Mysql => &[
                "sslmode",
                "ssl-mode",
                "sslca",
                "ssl-ca",
                "charset",
                "collation",
                "sslcert",
                "ssl-cert",
                "sslkey",
                "ssl-key",
                "statement-cache-capacity",
                "socket",
                "timezone",
                "time-zone",
            ],
        }
    }
}

/// PostgreSQL's `options[<setting>]` parameter.
fn is_postgres_option(name: &str) -> bool {
    name.strip_prefix("options[")
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(is_parameter_name)
}

/// What a parameter name looks like: short, letters, digits, `-`, `_`, `.`.
fn is_parameter_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A database URL. Its password (and any password-like query parameter) is hidden
/// from `Debug`, `Display` and `Serialize`; [`DatabaseUrl::expose`] gives the URL to
/// connect with.
#[derive(Clone)]
pub struct DatabaseUrl {
    kind: DatabaseKind,
    url: Secret,
}

impl DatabaseUrl {
    /// The form a problem message asks for.
    pub const EXPECTED: &'static str = "a URL such as postgres://user:password@host:5432/db, \
         mysql://user:password@host:3306/db or sqlite://mmt.db";

    /// Parses `value`: `sqlite:` followed by a path (or `:memory:`), or
    /// `postgres://`, `postgresql://`, `mysql://`, `mariadb://` followed by a host.
    pub fn parse(value: &str) -> Option<Self> {
        if value.chars().any(char::is_whitespace) {
            return None;
        }
        let (scheme, rest) = value.split_once(':')?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => DatabaseKind::Sqlite,
            "postgres" | "postgresql" => DatabaseKind::Postgres,
            "mysql" | "mariadb" => DatabaseKind::Mysql,
            _ => return None,
        };
        let well_formed = match kind {
            DatabaseKind::Sqlite => !rest.trim_start_matches('/').is_empty(),
            DatabaseKind::Postgres | DatabaseKind::Mysql => rest
                .strip_prefix("//")
                .is_some_and(|authority| !authority.is_empty()),
        };
        // The drivers read the URL with the `url` crate: so does every check here.
        (well_formed && Url::parse(value).is_ok()).then(|| Self {
            kind,
            url: Secret::new(value),
        })
    }

    /// A problem for each query parameter the engine's driver does not read.
    ///
    /// sqlx ignores an unknown parameter, and its PostgreSQL driver logs it
    /// with its value (`?token=…` would put the token in the log): so the URL
    /// is refused instead, naming the parameter and never its value. A name
    /// is shown only when the parameter has a value: a bare `?word` may be a
    /// secret pasted in the wrong place.
    pub fn parameter_problems(&self) -> Vec<String> {
        let Ok(url) = Url::parse(self.url.expose()) else {
            return Vec::new();
        };
        let accepted = self.kind.parameters();
        url.query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| {
                let (name, _) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
                let known = accepted.contains(&name.as_ref())
                    || (self.kind == DatabaseKind::Postgres && is_postgres_option(&name));
                if known {
                    return None;
                }
                let named = pair.contains('=') && is_parameter_name(&name);
                let which = if named {
                    format!("the parameter `{name}`")
                } else {
                    "a parameter (name not shown)".to_owned()
                };
                Some(format!(
                    "has {which}, which the {} driver does not read: remove it (the value is \
                     not shown); accepted: {}",
                    self.kind.name(),
                    accepted.join(", ")
                ))
            })
            .collect()
    }

    /// The engine.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The URL with its password: for the connection pool only, never for a log.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// The URL with `username` and `password` as its credentials (each
    /// percent-encoded, so a `%` or `@` in a password reads back as itself);
    /// `None` for SQLite.
    pub fn with_credentials(&self, username: &str, password: &str) -> Option<Self> {
        if self.kind == DatabaseKind::Sqlite {
            return None;
        }
        let encode = |text: &str| {
            percent_encoding::utf8_percent_encode(text, super::rabbitmq::URL_COMPONENT).to_string()
        };
        let mut url = Url::parse(self.url.expose()).ok()?;
        url.set_username(&encode(username)).ok()?;
        url.set_password(Some(&encode(password))).ok()?;
        Self::parse(url.as_str())
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(self.url.expose())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The job store.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: where jobs, transcripts and idempotency keys are stored.
    /// Default `sqlite://mmt.db` (development only; SQLite is refused in `prod`).
    pub url: DatabaseUrl,
    /// Whether `url` is the default because `DATABASE_URL` was not set.
    pub url_defaulted: bool,
    /// `PGSSLMODE`: the TLS mode PostgreSQL's driver uses when `DATABASE_URL`
    /// names none (`sslmode=` in the URL wins). `prod` needs `verify-full`
    /// (with `sslrootcert`) for a server on another machine.
    pub pg_ssl_mode: Option<String>,
}

impl DatabaseConfig {
    /// The development default.
    pub const DEFAULT_URL: &'static str = "sqlite://mmt.db";

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let parsed = vars.parse(
            DATABASE_URL,
            DatabaseUrl::EXPECTED,
            Echo::Never,
            DatabaseUrl::parse,
        );
        for problem in parsed.iter().flat_map(DatabaseUrl::parameter_problems) {
            vars.report(Problem::fatal(DATABASE_URL, problem));
        }
        let url_defaulted = !vars.is_set(DATABASE_URL);
        let url = parsed.unwrap_or_else(Self::default_url);
        Self {
            url,
            url_defaulted,
            pg_ssl_mode: vars.text(PGSSLMODE),
        }
    }

    fn default_url() -> DatabaseUrl {
        DatabaseUrl {
            kind: DatabaseKind::Sqlite,
            url: Secret::new(Self::DEFAULT_URL),
        }
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        self.validate_tls(env, out);
        let Some(severity) = env.production_rule() else {
            return;
        };
        let message = if self.url_defaulted {
            format!(
                "not set, so the SQLite development default would be used; {env} needs \
                 a postgres:// or mysql:// URL"
            )
        } else if self.url.kind() == DatabaseKind::Sqlite {
            format!("SQLite is for development only; {env} needs a postgres:// or mysql:// URL")
        } else {
            return;
        };
        out.push(Problem {
            variable: DATABASE_URL,
            message,
            severity,
        });
    }
}

impl DatabaseConfig {
    /// The production rule on the link to PostgreSQL or MySQL (SQLite has none).
    fn validate_tls(&self, env: Environment, out: &mut Vec<Problem>) {
        let store = SqlJobStoreConfig::new(self.url.expose());
        let Some(transport) = store.transport(self.pg_ssl_mode.as_deref()) else {
            return;
        };
        let (service, fix) = match self.url.kind() {
            DatabaseKind::Mysql => (
                "MySQL/MariaDB (DATABASE_URL)",
                "add ssl-mode=VERIFY_IDENTITY&ssl-ca=<CA file> to the URL (the driver's \
                 default PREFERRED falls back to plaintext and accepts any certificate)",
            ),
            _ => (
                "PostgreSQL (DATABASE_URL)",
                "add sslmode=verify-full&sslrootcert=<CA file> to the URL (the driver's \
                 default prefer falls back to plaintext and accepts any certificate)",
            ),
        };
        PhiLink {
            variable: DATABASE_URL,
            service,
            carries: "transcripts, patient references",
            transport,
            local: store.server_is_local(),
            fix,
        }
        .validate(env, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_percent_encoded_into_the_url() {
        let url = DatabaseUrl::parse("postgres://db.internal:5432/mmt?sslmode=require").unwrap();
        let with = url.with_credentials("mmt app", "p%41ss@/:x").unwrap();
        assert_eq!(
            with.expose(),
            "postgres://mmt%20app:p%2541ss%40%2F%3Ax@db.internal:5432/mmt?sslmode=require"
        );
        assert!(!with.to_string().contains("p%2541"), "{with}");
        let parsed = Url::parse(with.expose()).unwrap();
        let decoded = percent_encoding::percent_decode_str(parsed.password().unwrap())
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, "p%41ss@/:x");
        // Credentials already in the URL are replaced.
        let old = DatabaseUrl::parse("mysql://old:secret@db:3306/mmt").unwrap();
        let new = old.with_credentials("mmt", "pw").unwrap();
        assert_eq!(new.expose(), "mysql://mmt:pw@db:3306/mmt");
        assert!(DatabaseUrl::parse("sqlite://mmt.db")
            .unwrap()
            .with_credentials("a", "b")
            .is_none());
    }

    #[test]
    fn kinds() {
        let kind = |s: &str| DatabaseUrl::parse(s).map(|u| u.kind());
        assert_eq!(kind("sqlite://mmt.db"), Some(DatabaseKind::Sqlite));
        assert_eq!(kind("sqlite::memory:"), Some(DatabaseKind::Sqlite));
        assert_eq!(kind("sqlite:mmt.db"), Some(DatabaseKind::Sqlite));
        assert_eq!(
            kind("postgres://127.0.0.1/test"),
            Some(DatabaseKind::Postgres)
        );
        assert_eq!(kind("postgresql://u:p@h/db"), Some(DatabaseKind::Postgres));
        assert_eq!(
            kind("mysql://root@127.0.0.1/test"),
            Some(DatabaseKind::Mysql)
        );
        assert_eq!(kind("mariadb://root@h/test"), Some(DatabaseKind::Mysql));
        for bad in [
            "",
            "mmt.db",
            "sqlite:",
            "postgres:db",
            "postgres://",
            "redis://h",
            "post gres://h",
        ] {
            assert!(DatabaseUrl::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn unknown_parameters_are_named_never_their_values() {
        let problems = |url: &str| {
            DatabaseUrl::parse(url)
                .expect("a database URL")
                .parameter_problems()
        };
        assert!(problems("postgres://db/mmt?sslmode=verify-full&sslrootcert=/ca.pem").is_empty());
        assert!(problems("postgres://db/mmt?options[statement_timeout]=5s").is_empty());
        assert!(problems("mysql://db/mmt?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem").is_empty());
        assert!(problems("sqlite://mmt.db?mode=rwc").is_empty());
        let found = problems("postgres://db/mmt?sslmode=require&token=SECRET123&hunter2");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("`token`"), "{}", found[0]);
        assert!(found[1].contains("name not shown"), "{}", found[1]);
        for problem in &found {
            assert!(!problem.contains("SECRET123") && !problem.contains("hunter2"));
        }
        assert_eq!(problems("mysql://db/mmt?application_name=x").len(), 1);
        assert_eq!(problems("sqlite://mmt.db?token=SECRET123").len(), 1);
    }

    #[test]
    fn password_is_hidden_but_exposed_for_connecting() {
        let url = DatabaseUrl::parse("postgres://mmt:pa55word@db/mmt").expect("valid");
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("pa55word"), "{shown}");
        }
        assert_eq!(url.expose(), "postgres://mmt:pa55word@db/mmt");
    }
}
