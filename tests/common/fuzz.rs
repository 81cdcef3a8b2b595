//! A random-mutation fuzzing loop that runs on the stable toolchain, for
//! `tests/fuzz.rs`.
//!
//! Each target gets seed inputs (valid and nearly valid documents, audio
//! files, requests) and a dictionary of tokens its format is made of; every
//! execution takes one seed and applies a stack of havoc mutations in the
//! manner of AFL (bit flips, interesting integers, arithmetic, deletions,
//! insertions, duplicated blocks, dictionary tokens, splices with another
//! seed, truncation). There is no coverage feedback: cargo-fuzz and afl.rs
//! need a nightly compiler or an instrumented build of the whole dependency
//! tree, which this repository's pinned stable toolchain and its CI budget
//! do not allow (see `docs/adr/` and the corpus README).
//!
//! A finding is any of: a panic (even one the product catches and turns into
//! an error: the panic hook counts it), an execution that takes longer than
//! [`HANG_SECONDS`] (the watchdog saves the input and aborts the process), or
//! an invariant the target checks (an `Err` it returns). Each finding's input
//! is written to `target/fuzz-findings/<target>-<n>.bin` with the seed that
//! reproduces it, so it can be added to `tests/corpus/`.
//!
//! Settings (environment):
//! - `MMT_FUZZ_SECONDS`: time per target (default 3, half with a fixed seed,
//!   half with a random one, printed);
//! - `MMT_FUZZ_EXECS`: a number of executions per target instead of a time;
//! - `MMT_FUZZ_SEED`: one seed for the whole run (reproduces a finding);
//! - `MMT_FUZZ_REPORT`: a file the figures of each target are appended to
//!   (one JSON line per target).

#![allow(dead_code)]

use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// An execution running longer than this is a hang.
pub const HANG_SECONDS: u64 = 20;

/// The seed of the deterministic half of every run.
pub const FIXED_SEED: u64 = 0x6d6d_745f_6675_7a7a;

thread_local! {
    /// Panics on this thread seen by the hook, caught or not. Per thread, so
    /// that tests running beside each other in one process (`cargo test`)
    /// do not count each other's; a panic on another thread the target
    /// uses shows as the target's failure (a 500, an error).
    static PANICS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
static HOOK: Once = Once::new();

fn count_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|n| n.set(n.get() + 1));
            previous(info);
        }));
    });
}

