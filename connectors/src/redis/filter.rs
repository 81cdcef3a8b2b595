//! The idempotency filter kept in Redis: RedisBloom when the module is loaded,
//! otherwise a Bloom filter in a plain Redis string.
//!
//! # Generations (`REDIS_BLOOM_TTL_SECONDS`)
//!
//! Time is cut into generations of `ttl` seconds: `g = unix_seconds / ttl`. Each
//! generation is its own key; [`check`](IdempotencyFilter::check) asks the
//! current and the previous generation, [`insert`](IdempotencyFilter::insert)
//! writes the current one, and each write sets the key to expire `2 × ttl`
//! seconds later. An id is thus remembered for at least `ttl` and at most about
//! `2 × ttl` seconds, and memory stays bounded to about two generations. A
//! forgotten id is answered "certainly new"; dedupe then still learns from the
//! job store that the job exists, so forgetting only costs a lookup.
//!
//! # Keys
//!
//! - RedisBloom: `<prefix>:bf:<generation>`, written with `BF.INSERT … CAPACITY n
//!   ERROR p ITEMS id` (it reserves a filter of the configured size when the key
//!   is missing and adds in the same command, so concurrent pods never race a
//!   separate `BF.RESERVE`) and `EXPIRE` in one `MULTI`/`EXEC`; read with `BF.EXISTS`.
//! - Bitmap: `<prefix>:bm:<bits>:<hashes>:<generation>`, a Redis string of `bits`
//!   bits; an id sets `hashes` bits (`SETBIT`, with `EXPIRE`, in one
//!   `MULTI`/`EXEC`) chosen by double hashing, read with pipelined `GETBIT`.
//!   The size is part of the key, so pods sized differently (during a rollout)
//!   use separate keys instead of reading each other's bits wrongly, which
//!   would give false negatives.
//!
//! # Failures
//!
//! Connect and command timeouts bound every call (a dead Redis fails in about a
//! second, never hangs the dataflow). A failed connection is dropped; the next
//! call reconnects once at once, and if Redis is still failing later calls fail
//! immediately, without touching the network, until a backoff has passed
//! (doubling up to a limit). Every error is `External { retryable: true }`.

use std::time::{Duration, Instant};

use mmt_core::error::ErrorClass;
use mmt_core::idempotency::{FilterAnswer, IdempotencyFilter};
use mmt_core::job::{ComponentError, JobId};
use mmt_core::retry::RetryPolicy;
use redis::{Client, Cmd, Connection, Pipeline, RedisError};
use serde::Serialize;

use super::config::{BackendChoice, RedisFilterConfig};
use crate::config::ConfigProblem;
use crate::error::{ConnectorError, Result};

/// The filter implementation a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Backend {
    /// The RedisBloom module's scalable Bloom filters (`BF.*`).
    RedisBloom,
    /// A fixed-size Bloom filter in a plain Redis string (`SETBIT`/`GETBIT`).
    Bitmap(BitmapLayout),
}

impl Backend {
    /// A short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RedisBloom => "redisbloom",
            Self::Bitmap(_) => "redis-bitmap",
        }
    }
}

/// The size of the bitmap Bloom filter and how many bits each id sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BitmapLayout {
    /// Bits in one generation's string (`m`).
    pub bits: u64,
    /// Bits set per id (`k`).
    pub hashes: u32,
}

impl BitmapLayout {
    /// The most bits one id sets; more only slows every call.
    const MAX_HASHES: u32 = 32;

    /// The optimal layout for `items` ids at a false-positive rate `rate`:
    /// `m = ⌈−n·ln p / (ln 2)²⌉`, `k = round(m/n · ln 2)`.
    pub fn for_capacity(items: u64, rate: f64) -> Self {
        let n = items.max(1) as f64;
        let rate = if rate > 0.0 && rate < 1.0 {
            rate
        } else {
            0.001
        };
        let ln2 = std::f64::consts::LN_2;
        let bits = (-n * rate.ln() / (ln2 * ln2)).ceil().max(8.0);
        let hashes = (bits / n * ln2)
            .round()
            .clamp(1.0, f64::from(Self::MAX_HASHES));
        Self {
            // Saturating casts: validation refuses layouts past Redis' 2³² bits.
            bits: bits as u64,
            hashes: hashes as u32,
        }
    }

