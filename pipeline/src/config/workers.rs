//! The worker pool: how many pipeline workers run, and how deep their queue is.

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const WORKER_POOL_OPTIMIZATION_ENABLED: &str = "WORKER_POOL_OPTIMIZATION_ENABLED";
const MIN_WORKERS_PER_CORE: &str = "MIN_WORKERS_PER_CORE";
const MAX_WORKERS_PER_CORE: &str = "MAX_WORKERS_PER_CORE";
const ASYNC_MAX_WORKERS: &str = "ASYNC_MAX_WORKERS";
const ASYNC_QUEUE_MAXSIZE: &str = "ASYNC_QUEUE_MAXSIZE";

/// Workers per core unless configured: one worker per two cores (see
/// [`WorkersConfig`]).
const DEFAULT_WORKERS_PER_CORE: f64 = 0.5;

/// The worker pool settings.
///
/// Defaults: one worker per two cores, each running its model on both
/// (ONNX Runtime intra-op threads), at most 32 workers, 1000 queued jobs. A
/// decoder call reads all of the decoder's weights (113 MB for tiny.en fp32)
/// to produce one token per row, so it is bound by memory, not arithmetic: one
/// worker that puts every row into one call on two threads reads the weights
/// once where two one-thread workers read them twice, and holds one set of
/// sessions and batches instead of two (ADR 13).
#[derive(Debug, Clone, Serialize)]
pub struct WorkersConfig {
    /// `WORKER_POOL_OPTIMIZATION_ENABLED`: size the pool from the machine's cores
    /// (see [`WorkerPlan`]); when false the pool is exactly `ASYNC_MAX_WORKERS`.
    /// Default `true`.
    pub optimization_enabled: bool,
    /// `MIN_WORKERS_PER_CORE`: the fewest workers per core an optimized pool should
    /// have; a plan below it is flagged. Fractions allowed. Default 0.5.
    pub min_workers_per_core: f64,
    /// `MAX_WORKERS_PER_CORE`: the most workers per core an optimized pool uses;
    /// fractions allowed (0.5: a worker per two cores). 1 gives every core a
    /// worker of its own; above 1 only pays when workers wait on I/O more than
    /// they compute. Default 0.5.
    pub max_workers_per_core: f64,
    /// `ASYNC_MAX_WORKERS`: a hard cap on the number of workers. Default 32.
    pub async_max_workers: u32,
    /// `ASYNC_QUEUE_MAXSIZE`: the most jobs queued in front of the workers before
    /// sources are slowed down (back-pressure). Default 1000.
    pub async_queue_maxsize: u32,
}

