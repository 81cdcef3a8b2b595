//! The job store's databases for tests: a temporary SQLite file, or a
//! scratch schema (PostgreSQL: `search_path` in the URL) or database
//! (MariaDB/MySQL) of its own on the real servers, `mmt_t_<random>`, dropped
//! afterwards, so tests run in parallel and again. A server that is not
//! reachable skips its tests, or fails them with `CI=true` (see
//! [`super::require_service`]). The servers are those of the development
//! machines and CI:
//! - PostgreSQL at 127.0.0.1:5432, trust auth, user `postgres`, database `test`;
//! - MariaDB at 127.0.0.1:3306, user `root`, no password, database `test`.
//!
//! [`on_servers!`] runs a test function once per server, [`on_every_store!`]
//! once per store, SQLite included.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mmt_connectors::sql::Dialect;
use mmt_connectors::{SqlJobStore, SqlJobStoreConfig};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::require_service;

pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_ADDR: &str = "127.0.0.1:3306";
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A scratch schema (Postgres), database (MySQL) or SQLite file for one
/// test, dropped with it.
pub struct Scratch {
    pub dialect: Dialect,
    /// The schema or database (`main` for SQLite).
    pub name: String,
    /// The store's URL, pointing into the scratch space.
    pub url: String,
    /// The SQLite file's folder.
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// A fresh scratch space on `dialect`'s server (a temporary file for
    /// SQLite), or `None` if the server is not reachable (and the test should
    /// return).
    pub fn new(dialect: Dialect) -> Option<Self> {
        let name = scratch_name();
        let (service, addr) = match dialect {
            Dialect::Postgres => ("PostgreSQL", POSTGRES_ADDR),
            Dialect::Mysql => ("MariaDB/MySQL", MYSQL_ADDR),
            Dialect::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
                return Some(Self {
                    dialect,
                    name: "main".into(),
                    url,
                    dir: Some(dir),
                });
            }
        };
        if !require_service(service, addr) {
            return None;
        }
        let url = match dialect {
            // `options=-c search_path=<name>`: every connection works in the scratch schema.
            Dialect::Postgres => format!("{POSTGRES_URL}?options=-c%20search_path%3D{name}"),
            _ => format!("mysql://root@127.0.0.1:3306/{name}"),
        };
        let scratch = Self {
            dialect,
            name,
            url,
            dir: None,
        };
        let create = match dialect {
            Dialect::Postgres => format!("CREATE SCHEMA {}", scratch.name),
            _ => format!(
                "CREATE DATABASE {} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                scratch.name
            ),
        };
        scratch.admin(&create);
        Some(scratch)
    }

    /// A store on the scratch space (with production rules on the servers;
    /// SQLite is for development only).
    pub fn store(&self) -> SqlJobStore {
        self.config()
            .build(self.dialect != Dialect::Sqlite)
            .expect("connect")
    }

    pub fn config(&self) -> SqlJobStoreConfig {
        SqlJobStoreConfig::new(&self.url)
    }

    /// The SQLite file's folder (`None` on a server).
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Runs one statement on the server's `test` database (SQLite: the
    /// file), outside the store.
    pub fn admin(&self, statement: &str) {
        if let Err(error) = self.try_admin(statement) {
            panic!("{statement}: {error}");
        }
    }

    fn try_admin(&self, statement: &str) -> Result<(), sqlx::Error> {
        let statement = AssertSqlSafe(statement.to_owned());
        runtime().block_on(async {
            match self.dialect {
                Dialect::Sqlite => {
                    let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                    sqlx::raw_sql(statement).execute(&mut conn).await?;
                    conn.close().await
                }
                Dialect::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(POSTGRES_URL).await?;
                    sqlx::raw_sql(statement).execute(&mut conn).await?;
                    conn.close().await
                }
                _ => {
                    let mut conn = sqlx::MySqlConnection::connect(MYSQL_URL).await?;
                    sqlx::raw_sql(statement).execute(&mut conn).await?;
                    conn.close().await
                }
            }
        })
    }

    /// Rows of `table` in the scratch space, read beside the store.
    pub fn rows_in(&self, table: &str) -> i64 {
        let sql = AssertSqlSafe(format!("SELECT COUNT(*) FROM {}.{table}", self.name));
        runtime()
            .block_on(async {
                match self.dialect {
                    Dialect::Sqlite => {
                        let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                        let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await;
                        conn.close().await?;
                        count
                    }
                    Dialect::Postgres => {
                        let mut conn = sqlx::PgConnection::connect(POSTGRES_URL).await?;
                        let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await;
                        conn.close().await?;
                        count
                    }
                    _ => {
                        let mut conn = sqlx::MySqlConnection::connect(MYSQL_URL).await?;
                        let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await;
                        conn.close().await?;
                        count
                    }
                }
            })
            .expect("count")
    }

    /// The stored `transcript_json` of job `id`, read beside the store (in
    /// the scratch space: the URL names it).
    pub fn stored_transcript(&self, id: &str) -> Option<String> {
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT transcript_json FROM jobs WHERE id = $1",
            _ => "SELECT transcript_json FROM jobs WHERE id = ?",
        };
        runtime()
            .block_on(async {
                match self.dialect {
                    Dialect::Sqlite => {
                        let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                        let stored = sqlx::query_scalar(sql).bind(id).fetch_one(&mut conn).await;
                        conn.close().await?;
                        stored
                    }
                    Dialect::Postgres => {
                        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                        let stored = sqlx::query_scalar(sql).bind(id).fetch_one(&mut conn).await;
                        conn.close().await?;
                        stored
                    }
                    Dialect::Mysql => {
                        let mut conn = sqlx::MySqlConnection::connect(&self.url).await?;
                        let stored = sqlx::query_scalar(sql).bind(id).fetch_one(&mut conn).await;
                        conn.close().await?;
                        stored
                    }
                }
            })
            .expect("read the stored transcript")
    }

    /// Writes `value` as job `id`'s stored `transcript_json`, beside the store.
    pub fn set_stored_transcript(&self, id: &str, value: &str) {
        let sql = match self.dialect {
            Dialect::Postgres => "UPDATE jobs SET transcript_json = $1 WHERE id = $2",
            _ => "UPDATE jobs SET transcript_json = ? WHERE id = ?",
        };
        runtime()
            .block_on(async {
                match self.dialect {
                    Dialect::Sqlite => {
                        let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                        sqlx::query(sql)
                            .bind(value)
                            .bind(id)
                            .execute(&mut conn)
                            .await?;
                        conn.close().await
                    }
                    Dialect::Postgres => {
                        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                        sqlx::query(sql)
                            .bind(value)
                            .bind(id)
                            .execute(&mut conn)
                            .await?;
                        conn.close().await
                    }
                    Dialect::Mysql => {
                        let mut conn = sqlx::MySqlConnection::connect(&self.url).await?;
                        sqlx::query(sql)
                            .bind(value)
                            .bind(id)
                            .execute(&mut conn)
                            .await?;
                        conn.close().await
                    }
                }
            })
            .expect("write the stored transcript");
    }

    /// Whether the stored data holds `needle`: every byte of the SQLite
    /// files (database, WAL), or any stored transcript on a server.
    pub fn holds(&self, needle: &str) -> bool {
        if let Some(dir) = self.sqlite_dir() {
            return std::fs::read_dir(dir).expect("dir").any(|entry| {
                let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            });
        }
        let pattern = format!("%{needle}%");
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT COUNT(*) FROM jobs WHERE transcript_json LIKE $1",
            _ => "SELECT COUNT(*) FROM jobs WHERE transcript_json LIKE ?",
        };
        let count: i64 = runtime()
            .block_on(async {
                match self.dialect {
                    Dialect::Postgres => {
                        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                        let count = sqlx::query_scalar(sql)
                            .bind(&pattern)
                            .fetch_one(&mut conn)
                            .await;
                        conn.close().await?;
                        count
                    }
                    _ => {
                        let mut conn = sqlx::MySqlConnection::connect(&self.url).await?;
                        let count = sqlx::query_scalar(sql)
                            .bind(&pattern)
                            .fetch_one(&mut conn)
                            .await;
                        conn.close().await?;
                        count
                    }
                }
            })
            .expect("search the stored transcripts");
        count > 0
    }

    /// The names of the indexes on `jobs`, sorted (servers only).
    pub fn job_indexes(&self) -> Vec<String> {
        let name = self.name.clone();
        let mut names: Vec<String> = runtime().block_on(async {
            match self.dialect {
                Dialect::Sqlite => unreachable!("the index test runs on the servers"),
                Dialect::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(POSTGRES_URL)
                        .await
                        .expect("connect");
                    sqlx::query(
                        "SELECT indexname AS name FROM pg_indexes \
                         WHERE schemaname = $1 AND tablename = 'jobs'",
                    )
                    .bind(name)
                    .fetch_all(&mut conn)
                    .await
                    .expect("indexes")
                    .iter()
                    .map(|row| row.get("name"))
                    .collect()
                }
                _ => {
                    let mut conn = sqlx::MySqlConnection::connect(MYSQL_URL)
                        .await
                        .expect("connect");
                    sqlx::query(
                        "SELECT DISTINCT CAST(index_name AS CHAR) AS name \
                         FROM information_schema.statistics \
                         WHERE table_schema = ? AND table_name = 'jobs'",
                    )
                    .bind(name)
                    .fetch_all(&mut conn)
                    .await
                    .expect("indexes")
                    .iter()
                    .map(|row| row.get("name"))
                    .collect()
                }
            }
        });
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.dialect == Dialect::Sqlite {
            // The folder goes with `dir`.
            return;
        }
        let drop = match self.dialect {
            Dialect::Postgres => format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        // Not `admin`: a panic while the test is already panicking would abort.
        if let Err(error) = self.try_admin(&drop) {
            eprintln!("leaving scratch {}: {error}", self.name);
        }
    }
}