    /// The bit offsets of `id`: `h1 + i·h2 (mod m)` for `i < k` (Kirsch and
    /// Mitzenmacher's double hashing), from a hash of the id's bytes.
    ///
    /// The hash is part of the stored format: changing it would make pods of
    /// two versions miss each other's ids; give the keys a new tag if you must.
    pub fn positions(&self, id: &JobId) -> impl Iterator<Item = u64> {
        let x = fnv1a64(id.0.as_bytes());
        let h1 = mix64(x);
        let h2 = mix64(x ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let bits = self.bits.max(1);
        (0..u64::from(self.hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
    }

    /// The false-positive rate this layout gives after `items` inserts:
    /// `(1 − e^(−k·n/m))^k`.
    pub fn expected_false_positive_rate(&self, items: u64) -> f64 {
        let k = f64::from(self.hashes);
        (1.0 - (-k * items as f64 / self.bits.max(1) as f64).exp()).powf(k)
    }
}

/// FNV-1a, 64 bits: a stable hash of bytes (std's hashers may change between releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generation `unix_seconds` falls in.
pub fn generation(unix_seconds: u64, ttl_seconds: u64) -> u64 {
    unix_seconds / ttl_seconds.max(1)
}

fn unix_seconds() -> u64 {
    u64::try_from(mmt_core::job::unix_now()).unwrap_or(0)
}

/// The key of one generation of the filter.
pub fn key(prefix: &str, backend: &Backend, generation: u64) -> String {
    match backend {
        Backend::RedisBloom => format!("{prefix}:bf:{generation}"),
        Backend::Bitmap(layout) => {
            format!("{prefix}:bm:{}:{}:{generation}", layout.bits, layout.hashes)
        }
    }
}

/// The commands of one check or insert, ready to be sent as one round trip.
#[derive(Debug, Clone)]
pub struct Commands {
    /// Sent inside `MULTI`/`EXEC`.
    pub atomic: bool,
    pub commands: Vec<Cmd>,
}

impl Commands {
    fn pipeline(&self) -> Pipeline {
        let mut pipeline = redis::pipe();
        if self.atomic {
            pipeline.atomic();
        }
        for command in &self.commands {
            pipeline.add_command(command.clone());
        }
        pipeline
    }
}

/// The commands answering whether `id` is in any of `keys` (current first).
pub fn check_commands(backend: &Backend, keys: &[String], id: &JobId) -> Commands {
    let mut commands = Vec::new();
    for key in keys {
        match backend {
            Backend::RedisBloom => {
                let mut cmd = redis::cmd("BF.EXISTS");
                cmd.arg(key).arg(&id.0);
                commands.push(cmd);
            }
            Backend::Bitmap(layout) => {
                for offset in layout.positions(id) {
                    let mut cmd = redis::cmd("GETBIT");
                    cmd.arg(key).arg(offset);
                    commands.push(cmd);
                }
            }
        }
    }
    Commands {
        atomic: false,
        commands,
    }
}

/// The commands adding `id` to `key` and setting the key to expire.
pub fn insert_commands(
    backend: &Backend,
    key: &str,
    id: &JobId,
    config: &RedisFilterConfig,
) -> Commands {
    let mut commands = Vec::new();
    match backend {
        Backend::RedisBloom => {
            let mut cmd = redis::cmd("BF.INSERT");
            cmd.arg(key)
                .arg("CAPACITY")
                .arg(config.expected_items)
                .arg("ERROR")
                .arg(config.false_positive_rate)
                .arg("ITEMS")
                .arg(&id.0);
            commands.push(cmd);
        }
        Backend::Bitmap(layout) => {
            for offset in layout.positions(id) {
                let mut cmd = redis::cmd("SETBIT");
                cmd.arg(key).arg(offset).arg(1);
                commands.push(cmd);
            }
        }
    }
    let mut expire = redis::cmd("EXPIRE");
    expire.arg(key).arg(config.ttl_seconds.saturating_mul(2));
    commands.push(expire);
    Commands {
        atomic: true,
        commands,
    }
}

/// Reads the replies of [`check_commands`]: whether every probe of some key hit.
fn answer(backend: &Backend, keys: usize, replies: &[i64]) -> FilterAnswer {
    let per_key = match backend {
        Backend::RedisBloom => 1,
        Backend::Bitmap(layout) => layout.hashes as usize,
    };
    let seen = per_key > 0
        && replies.len() == keys * per_key
        && replies
            .chunks(per_key)
            .any(|probes| probes.iter().all(|&reply| reply == 1));
    if seen {
        FilterAnswer::MaybeSeen
    } else {
        FilterAnswer::CertainlyNew
    }
}

/// Whether a server error says the RedisBloom commands do not exist here
/// (`ERR unknown command 'BF.EXISTS'`), or that this user may not run them
/// (`NOPERM`): either way the bitmap must do.
pub fn bloom_unavailable(code: Option<&str>, detail: Option<&str>) -> bool {
    match code {
        Some("NOPERM") => true,
        Some("ERR") => detail.is_some_and(|detail| {
            let detail = detail.trim_start().to_ascii_lowercase();
            detail.starts_with("unknown command")
        }),
        _ => false,
    }
}

/// The backend to use, given what the `BF.EXISTS` probe answered.
fn choose_backend(
    choice: BackendChoice,
    layout: BitmapLayout,
    probe: std::result::Result<(), RedisError>,
) -> Result<Backend> {
    match probe {
        Ok(()) => Ok(Backend::RedisBloom),
        Err(error) if bloom_unavailable(error.code(), error.detail()) => match choice {
            BackendChoice::RedisBloom => Err(ConnectorError::Config {
                component: "Redis idempotency filter",
                problems: vec![ConfigProblem::new(
                    "backend",
                    "is redisbloom but this Redis has no RedisBloom module (BF.EXISTS is \
                     unknown or not permitted): load the module or use auto or bitmap",
                )],
            }),
            BackendChoice::Auto | BackendChoice::Bitmap => Ok(Backend::Bitmap(layout)),
        },
        Err(error) => Err(ConnectorError::Redis(error)),
    }
}

/// Waits between reconnects: nothing after the first failure of a working
/// connection, then the one retry policy (`mmt_core::retry`) from `first`,
/// doubling with jitter, below `max`.
#[derive(Debug)]
struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        let policy = RetryPolicy::new(first, max.max(first))
            .unwrap_or_else(|_| RetryPolicy::from_base(first));
        Self {
            policy,
            failures: 0,
            retry_at: None,
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = match self.failures {
            // One failure may be a dropped idle connection: reconnect at once.
            1 => None,
            n => self.policy.delay(n - 1).map(|wait| now + wait),
        };
    }

    /// How long until a reconnect may be tried, if it may not yet.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .and_then(|at| at.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }
}

/// The idempotency filter in Redis. One per dataflow worker (it holds one
/// connection); all pods and workers share the keys.
pub struct RedisIdempotencyFilter {
    config: RedisFilterConfig,
    client: Client,
    connection: Option<Connection>,
    backend: Backend,
    /// Whether `backend` was detected on a connection (not yet, for a lazy start).
    detected: bool,
    backoff: Backoff,
    /// Why the last call failed, for the errors answered during backoff.
    last_error: Option<String>,
}

impl std::fmt::Debug for RedisIdempotencyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdempotencyFilter")
            .field("url", &self.config.redacted_url())
            .field("backend", &self.backend)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl RedisIdempotencyFilter {
    /// Connects and picks the backend. Prefer [`RedisFilterConfig::build`], which
    /// validates first.
    pub fn connect(config: &RedisFilterConfig) -> Result<Self> {
        let client = config.client()?;
        let mut connection = open(&client, config)?;
        let backend = detect(&mut connection, config)?;
        tracing::info!(
            redis = %config.redacted_url(),
            backend = backend.kind(),
            "idempotency filter connected"
        );
        Ok(Self {
            connection: Some(connection),
            backend,
            detected: true,
            ..Self::unconnected(config, client)
        })
    }

    /// A filter that connects (and picks its backend) on first use, so a process
    /// can start while Redis is down; until then every call fails (retryably)
    /// and dedupe uses the job store alone. Prefer
    /// [`RedisFilterConfig::build_lazy`], which validates first.
    pub fn connect_lazily(config: &RedisFilterConfig) -> Result<Self> {
        let client = config.client()?;
        Ok(Self::unconnected(config, client))
    }

    fn unconnected(config: &RedisFilterConfig, client: Client) -> Self {
        Self {
            config: config.clone(),
            client,
            connection: None,
            // A placeholder until the first connection detects the backend.
            backend: match config.backend {
                BackendChoice::RedisBloom => Backend::RedisBloom,
                BackendChoice::Auto | BackendChoice::Bitmap => {
                    Backend::Bitmap(config.bitmap_layout())
                }
            },
            detected: false,
            backoff: Backoff::new(
                Duration::from_millis(config.reconnect_backoff_ms),
                Duration::from_millis(config.max_reconnect_backoff_ms),
            ),
            last_error: None,
        }
    }

    /// Connects, pings and detects the backend; writes nothing.
    pub(crate) fn probe(config: &RedisFilterConfig) -> Result<Backend> {
        let client = config.client()?;
        let mut connection = open(&client, config)?;
        redis::cmd("PING").query::<String>(&mut connection)?;
        detect(&mut connection, config)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The key of the current generation (for tests and operators' debugging).
    pub fn current_key(&self) -> String {
        key(
            &self.config.key_prefix,
            &self.backend,
            generation(unix_seconds(), self.config.ttl_seconds),
        )
    }

    /// Runs the commands `build` makes for the backend in use, reconnecting
    /// first if allowed (a reconnect may pick another backend).
    fn run(
        &mut self,
        build: impl FnOnce(&Self) -> Commands,
    ) -> std::result::Result<Vec<i64>, ComponentError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.reconnect()?,
        };
        let commands = build(self);
        match execute(&mut connection, &commands, self.config.command_timeout()) {
            Ok(replies) => {
                self.connection = Some(connection);
                self.backoff.succeeded();
                self.last_error = None;
                Ok(replies)
            }
            Err(Failure::Server(error)) => {
                // Every reply was read: the connection is still in step.
                self.connection = Some(connection);
                Err(self.failure(error))
            }
            Err(Failure::Connection(error)) => {
                self.backoff.failed(Instant::now());
                Err(self.failure(error))
            }
        }
    }

    /// A new connection, unless the backoff says to wait.
    fn reconnect(&mut self) -> std::result::Result<Connection, ComponentError> {
        if let Some(wait) = self.backoff.wait(Instant::now()) {
            return Err(ComponentError::new(
                ErrorClass::External { retryable: true },
                format!(
                    "redis idempotency filter unavailable, reconnecting in {} ms (last error: {})",
                    wait.as_millis(),
                    self.last_error.as_deref().unwrap_or("none")
                ),
            ));
        }
        let opened = open(&self.client, &self.config).and_then(|mut connection| {
            let backend = detect(&mut connection, &self.config)?;
            if backend != self.backend || !self.detected {
                tracing::info!(
                    redis = %self.config.redacted_url(),
                    backend = backend.kind(),
                    "idempotency filter connected"
                );
                self.backend = backend;
                self.detected = true;
            }
            Ok(connection)
        });
        opened.map_err(|error| {
            self.backoff.failed(Instant::now());
            let error = ComponentError::from(error);
            self.last_error = Some(error.message.clone());
            error
        })
    }

    fn failure(&mut self, error: RedisError) -> ComponentError {
        let error = ComponentError::from(ConnectorError::Redis(error));
        self.last_error = Some(error.message.clone());
        error
    }
}

impl IdempotencyFilter for RedisIdempotencyFilter {
    fn check(&mut self, id: &JobId) -> std::result::Result<FilterAnswer, ComponentError> {
        let current = generation(unix_seconds(), self.config.ttl_seconds);
        // Generation 0 has no predecessor (only reachable with a clock at 1970).
        let generations: Vec<u64> = [Some(current), current.checked_sub(1)]
            .into_iter()
            .flatten()
            .collect();
        let replies = self.run(|filter| {
            let keys: Vec<String> = generations
                .iter()
                .map(|&g| key(&filter.config.key_prefix, &filter.backend, g))
                .collect();
            check_commands(&filter.backend, &keys, id)
        })?;
        Ok(answer(&self.backend, generations.len(), &replies))
    }

    fn insert(&mut self, id: &JobId) -> std::result::Result<(), ComponentError> {
        self.run(|filter| {
            insert_commands(&filter.backend, &filter.current_key(), id, &filter.config)
        })
        .map(drop)
    }

    fn kind(&self) -> &'static str {
        self.backend.kind()
    }
}

/// Why [`execute`] failed.
enum Failure {
    /// Redis answered with an error (e.g. `WRONGTYPE`, `OOM`); the connection is fine.
    Server(RedisError),
    /// Timed out or lost: the connection is unusable (or has replies pending).
    Connection(RedisError),
}

/// Sends `commands` in one write and reads their replies, all within `timeout`
/// in total. (The `redis` crate's pipeline waits the socket timeout once per
/// reply, even after the first times out: 2k replies from a frozen Redis would
/// take 2k timeouts.) Returns the integer replies (none for an atomic pipeline).
fn execute(
    connection: &mut Connection,
    commands: &Commands,
    timeout: Duration,
) -> std::result::Result<Vec<i64>, Failure> {
    let deadline = Instant::now() + timeout;
    let lost = Failure::Connection;
    connection.set_write_timeout(Some(timeout)).map_err(lost)?;
    connection
        .send_packed_command(&commands.pipeline().get_packed_pipeline())
        .map_err(lost)?;
    // MULTI and EXEC add a reply each; the queued commands answer `QUEUED`.
    let expected = commands.commands.len() + if commands.atomic { 2 } else { 0 };
    let mut replies = Vec::with_capacity(commands.commands.len());
    let mut server_error = None;
    for _ in 0..expected {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| {
                lost(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "redis command timed out",
                )))
            })?;
        connection.set_read_timeout(Some(left)).map_err(lost)?;
        let reply = connection.recv_response().map_err(lost)?;
        match reply.extract_error() {
            Err(error) => {
                server_error.get_or_insert(error);
            }
            Ok(_) if commands.atomic => {}
            Ok(redis::Value::Int(n)) => replies.push(n),
            Ok(redis::Value::Boolean(b)) => replies.push(i64::from(b)),
            Ok(_) => {
                server_error.get_or_insert(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "expected an integer reply",
                )));
            }
        }
    }
    match server_error {
        Some(error) => Err(Failure::Server(error)),
        None => Ok(replies),
    }
}