impl WorkersConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            optimization_enabled: vars.bool(WORKER_POOL_OPTIMIZATION_ENABLED, true),
            min_workers_per_core: vars.number(MIN_WORKERS_PER_CORE, DEFAULT_WORKERS_PER_CORE),
            max_workers_per_core: vars.number(MAX_WORKERS_PER_CORE, DEFAULT_WORKERS_PER_CORE),
            async_max_workers: vars.u32(ASYNC_MAX_WORKERS, 32),
            async_queue_maxsize: vars.u32(ASYNC_QUEUE_MAXSIZE, 1000),
        }
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        if self.min_workers_per_core > self.max_workers_per_core {
            out.push(Problem::fatal(
                MIN_WORKERS_PER_CORE,
                format!(
                    "is {} but MAX_WORKERS_PER_CORE is {}: the minimum cannot exceed the maximum",
                    self.min_workers_per_core, self.max_workers_per_core
                ),
            ));
        }
        if self.max_workers_per_core <= 0.0 {
            out.push(Problem::fatal(
                MAX_WORKERS_PER_CORE,
                "must be above 0 (0 would leave no workers)",
            ));
        }
        let at_least_one = [
            (ASYNC_MAX_WORKERS, self.async_max_workers),
            (ASYNC_QUEUE_MAXSIZE, self.async_queue_maxsize),
        ];
        for (variable, value) in at_least_one {
            if value == 0 {
                out.push(Problem::fatal(
                    variable,
                    "must be at least 1 (0 would leave no workers or an unbounded queue)",
                ));
            }
        }
        if self.async_queue_maxsize > 0 && self.async_queue_maxsize < self.async_max_workers {
            out.push(Problem::warning(
                ASYNC_QUEUE_MAXSIZE,
                format!(
                    "is smaller than ASYNC_MAX_WORKERS ({}): the pool is cut to the queue size",
                    self.async_max_workers
                ),
            ));
        }
    }

    /// The pool for a machine with `cores` cores; see [`WorkerPlan`] for the formula.
    /// `intra_op_threads` is `MMT_INTRA_OP_THREADS` when set.
    pub fn plan(&self, cores: usize, intra_op_threads: Option<u32>) -> WorkerPlan {
        let cores = cores.max(1);
        // At least one worker however few cores: a fraction of one core
        // still runs a worker (on that core).
        let per_core = |n: f64| ((cores as f64 * n).floor() as usize).max(1);
        let (mut workers, mut limited_by) = if self.optimization_enabled {
            (per_core(self.max_workers_per_core), WorkerLimit::PerCoreMax)
        } else {
            (to_usize(self.async_max_workers), WorkerLimit::Fixed)
        };
        let caps = [
            (
                to_usize(self.async_max_workers),
                WorkerLimit::AsyncMaxWorkers,
            ),
            (to_usize(self.async_queue_maxsize), WorkerLimit::QueueSize),
        ];
        for (cap, limit) in caps {
            if cap < workers {
                (workers, limited_by) = (cap, limit);
            }
        }
        let workers = workers.max(1);
        let intra_op_threads = intra_op_threads
            .map(to_usize)
            .unwrap_or_else(|| (cores / workers).max(1));
        WorkerPlan {
            cores,
            workers,
            intra_op_threads,
            queue_capacity: to_usize(self.async_queue_maxsize).max(1),
            limited_by,
            below_min_per_core: self.optimization_enabled
                && workers < per_core(self.min_workers_per_core),
        }
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// What decided the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLimit {
    /// Optimization on: ⌊cores × `MAX_WORKERS_PER_CORE`⌋, at least 1.
    PerCoreMax,
    /// Optimization off: exactly `ASYNC_MAX_WORKERS`.
    Fixed,
    /// Capped by `ASYNC_MAX_WORKERS`.
    AsyncMaxWorkers,
    /// Capped by `ASYNC_QUEUE_MAXSIZE` (more workers than queue slots would idle).
    QueueSize,
}

