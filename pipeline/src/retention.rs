//! Retention: removes jobs, transcripts and documents older than RETENTION_DAYS.
//!
//! `mmt retention purge` runs it once (for a CronJob); `mmt run --follow` runs
//! it on a timer between epochs. Every purged job is audited and counted.

use crate::run::OutputPaths;
use mmt_connectors::sql::SqlJobStoreConfig;
use mmt_core::job::{AuditAction, AuditEvent, AuditSink, DocumentSink, JobId, JobStore};
use mmt_core::telemetry::Metrics;
use std::collections::BTreeMap;

/// What one purge removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub dry_run: bool,
    /// Unix seconds: jobs received before this were purged.
    pub cutoff: i64,
    pub jobs: u64,
    pub documents: u64,
}

/// Purges everything received more than `retention_days` before `now`.
pub fn purge_once(
    paths: &OutputPaths,
    retention_days: u32,
    now: i64,
    dry_run: bool,
    metrics: &Metrics,
) -> Result<PurgeReport, String> {
    let cutoff = now - i64::from(retention_days) * 86_400;
    let mut store = SqlJobStoreConfig::new(&paths.database_url)
        .build(false)
        .map_err(|e| format!("job store: {e}"))?;
    let ids = store
        .purge_before(cutoff, dry_run)
        .map_err(|e| format!("job store: {e}"))?;
    let mut report = PurgeReport {
        dry_run,
        cutoff,
        jobs: ids.len() as u64,
        documents: 0,
    };
    if dry_run || ids.is_empty() {
        return Ok(report);
    }
    let mut documents = paths
        .documents()
        .build()
        .map_err(|e| format!("FHIR documents: {e}"))?;
    report.documents = documents
        .purge(&ids)
        .map_err(|e| format!("FHIR documents: {e}"))?;
    let mut audit = paths
        .audit()
        .build()
        .map_err(|e| format!("audit log: {e}"))?;
    for id in &ids {
        audit
            .record(&purge_event(id, now, cutoff))
            .map_err(|e| format!("audit log: {e}"))?;
    }
    metrics
        .retention_purged_total
        .with_label_values(&["job"])
        .inc_by(report.jobs);
    metrics
        .retention_purged_total
        .with_label_values(&["document"])
        .inc_by(report.documents);
    tracing::info!(
        jobs = report.jobs,
        documents = report.documents,
        cutoff,
        "retention purge"
    );
    Ok(report)
}

fn purge_event(id: &JobId, now: i64, cutoff: i64) -> AuditEvent {
    let mut detail = BTreeMap::new();
    detail.insert("cutoff".into(), cutoff.to_string());
    AuditEvent {
        at: now,
        action: AuditAction::JobPurged,
        job_id: id.clone(),
        tenant: String::new(),
        correlation_id: String::new(),
        actor: "retention".into(),
        detail,
    }
}
