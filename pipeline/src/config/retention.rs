//! How long jobs, audio, transcripts and task records are kept.

use std::time::Duration;

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const RETENTION_DAYS: &str = "RETENTION_DAYS";
const ASYNC_TASK_RETENTION_DAYS: &str = "ASYNC_TASK_RETENTION_DAYS";
const SECONDS_PER_DAY: u64 = 86_400;

/// How long data is kept before the retention purge deletes it.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionConfig {
    /// `RETENTION_DAYS`: days jobs, audio and transcripts are kept. Default 30;
    /// at least 1.
    pub retention_days: u32,
    /// `ASYNC_TASK_RETENTION_DAYS`: days finished task records (the status clients
    /// poll) are kept. Default 7; at least 1.
    pub async_task_retention_days: u32,
}

impl RetentionConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            retention_days: vars.u32(RETENTION_DAYS, 30),
            async_task_retention_days: vars.u32(ASYNC_TASK_RETENTION_DAYS, 7),
        }
    }

    /// `RETENTION_DAYS` as a duration.
    pub fn retention(&self) -> Duration {
        days(self.retention_days)
    }

    /// `ASYNC_TASK_RETENTION_DAYS` as a duration.
    pub fn async_task_retention(&self) -> Duration {
        days(self.async_task_retention_days)
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        for (variable, value) in [
            (RETENTION_DAYS, self.retention_days),
            (ASYNC_TASK_RETENTION_DAYS, self.async_task_retention_days),
        ] {
            if value == 0 {
                out.push(Problem::fatal(
                    variable,
                    "must be at least 1 (0 would purge records as soon as they are written)",
                ));
            }
        }
        if self.async_task_retention_days > self.retention_days && self.retention_days > 0 {
            out.push(Problem::warning(
                ASYNC_TASK_RETENTION_DAYS,
                format!(
                    "is longer than RETENTION_DAYS ({}): task records would outlive the \
                     transcripts they point to",
                    self.retention_days
                ),
            ));
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * SECONDS_PER_DAY)
}