/// Integers that break length and rate arithmetic.
const INTERESTING_32: [u32; 14] = [
    0,
    1,
    2,
    7,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// Havoc mutations over a set of seeds.
pub struct Mutator {
    rng: fastrand::Rng,
    seeds: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, seeds: Vec<Vec<u8>>, tokens: &[&[u8]], max_len: usize) -> Self {
        assert!(!seeds.is_empty(), "a fuzz target needs seeds");
        Self {
            rng: fastrand::Rng::with_seed(seed),
            seeds,
            tokens: tokens.iter().map(|t| t.to_vec()).collect(),
            max_len,
        }
    }

    /// A random number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.usize(..n.max(1))
    }

    /// One seed with 1 to 16 stacked mutations (one seed in 16 is left as it is).
    pub fn next_input(&mut self, out: &mut Vec<u8>) {
        out.clear();
        let seed = self.below(self.seeds.len());
        out.extend_from_slice(&self.seeds[seed]);
        if self.below(16) == 0 {
            return;
        }
        let rounds = 1 << self.below(5);
        for _ in 0..rounds.min(16) {
            self.mutate(out);
        }
        out.truncate(self.max_len);
    }

    fn mutate(&mut self, data: &mut Vec<u8>) {
        let len = data.len();
        match self.below(14) {
            // Flip a bit.
            0 if len > 0 => {
                let at = self.below(len);
                data[at] ^= 1 << self.below(8);
            }
            // A random byte.
            1 if len > 0 => {
                let at = self.below(len);
                data[at] = self.rng.u8(..);
            }
            // An interesting 8/16/32-bit value, little or big endian.
            2 if len > 0 => {
                let value = INTERESTING_32[self.below(INTERESTING_32.len())];
                let width = [1, 2, 4][self.below(3)];
                let bytes = if self.rng.bool() {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                let at = self.below(len);
                let end = (at + width).min(len);
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
            // Add or subtract a little from a 32-bit little-endian field.
            3 if len >= 4 => {
                let at = self.below(len - 3);
                let field =
                    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                let delta = self.rng.u32(1..=35);
                let field = if self.rng.bool() {
                    field.wrapping_add(delta)
                } else {
                    field.wrapping_sub(delta)
                };
                data[at..at + 4].copy_from_slice(&field.to_le_bytes());
            }
            // Add or subtract a little from a byte.
            4 if len > 0 => {
                let at = self.below(len);
                let delta = self.rng.u8(1..=35);
                data[at] = if self.rng.bool() {
                    data[at].wrapping_add(delta)
                } else {
                    data[at].wrapping_sub(delta)
                };
            }
            // Delete a block.
            5 if len > 1 => {
                let at = self.below(len);
                let n = self.block_len(len - at);
                data.drain(at..at + n);
            }
            // Insert random bytes, or one byte repeated.
            6 => {
                let at = self.below(len + 1);
                let n = self.block_len(64);
                let block: Vec<u8> = if self.rng.bool() {
                    std::iter::repeat_with(|| self.rng.u8(..)).take(n).collect()
                } else {
                    vec![self.rng.u8(..); n]
                };
                data.splice(at..at, block);
            }
            // Duplicate a block of the input elsewhere in it.
            7 if len > 0 => {
                let from = self.below(len);
                let n = self.block_len(len - from);
                let block = data[from..from + n].to_vec();
                let at = self.below(len + 1);
                data.splice(at..at, block);
            }
            // Overwrite with a block of the input.
            8 if len > 1 => {
                let from = self.below(len);
                let n = self.block_len(len - from);
                let block = data[from..from + n].to_vec();
                let at = self.below(len);
                let end = (at + n).min(len);
                data[at..end].copy_from_slice(&block[..end - at]);
            }
            // Insert or overwrite with a dictionary token.
            9 | 10 if !self.tokens.is_empty() => {
                let k = self.below(self.tokens.len());
                let token = self.tokens[k].clone();
                let at = self.below(len + 1);
                if self.rng.bool() || at + token.len() > len {
                    data.splice(at..at, token);
                } else {
                    data[at..at + token.len()].copy_from_slice(&token);
                }
            }
            // Splice: the head of this input, the tail of another seed.
            11 if len > 0 => {
                let k = self.below(self.seeds.len());
                let other = self.seeds[k].clone();
                if !other.is_empty() {
                    let keep = self.below(len);
                    let from = self.below(other.len());
                    data.truncate(keep);
                    data.extend_from_slice(&other[from..]);
                }
            }
            // Truncate.
            12 if len > 0 => {
                let keep = self.below(len);
                data.truncate(keep);
            }
            // Repeat the whole input (lengths far from the declared ones).
            13 if len > 0 && len < self.max_len / 2 => {
                let copy = data.clone();
                data.extend_from_slice(&copy);
            }
            _ => {
                let at = self.below(len + 1);
                data.insert(at, self.rng.u8(..));
            }
        }
    }

    /// A block length up to `room`, short blocks more likely.
    fn block_len(&mut self, room: usize) -> usize {
        let room = room.max(1);
        let cap = [4, 16, 64, 1024][self.below(4)].min(room);
        1 + self.below(cap)
    }
}

/// How long (or how many executions) each target runs.
#[derive(Debug, Clone)]
pub struct Budget {
    pub seconds: f64,
    pub execs: Option<u64>,
    pub seed: Option<u64>,
}

impl Budget {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            seconds: var("MMT_FUZZ_SECONDS")
                .map(|v| v.parse().expect("MMT_FUZZ_SECONDS is a number"))
                .unwrap_or(3.0),
            execs: var("MMT_FUZZ_EXECS").map(|v| v.parse().expect("MMT_FUZZ_EXECS is a number")),
            seed: var("MMT_FUZZ_SEED").map(|v| {
                let v = v.trim_start_matches("0x");
                u64::from_str_radix(v, 16).expect("MMT_FUZZ_SEED is hexadecimal")
            }),
        }
    }
}

/// What one target's run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub seconds: f64,
    pub seeds: Vec<u64>,
    pub findings: Vec<String>,
}

