//! Decode and validate: source bytes → 16 kHz samples, or a dead letter.

use crate::identity::{content_hash, correlation_id, job_id};
use crate::records::{DecodedJob, Outcome, SourceRecord};
use mmt_core::job::{DeadLetter, JobMeta, Stage};
use mmt_core::ErrorClass;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::Stream;

/// Decodes each record's audio; bad input leaves on the second stream as a dead letter.
pub trait DecodeAudio<'scope> {
    fn decode_audio(
        self,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> DecodeAudio<'scope> for Stream<'scope, u64, Vec<SourceRecord>> {
    fn decode_audio(
        self,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        self.ok_err(decode_record)
    }
}

/// The job a record becomes: identity from tenant and content, nothing decoded yet.
pub fn job_meta(record: &SourceRecord) -> JobMeta {
    // Unreadable input has no content: its identity comes from its name instead.
    let hash = if record.read_error.is_some() {
        content_hash(format!("unreadable:{}", record.source).as_bytes())
    } else {
        content_hash(&record.bytes)
    };
    let id = job_id(&record.tenant, &hash);
    let correlation_id = correlation_id(&id, record.received_at as u64);
    JobMeta {
        id,
        tenant: record.tenant.clone(),
        content_hash: hash,
        source: record.source.clone(),
        patient_reference: record.patient_reference.clone(),
        encounter_reference: record.encounter_reference.clone(),
        correlation_id,
        received_at: record.received_at,
        trace_parent: record.trace_parent.clone(),
    }
}

fn decode_record(mut record: SourceRecord) -> Result<DecodedJob, Outcome> {
    let meta = job_meta(&record);
    let _span =
        tracing::info_span!("decode", job = %meta.id, correlation_id = %meta.correlation_id)
            .entered();
    if let Some(reason) = &record.read_error {
        let reason = format!("cannot read the input: {reason}");
        return Err(rejected(
            meta,
            ErrorClass::External { retryable: true },
            reason,
        ));
    }
    let extension = record.extension.clone();
    match mmt_whisper::audio::decode_bytes(std::mem::take(&mut record.bytes), extension.as_deref())
    {
        Ok(samples) => Ok(DecodedJob {
            meta,
            samples,
            redelivered: record.redelivered,
        }),
        Err(err) => Err(rejected(meta, err.class(), err.to_string())),
    }
}

fn rejected(meta: JobMeta, class: ErrorClass, reason: String) -> Outcome {
    tracing::warn!(%reason, "audio rejected");
    Outcome::DeadLettered(DeadLetter {
        job_id: meta.id,
        tenant: meta.tenant,
        correlation_id: meta.correlation_id,
        stage: Stage::Decode,
        class,
        reason,
        attempts: 1,
        at: meta.received_at,
    })
}