/// The worker pool for one machine.
///
/// With `c` = max(cores, 1):
///
/// ```text
/// wanted           = max(1, ⌊c × MAX_WORKERS_PER_CORE⌋)  if WORKER_POOL_OPTIMIZATION_ENABLED
///                  = ASYNC_MAX_WORKERS           otherwise
/// workers          = max(1, min(wanted, ASYNC_MAX_WORKERS, ASYNC_QUEUE_MAXSIZE))
/// intra_op_threads = MMT_INTRA_OP_THREADS if set, else max(1, c / workers)
/// queue_capacity   = ASYNC_QUEUE_MAXSIZE
/// below_min_per_core = optimization on and workers < max(1, ⌊c × MIN_WORKERS_PER_CORE⌋)
/// ```
///
/// so that workers × intra-op threads roughly fills the cores without
/// oversubscribing them, and no worker waits on a queue that cannot feed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerPlan {
    /// The cores planned for (at least 1).
    pub cores: usize,
    /// The number of pipeline workers.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_op_threads: usize,
    /// Jobs that may wait in front of the workers before sources slow down.
    pub queue_capacity: usize,
    /// What decided `workers`.
    pub limited_by: WorkerLimit,
    /// Whether a cap held the pool below ⌊cores × `MIN_WORKERS_PER_CORE`⌋.
    pub below_min_per_core: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkersConfig {
        WorkersConfig::from_vars(&mut Vars::default())
    }

    #[test]
    fn defaults_give_one_worker_per_two_cores_with_two_threads_each() {
        let plan = config().plan(8, None);
        assert_eq!(plan.workers, 4);
        assert_eq!(plan.intra_op_threads, 2);
        assert_eq!(plan.queue_capacity, 1000);
        assert_eq!(plan.limited_by, WorkerLimit::PerCoreMax);
        assert!(!plan.below_min_per_core);
    }

    #[test]
    fn an_odd_core_count_gives_the_spare_core_to_the_threads() {
        let plans = [1, 2, 3, 5].map(|cores| {
            let plan = config().plan(cores, None);
            (plan.workers, plan.intra_op_threads, plan.below_min_per_core)
        });
        assert_eq!(
            plans,
            [(1, 1, false), (1, 2, false), (1, 3, false), (2, 2, false)]
        );
    }

    #[test]
    fn one_worker_per_core_is_a_setting_away() {
        let mut c = config();
        c.max_workers_per_core = 1.0;
        let plan = c.plan(2, None);
        assert_eq!((plan.workers, plan.intra_op_threads), (2, 1));
    }

    #[test]
    fn async_max_workers_caps_a_big_machine_and_threads_fill_the_rest() {
        let plan = config().plan(128, None);
        assert_eq!(plan.workers, 32);
        assert_eq!(plan.intra_op_threads, 4);
        assert_eq!(plan.limited_by, WorkerLimit::AsyncMaxWorkers);
    }

    #[test]
    fn per_core_max_multiplies_cores() {
        let mut c = config();
        c.max_workers_per_core = 3.0;
        let plan = c.plan(4, None);
        assert_eq!((plan.workers, plan.intra_op_threads), (12, 1));
    }

    #[test]
    fn queue_size_caps_workers() {
        let mut c = config();
        c.async_queue_maxsize = 2;
        let plan = c.plan(8, None);
        assert_eq!(plan.workers, 2);
        assert_eq!(plan.intra_op_threads, 4);
        assert_eq!(plan.limited_by, WorkerLimit::QueueSize);
        assert!(plan.below_min_per_core);
    }

    #[test]
    fn disabled_optimization_uses_the_fixed_pool() {
        let mut c = config();
        c.optimization_enabled = false;
        c.async_max_workers = 6;
        let plan = c.plan(2, None);
        assert_eq!(plan.workers, 6);
        assert_eq!(plan.intra_op_threads, 1);
        assert_eq!(plan.limited_by, WorkerLimit::Fixed);
        assert!(!plan.below_min_per_core);
    }

    #[test]
    fn below_min_per_core_is_flagged() {
        let mut c = config();
        c.min_workers_per_core = 2.0;
        c.max_workers_per_core = 2.0;
        c.async_max_workers = 10;
        let plan = c.plan(8, None);
        assert_eq!(plan.workers, 10);
        assert!(plan.below_min_per_core);
    }

    #[test]
    fn zero_cores_and_zero_caps_still_give_one_worker() {
        let mut c = config();
        c.async_max_workers = 0;
        let plan = c.plan(0, None);
        assert_eq!(plan.cores, 1);
        assert_eq!(plan.workers, 1);
        assert_eq!(plan.intra_op_threads, 1);
    }

    #[test]
    fn explicit_intra_op_threads_win() {
        assert_eq!(config().plan(4, Some(3)).intra_op_threads, 3);
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut c = config();
        c.max_workers_per_core = f64::from(u32::MAX);
        c.async_max_workers = u32::MAX;
        c.async_queue_maxsize = u32::MAX;
        let plan = c.plan(usize::MAX, None);
        assert_eq!(plan.workers, to_usize(u32::MAX));
    }
}
