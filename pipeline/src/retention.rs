//! Retention: removes jobs, transcripts and documents older than RETENTION_DAYS.
//!
//! `mmt run` enforces it inside the dataflow (the commit stage purges on
//! frontier progress, see `mmt_operators::commit`); `mmt retention purge` runs
//! the same purge once, for a CronJob. Every purged job is audited and counted.

use crate::config::Config;
use crate::run::plan::open_sinks;
use crate::run::OutputPaths;
use mmt_core::telemetry::Metrics;
use mmt_operators::commit::{purge, Purged};

/// Purges everything received more than `retention_days` before `now` (unix seconds).
pub fn purge_once(
    config: &Config,
    paths: &OutputPaths,
    retention_days: u32,
    now: i64,
    dry_run: bool,
    metrics: &Metrics,
) -> Result<(i64, Purged), String> {
    let cutoff = now - i64::from(retention_days) * 86_400;
    let mut sinks = open_sinks(config, paths).map_err(|e| e.to_string())?;
    let purged = purge(&mut sinks, cutoff, dry_run, metrics).map_err(|e| e.to_string())?;
    Ok((cutoff, purged))
}
