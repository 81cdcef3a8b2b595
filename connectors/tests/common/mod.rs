//! Test data shared by the integration tests, and the check that a service they
//! need is up ([`require_service`], in `service.rs`).
#![allow(dead_code)]

#[path = "../../../tests/common/service.rs"]
mod service;
pub mod sql;

// Not every test binary checks a service.
#[allow(unused_imports)]
pub use service::require_service;

use mmt_core::error::ErrorClass;
use mmt_core::job::{AuditAction, AuditEvent, CompletedJob, DeadLetter, JobId, JobMeta, Stage};
use mmt_core::{Segment, Transcript};

pub const TRANSCRIPT_TEXT: &str = "Patient John Smith reports chest pain since Tuesday.";

pub fn meta(id: &str, received_at: i64) -> JobMeta {
    JobMeta {
        id: JobId(id.to_owned()),
        tenant: "clinic-a".into(),
        content_hash: "ab".repeat(32),
        source: "smith_john.wav".into(),
        patient_reference: Some("Patient/123".into()),
        encounter_reference: Some("Encounter/456".into()),
        correlation_id: format!("corr-{id}"),
        received_at,
        trace_parent: None,
    }
}

pub fn completed(id: &str, received_at: i64) -> CompletedJob {
    let segment = Segment {
        id: 0,
        start: 0.0,
        end: 4.0,
        text: TRANSCRIPT_TEXT.into(),
        avg_logprob: -0.2,
        no_speech_prob: 0.01,
        temperature: 0.0,
        confidence: 0.8,
    };
    CompletedJob {
        meta: meta(id, received_at),
        transcript: Transcript::from_segments(vec![segment], 4.5, "en"),
        completed_at: received_at + 10,
    }
}

pub fn letter(id: &str, stage: Stage, attempts: u32) -> DeadLetter {
    DeadLetter {
        job_id: JobId(id.to_owned()),
        tenant: "clinic-a".into(),
        correlation_id: format!("corr-{id}"),
        stage,
        class: ErrorClass::UserInput,
        reason: "not decodable audio: unsupported format".into(),
        attempts,
        at: 1_700_000_100,
    }
}

pub fn event(id: &str, action: AuditAction) -> AuditEvent {
    AuditEvent {
        at: 1_700_000_000,
        action,
        job_id: JobId(id.to_owned()),
        tenant: "clinic-a".into(),
        correlation_id: format!("corr-{id}"),
        actor: "pipeline".into(),
        detail: [("patient".to_owned(), "Patient/123".to_owned())].into(),
    }
}