/// Runs `target` on mutated `seeds` for the budget of the environment;
/// fails the test, naming each saved input, when anything was found.
pub fn fuzz(
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    tokens: &[&[u8]],
    max_len: usize,
    target: impl FnMut(&[u8]) -> Result<(), String>,
) -> Report {
    let report = run(name, &Budget::from_env(), seeds, tokens, max_len, target);
    let line = format!(
        "{{\"target\":\"{}\",\"executions\":{},\"seconds\":{:.1},\"per_second\":{:.0},\"seeds\":[{}],\"findings\":{}}}",
        report.target,
        report.execs,
        report.seconds,
        report.execs as f64 / report.seconds.max(1e-9),
        report
            .seeds
            .iter()
            .map(|s| format!("\"{s:016x}\""))
            .collect::<Vec<_>>()
            .join(","),
        report.findings.len()
    );
    eprintln!("fuzz {line}");
    if let Ok(path) = std::env::var("MMT_FUZZ_REPORT") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
    assert!(
        report.findings.is_empty(),
        "{name}: {} finding(s):\n{}",
        report.findings.len(),
        report.findings.join("\n")
    );
    report
}

/// Where findings are saved.
fn findings_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("fuzz-findings")
}

fn save(name: &str, n: usize, seed: u64, input: &[u8], what: &str) -> String {
    let dir = findings_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{seed:016x}-{n}.bin"));
    let _ = std::fs::write(&path, input);
    format!(
        "{what}: input saved to {} (MMT_FUZZ_SEED={seed:016x})",
        path.display()
    )
}

/// The loop: the first half of the budget with [`FIXED_SEED`], the second
/// with a random seed (or the whole of it with the environment's seed).
pub fn run(
    name: &'static str,
    budget: &Budget,
    seeds: Vec<Vec<u8>>,
    tokens: &[&[u8]],
    max_len: usize,
    mut target: impl FnMut(&[u8]) -> Result<(), String>,
) -> Report {
    count_panics();
    let phases: Vec<u64> = match budget.seed {
        Some(seed) => vec![seed],
        None => vec![FIXED_SEED, fastrand::u64(..)],
    };
    let share = 1.0 / phases.len() as f64;
    let current = Arc::new(Mutex::new((0u64, Vec::<u8>::new())));
    let executions = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, executions, done) = (
            Arc::clone(&current),
            Arc::clone(&executions),
            Arc::clone(&done),
        );
        std::thread::spawn(move || {
            let mut last = (u64::MAX, Instant::now());
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(250));
                let now = executions.load(Ordering::SeqCst);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(HANG_SECONDS) {
                    let (seed, input) = current.lock().map(|c| c.clone()).unwrap_or_default();
                    eprintln!(
                        "fuzz {name}: HANG (> {HANG_SECONDS} s) at execution {now}: {}",
                        save(name, now as usize, seed, &input, "hang")
                    );
                    std::process::abort();
                }
            }
        })
    };

    let started = Instant::now();
    let mut findings = Vec::new();
    let mut input = Vec::new();
    for &seed in &phases {
        eprintln!("fuzz {name}: seed {seed:016x}");
        let mut mutator = Mutator::new(seed, seeds.clone(), tokens, max_len);
        let phase_started = Instant::now();
        let mut phase_execs = 0u64;
        loop {
            match budget.execs {
                Some(total) => {
                    if phase_execs >= (total as f64 * share).ceil() as u64 {
                        break;
                    }
                }
                None => {
                    if phase_started.elapsed().as_secs_f64() >= budget.seconds * share {
                        break;
                    }
                }
            }
            mutator.next_input(&mut input);
            if let Ok(mut slot) = current.lock() {
                slot.0 = seed;
                slot.1.clone_from(&input);
            }
            let panics_before = PANICS.with(std::cell::Cell::get);
            let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
            let panicked = PANICS.with(std::cell::Cell::get) != panics_before;
            let n = executions.fetch_add(1, Ordering::SeqCst);
            phase_execs += 1;
            let problem = match outcome {
                Err(_) => Some("panic".to_owned()),
                Ok(_) if panicked => Some("panic (caught inside the product)".to_owned()),
                Ok(Err(broken)) => Some(format!("invariant broken: {broken}")),
                Ok(Ok(())) => None,
            };
            if let Some(problem) = problem {
                findings.push(save(name, n as usize, seed, &input, &problem));
                if findings.len() >= 20 {
                    break;
                }
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    Report {
        target: name,
        execs: executions.load(Ordering::SeqCst),
        seconds: started.elapsed().as_secs_f64(),
        seeds: phases,
        findings,
    }
}