/// Opens a connection whose every command is bounded by the command timeout.
fn open(client: &Client, config: &RedisFilterConfig) -> Result<Connection> {
    let connection = client.get_connection_with_timeout(config.connect_timeout())?;
    connection.set_read_timeout(Some(config.command_timeout()))?;
    connection.set_write_timeout(Some(config.command_timeout()))?;
    Ok(connection)
}

/// Picks the backend `config.backend` asks for, probing for RedisBloom.
fn detect(connection: &mut Connection, config: &RedisFilterConfig) -> Result<Backend> {
    let layout = config.bitmap_layout();
    if config.backend == BackendChoice::Bitmap {
        return Ok(Backend::Bitmap(layout));
    }
    let probe = redis::cmd("BF.EXISTS")
        .arg(format!("{}:probe", config.key_prefix))
        .arg("probe")
        .query::<i64>(connection)
        .map(drop);
    choose_backend(config.backend, layout, probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Arg;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    fn id(n: u64) -> JobId {
        JobId(format!("{:032x}", mix64(n)))
    }

    #[test]
    fn layout_follows_the_textbook_formulas() {
        let layout = BitmapLayout::for_capacity(1_000_000, 0.001);
        // m = 1e6·ln(1000)/ln²2 ≈ 14,377,588 bits (≈ 1.7 MiB), k ≈ 10.
        assert!(
            (14_377_000..14_378_000).contains(&layout.bits),
            "{layout:?}"
        );
        assert_eq!(layout.hashes, 10);
        let rate = layout.expected_false_positive_rate(1_000_000);
        assert!((0.0009..0.0011).contains(&rate), "{rate}");
        let small = BitmapLayout::for_capacity(1, 0.4);
        assert!(small.bits >= 8 && small.hashes >= 1);
    }

    #[test]
    fn positions_are_stable_distinct_and_in_range() {
        let layout = BitmapLayout::for_capacity(5_000, 0.01);
        let a: Vec<u64> = layout.positions(&id(1)).collect();
        assert_eq!(a, layout.positions(&id(1)).collect::<Vec<_>>());
        assert_eq!(a.len(), layout.hashes as usize);
        assert!(a.iter().all(|&p| p < layout.bits));
        assert_ne!(a, layout.positions(&id(2)).collect::<Vec<_>>());
        // Pinned: the hash is part of the stored format (see `positions`).
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn keys_carry_backend_size_and_generation() {
        let layout = BitmapLayout {
            bits: 1000,
            hashes: 7,
        };
        assert_eq!(key("mmt:idem", &Backend::RedisBloom, 42), "mmt:idem:bf:42");
        assert_eq!(
            key("mmt:idem", &Backend::Bitmap(layout), 42),
            "mmt:idem:bm:1000:7:42"
        );
        assert_eq!(generation(1_700_000_000, 86_400), 19_675);
        assert_eq!(generation(1_700_000_000, 0), 1_700_000_000);
    }

    #[test]
    fn redisbloom_commands() {
        let config = RedisFilterConfig::new("x:6379")
            .sized_for(5_000, 0.01)
            .ttl(Duration::from_secs(60));
        let job = JobId("abc123".into());
        let keys = vec!["p:bf:9".to_owned(), "p:bf:8".to_owned()];
        let check = check_commands(&Backend::RedisBloom, &keys, &job);
        assert!(!check.atomic);
        let sent: Vec<_> = check.commands.iter().map(args).collect();
        assert_eq!(
            sent,
            [
                ["BF.EXISTS", "p:bf:9", "abc123"],
                ["BF.EXISTS", "p:bf:8", "abc123"]
            ]
        );
        let insert = insert_commands(&Backend::RedisBloom, "p:bf:9", &job, &config);
        assert!(insert.atomic, "insert and expiry go in one MULTI/EXEC");
        let sent: Vec<_> = insert.commands.iter().map(args).collect();
        assert_eq!(
            sent[0],
            [
                "BF.INSERT",
                "p:bf:9",
                "CAPACITY",
                "5000",
                "ERROR",
                "0.01",
                "ITEMS",
                "abc123"
            ]
        );
        assert_eq!(sent[1], ["EXPIRE", "p:bf:9", "120"]);
        let packed = String::from_utf8_lossy(&insert.pipeline().get_packed_pipeline()).into_owned();
        assert!(packed.starts_with("*1\r\n$5\r\nMULTI"), "{packed}");
        assert!(packed.contains("EXEC"));
        assert_eq!(
            answer(&Backend::RedisBloom, 2, &[0, 1]),
            FilterAnswer::MaybeSeen
        );
        assert_eq!(
            answer(&Backend::RedisBloom, 2, &[0, 0]),
            FilterAnswer::CertainlyNew
        );
    }

    #[test]
    fn bitmap_commands_and_answers() {
        let config = RedisFilterConfig::new("x:6379")
            .sized_for(5_000, 0.01)
            .ttl(Duration::from_secs(30));
        let layout = config.bitmap_layout();
        let backend = Backend::Bitmap(layout);
        let job = id(7);
        let k = layout.hashes as usize;
        let keys = vec!["p:cur".to_owned(), "p:prev".to_owned()];
        let check = check_commands(&backend, &keys, &job);
        assert_eq!(check.commands.len(), 2 * k);
        let positions: Vec<String> = layout.positions(&job).map(|p| p.to_string()).collect();
        for (i, cmd) in check.commands.iter().enumerate() {
            let sent = args(cmd);
            assert_eq!(sent[0], "GETBIT");
            assert_eq!(sent[1], keys[i / k]);
            assert_eq!(sent[2], positions[i % k]);
        }
        let insert = insert_commands(&backend, "p:cur", &job, &config);
        assert!(insert.atomic);
        assert_eq!(insert.commands.len(), k + 1);
        assert_eq!(
            args(&insert.commands[0]),
            ["SETBIT", "p:cur", &positions[0], "1"]
        );
        assert_eq!(args(&insert.commands[k]), ["EXPIRE", "p:cur", "60"]);

        let mut replies = vec![1; 2 * k];
        replies[0] = 0;
        assert_eq!(
            answer(&backend, 2, &replies),
            FilterAnswer::MaybeSeen,
            "previous has all"
        );
        replies[k] = 0;
        assert_eq!(answer(&backend, 2, &replies), FilterAnswer::CertainlyNew);
        assert_eq!(
            answer(&backend, 2, &[1]),
            FilterAnswer::CertainlyNew,
            "short reply"
        );
    }

    #[test]
    fn detection_falls_back_to_the_bitmap_without_the_module() {
        // What Redis 7 without RedisBloom answers to `BF.EXISTS`.
        assert!(bloom_unavailable(
            Some("ERR"),
            Some("unknown command 'BF.EXISTS', with args beginning with: 'k' 'x' ")
        ));
        assert!(bloom_unavailable(Some("NOPERM"), None));
        assert!(!bloom_unavailable(
            Some("ERR"),
            Some("wrong number of arguments")
        ));
        assert!(!bloom_unavailable(Some("WRONGTYPE"), None));
        assert!(!bloom_unavailable(None, None));

        let layout = BitmapLayout::for_capacity(100, 0.01);
        let unknown = || {
            Err(redis::make_extension_error(
                "NOPERM".to_owned(),
                Some("this user has no permissions to run the 'bf.exists' command".to_owned()),
            ))
        };
        assert_eq!(
            choose_backend(BackendChoice::Auto, layout, Ok(())).expect("bloom"),
            Backend::RedisBloom
        );
        assert_eq!(
            choose_backend(BackendChoice::Auto, layout, unknown()).expect("fallback"),
            Backend::Bitmap(layout)
        );
        let forced = choose_backend(BackendChoice::RedisBloom, layout, unknown())
            .expect_err("module required");
        assert_eq!(forced.class(), ErrorClass::Internal);
        let other = choose_backend(
            BackendChoice::Auto,
            layout,
            Err(redis::make_extension_error("LOADING".to_owned(), None)),
        )
        .expect_err("not a missing module");
        assert!(other.class().is_retryable());
    }

    #[test]
    fn backoff_reconnects_once_at_once_then_waits_doubling() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(300));
        assert_eq!(backoff.wait(now), None);
        backoff.failed(now);
        assert_eq!(backoff.wait(now), None, "first failure: reconnect at once");
        backoff.failed(now);
        let first = backoff.wait(now).expect("a wait");
        assert!(first >= ms(100) && first < ms(200), "{first:?}");
        for _ in 0..10 {
            backoff.failed(now);
            let wait = backoff.wait(now).expect("a wait");
            assert!(wait >= ms(150) && wait < ms(300), "capped: {wait:?}");
        }
        assert_eq!(backoff.wait(now + ms(300)), None);
        backoff.succeeded();
        assert_eq!(backoff.wait(now), None);
    }
}