/// `mmt_t_` and 16 hex digits, unique across processes and runs.
fn scratch_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    );
    format!("mmt_t_{:016x}", hasher.finish())
}

/// A runtime for one statement beside the store.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Each test function (taking `&Scratch`) as `#[test]`s in module `$module`
/// on `$dialect`'s store.
#[allow(unused_macros)]
macro_rules! tests_on {
    ($module:ident, $dialect:ident, [$($name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    let dialect = mmt_connectors::sql::Dialect::$dialect;
                    if let Some(scratch) = crate::common::sql::Scratch::new(dialect) {
                        super::$name(&scratch);
                    }
                }
            )*
        }
    };
}

/// Each test once per server: `postgres::<name>` and `mysql::<name>`.
#[allow(unused_macros)]
macro_rules! on_servers {
    ($($name:ident),* $(,)?) => {
        crate::common::sql::tests_on!(postgres, Postgres, [$($name),*]);
        crate::common::sql::tests_on!(mysql, Mysql, [$($name),*]);
    };
}

/// Each test once per store: `sqlite::<name>`, `postgres::<name>`, `mysql::<name>`.
#[allow(unused_macros)]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        crate::common::sql::tests_on!(sqlite, Sqlite, [$($name),*]);
        crate::common::sql::on_servers!($($name),*);
    };
}

#[allow(unused_imports)]
pub(crate) use {on_every_store, on_servers, tests_on};
