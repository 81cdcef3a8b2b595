//! The job message both brokers carry: a JSON envelope around the audio.
//!
//! The schema is `schemas/job-envelope.schema.json`; this module is its reader.
//! A message that cannot be read still becomes a [`SourceRecord`], with
//! `read_error` set, so that decode dead-letters it with a reason and the
//! broker's message is settled: bad input is never silently dropped, and a
//! poison message never blocks the queue.
//!
//! Audio travels inline (base64) or by reference to a file in the tenant's
//! folder under a root the operator configured (a shared volume), read by
//! [`crate::reference`]. Any reference when no root is configured is refused:
//! a message must not be able to make the worker read arbitrary files.

use base64::Engine as _;
pub use mmt_core::input::is_trace_parent;
use mmt_core::input::{
    is_tenant, join, read_json, reference_problem, FieldProblem, JsonShape, TENANT_RULE,
};
use mmt_core::source::SourceRecord;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::reference::{ReferenceConfig, ReferenceResolver};

/// Largest audio a message may carry or reference (decoded bytes).
pub const MAX_AUDIO_BYTES: usize = 256 << 20;

/// Container hints an envelope may give.
pub const AUDIO_FORMATS: &[&str] = &["wav", "flac", "mp3", "ogg", "oga", "opus"];

/// The envelope's version this reader understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// A transcription job as published to RabbitMQ or Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEnvelope {
    /// Envelope version; 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Tenant owning the recording: 1–64 of `A-Z a-z 0-9 . _ -`.
    pub tenant: String,
    /// The submitter's own id for the job (not PHI); echoed in events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_reference: Option<String>,
    /// The recording.
    pub audio: AudioPayload,
    /// FHIR reference of the patient, `Patient/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_reference: Option<String>,
    /// FHIR reference of the encounter, `Encounter/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter_reference: Option<String>,
    /// 0 (lowest, default) to 9; RabbitMQ delivers higher priorities first.
    #[serde(default)]
    pub priority: u8,
}

fn default_version() -> u32 {
    ENVELOPE_VERSION
}

/// Where the audio is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AudioPayload {
    /// The encoded audio, base64 (standard alphabet, padded).
    Inline {
        data: String,
        /// Container hint: `wav`, `flac`, `mp3`, `ogg`, `opus`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
    },
    /// A file on a volume the workers share: a path relative to the
    /// tenant's folder, `<MMT_AUDIO_REFERENCE_ROOT>/<tenant>/`.
    Reference {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
    },
}

impl JobEnvelope {
    /// An envelope carrying `audio` inline.
    pub fn inline(tenant: impl Into<String>, audio: &[u8], format: Option<&str>) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            tenant: tenant.into(),
            client_reference: None,
            audio: AudioPayload::Inline {
                data: base64::engine::general_purpose::STANDARD.encode(audio),
                format: format.map(str::to_owned),
            },
            patient_reference: None,
            encounter_reference: None,
            priority: 0,
        }
    }

    /// Every rule the JSON Schema states beyond types, each naming its field
    /// (never its value: any field may hold PHI).
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.version != ENVELOPE_VERSION {
            problems.push(FieldProblem::new(
                "version",
                format!("must be {ENVELOPE_VERSION}"),
            ));
        }
        if !is_tenant(&self.tenant) {
            problems.push(FieldProblem::new("tenant", TENANT_RULE));
        }
        if self.priority > 9 {
            problems.push(FieldProblem::new("priority", "must be 0-9"));
        }
        if let Some(reference) = &self.client_reference {
            if reference.is_empty() || reference.len() > 128 {
                problems.push(FieldProblem::new(
                    "client_reference",
                    "must be 1-128 characters",
                ));
            }
        }
        let (field, format) = match &self.audio {
            AudioPayload::Inline { format, .. } => ("audio.inline.format", format),
            AudioPayload::Reference { format, .. } => ("audio.reference.format", format),
        };
        if let Some(format) = format {
            if !AUDIO_FORMATS.contains(&format.to_ascii_lowercase().as_str()) {
                problems.push(FieldProblem::new(
                    field,
                    format!("must be one of {}", AUDIO_FORMATS.join(", ")),
                ));
            }
        }
        problems.extend(reference_problem(
            "patient_reference",
            "Patient",
            self.patient_reference.as_deref(),
        ));
        problems.extend(reference_problem(
            "encounter_reference",
            "Encounter",
            self.encounter_reference.as_deref(),
        ));
        problems
    }
}

/// What a refused envelope's reason says of each field (see
/// `schemas/job-envelope.schema.json`).
const ENVELOPE_SHAPE: JsonShape = JsonShape {
    name: "job envelope",
    summary: "an object with tenant and audio (required), and optionally version, \
              client_reference, patient_reference, encounter_reference, priority; audio \
              is {\"inline\": {\"data\", \"format\"}} or {\"reference\": {\"url\", \"format\"}}",
    fields: &[
        ("version", "must be the number 1"),
        ("tenant", "must be a string of 1-64 A-Z a-z 0-9 . _ -"),
        ("client_reference", "must be a string of 1-128 characters"),
        ("audio.inline.data", "must be a base64 string"),
        (
            "audio.inline.format",
            "must be a string naming the container",
        ),
        (
            "audio.reference.url",
            "must be a string (a file:// URL or an absolute path)",
        ),
        (
            "audio.reference.format",
            "must be a string naming the container",
        ),
        ("patient_reference", "must be a string Patient/<id>"),
        ("encounter_reference", "must be a string Encounter/<id>"),
        ("priority", "must be an integer 0-9"),
    ],
};

/// What the broker knows about a message, beside its body.
#[derive(Debug, Clone, Default)]
pub struct MessageContext {
    /// The broker's id of the message (AMQP message-id, Kafka topic/partition/offset).
    pub message_id: String,
    /// Unix seconds when it was received.
    pub received_at: i64,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// W3C `traceparent` from the message headers.
    pub trace_parent: Option<String>,
}

/// Reads message bodies into source records.
#[derive(Debug, Clone, Default)]
pub struct EnvelopeReader {
    /// Where `reference` audio is read; `None` refuses references.
    references: Option<ReferenceResolver>,
    /// Tenant recorded for a message whose envelope cannot be read at all.
    pub fallback_tenant: String,
}

impl EnvelopeReader {
    /// A reader resolving references under `reference_root` (one folder per
    /// tenant), or refusing them when it is `None`.
    pub fn new(reference_root: Option<PathBuf>, fallback_tenant: impl Into<String>) -> Self {
        Self {
            references: reference_root.map(|root| ReferenceConfig::new(root).build()),
            fallback_tenant: fallback_tenant.into(),
        }
    }

    /// The record of one message: the audio, or the reason it cannot be read.
    pub fn read(&self, body: &[u8], context: MessageContext) -> SourceRecord {
        let mut record = SourceRecord {
            tenant: self.fallback_tenant.clone(),
            source: context.message_id,
            received_at: context.received_at,
            redelivered: context.redelivered,
            trace_parent: context.trace_parent.filter(|t| is_trace_parent(t)),
            ..SourceRecord::default()
        };
        let envelope = match read_json::<JobEnvelope>(body, &ENVELOPE_SHAPE) {
            Ok(envelope) => envelope,
            Err(problem) => {
                record.read_error = Some(problem.to_string());
                return record;
            }
        };
        let problems = envelope.problems();
        if !problems.is_empty() {
            // Nothing of a refused envelope is kept, its tenant included: a
            // value in the wrong field may be a patient's (as with sidecars).
            record.read_error = Some(format!("invalid job envelope: {}", join(&problems)));
            return record;
        }
        record.tenant.clone_from(&envelope.tenant);
        record.patient_reference = envelope.patient_reference;
        record.encounter_reference = envelope.encounter_reference;
        match self.audio(&envelope.tenant, &envelope.audio) {
            Ok((bytes, extension)) => {
                record.bytes = bytes;
                record.extension = extension;
            }
            Err(reason) => record.read_error = Some(reason),
        }
        record
    }

    fn audio(
        &self,
        tenant: &str,
        payload: &AudioPayload,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        match payload {
            AudioPayload::Inline { data, format } => {
                if data.len() / 4 * 3 > MAX_AUDIO_BYTES {
                    return Err(format!(
                        "inline audio is larger than {MAX_AUDIO_BYTES} bytes"
                    ));
                }
                // The decoder's error names the offending byte: not repeated.
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| "audio.inline.data must be standard base64 (padded)".to_owned())?;
                Ok((bytes, normalized_format(format.as_deref())))
            }
            AudioPayload::Reference { url, format } => {
                let Some(references) = &self.references else {
                    return Err("audio references are not accepted by this worker (no reference root is configured)".into());
                };
                let audio = references
                    .open(tenant, url, MAX_AUDIO_BYTES as u64)
                    .map_err(|err| err.to_string())?;
                let extension = normalized_format(format.as_deref())
                    .or_else(|| audio.extension().map(str::to_owned));
                let bytes = audio.read_to_vec().map_err(|err| err.to_string())?;
                Ok((bytes, extension))
            }
        }
    }
}

fn normalized_format(format: Option<&str>) -> Option<String> {
    format.map(|f| f.trim().trim_start_matches('.').to_ascii_lowercase())
}

/// A message id for a submission of `audio`: unique per submission (a random
/// part), with a content prefix that helps operators spot resubmissions.
pub fn message_id_for(audio: &[u8]) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut content = std::collections::hash_map::DefaultHasher::new();
    content.write(audio);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{:016x}-{random:016x}", content.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> MessageContext {
        MessageContext {
            message_id: "msg-1".into(),
            received_at: 42,
            redelivered: true,
            trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }
    }

    #[test]
    fn an_inline_envelope_becomes_a_record() {
        let mut envelope = JobEnvelope::inline("clinic-a", b"RIFF....", Some("WAV"));
        envelope.patient_reference = Some("Patient/123".into());
        envelope.encounter_reference = Some("Encounter/9".into());
        let body = serde_json::to_vec(&envelope).unwrap();
        let record = EnvelopeReader::new(None, "default").read(&body, context());
        assert_eq!(record.read_error, None);
        assert_eq!(record.tenant, "clinic-a");
        assert_eq!(record.bytes, b"RIFF....");
        assert_eq!(record.extension.as_deref(), Some("wav"));
        assert_eq!(record.patient_reference.as_deref(), Some("Patient/123"));
        assert_eq!(record.source, "msg-1");
        assert!(record.redelivered);
        assert!(record.trace_parent.is_some());
    }

    #[test]
    fn unreadable_messages_become_records_with_a_reason_and_no_phi() {
        let reader = EnvelopeReader::new(None, "default");
        let garbage = reader.read(b"not json", context());
        assert!(garbage.read_error.unwrap().contains("not valid JSON"));
        assert_eq!(garbage.tenant, "default");

        let unknown_field = br#"{"tenant":"a","audio":{"inline":{"data":""}},"mood":"x"}"#;
        let record = reader.read(unknown_field, context());
        assert!(record
            .read_error
            .unwrap()
            .contains("does not have the expected fields"));

        let bad_patient =
            br#"{"tenant":"a","audio":{"inline":{"data":""}},"patient_reference":"John Smith"}"#;
        let reason = reader.read(bad_patient, context()).read_error.unwrap();
        assert!(reason.contains("patient_reference must be a FHIR reference Patient/<id>"));
        assert!(!reason.contains("John"));

        let bad_base64 = br#"{"tenant":"a","audio":{"inline":{"data":"@@@"}}}"#;
        let reason = reader.read(bad_base64, context()).read_error.unwrap();
        assert!(reason.contains("base64"));

        let priority = br#"{"tenant":"a","audio":{"inline":{"data":""}},"priority":12}"#;
        assert!(reader
            .read(priority, context())
            .read_error
            .unwrap()
            .contains("priority"));
    }

    /// PHI-looking values in every field, one field at a time: the reason
    /// names the field, never the value.
    #[test]
    fn no_reason_quotes_a_field() {
        const CANARIES: [&str; 3] = ["Smith John", "Patient/MRN-4471-CANARY", "1958-03-12"];
        let valid = serde_json::json!({
            "version": 1, "tenant": "a", "client_reference": "c-1",
            "audio": {"inline": {"data": "", "format": "wav"}},
            "patient_reference": "Patient/1", "encounter_reference": "Encounter/2",
            "priority": 1,
        });
        let fields: [&[&str]; 10] = [
            &["version"],
            &["tenant"],
            &["client_reference"],
            &["audio"],
            &["audio", "inline", "data"],
            &["audio", "inline", "format"],
            &["patient_reference"],
            &["encounter_reference"],
            &["priority"],
            &["Smith John"],
        ];
        let reader = EnvelopeReader::new(None, "default");
        for canary in CANARIES {
            for path in fields {
                let mut body = valid.clone();
                let (last, parents) = path.split_last().unwrap();
                let mut target = &mut body;
                for key in parents {
                    target = &mut target[*key];
                }
                target[*last] = serde_json::Value::String(canary.into());
                let record = reader.read(&serde_json::to_vec(&body).unwrap(), context());
                let reason = record.read_error.unwrap_or_default();
                // A canary that is a valid value (a FHIR reference in its own
                // field, a client reference) is accepted, not refused.
                if reason.is_empty() {
                    continue;
                }
                assert!(!reason.contains(canary), "{path:?}: {reason}");
                assert!(!record.tenant.contains(canary), "{path:?}");
            }
        }
        let sidecar_like = br#"{"tenant":"a","audio":{"reference":{"url":"/Smith John.wav"}}}"#;
        let reason = reader.read(sidecar_like, context()).read_error.unwrap();
        assert!(!reason.contains("Smith"), "{reason}");
    }

    #[test]
    fn references_are_read_from_the_tenants_folder_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/2024")).unwrap();
        std::fs::create_dir_all(root.path().join("b")).unwrap();
        std::fs::write(root.path().join("a/2024/Smith_John.wav"), b"audio").unwrap();
        std::fs::write(root.path().join("b/other.wav"), b"b's audio").unwrap();
        std::fs::write(outside.path().join("secret.wav"), b"nope").unwrap();
        let reader = EnvelopeReader::new(Some(root.path().to_owned()), "default");
        let body = |tenant: &str, url: String| {
            serde_json::to_vec(&serde_json::json!({
                "tenant": tenant, "audio": {"reference": {"url": url}}
            }))
            .unwrap()
        };
        let record = reader.read(&body("a", "2024/Smith_John.wav".into()), context());
        assert_eq!(record.read_error, None);
        assert_eq!(record.bytes, b"audio");
        assert_eq!(record.extension.as_deref(), Some("wav"));

        // Outside, another tenant's, missing: the same reason, naming no path.
        let refusals = [
            body("a", outside.path().join("secret.wav").display().to_string()),
            body("a", "../b/other.wav".into()),
            body("b", "../a/2024/Smith_John.wav".into()),
            body("a", "2024/Doe_Jane.wav".into()),
        ];
        for refused in &refusals {
            let reason = reader.read(refused, context()).read_error.unwrap();
            assert_eq!(reason, crate::reference::REFUSED);
        }

        let refused = EnvelopeReader::new(None, "default");
        assert!(refused
            .read(&body("a", "2024/Smith_John.wav".into()), context())
            .read_error
            .unwrap()
            .contains("not accepted"));
    }

    #[test]
    fn trace_parents_are_checked() {
        assert!(is_trace_parent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_trace_parent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_trace_parent("garbage"));
        let mut ctx = context();
        ctx.trace_parent = Some("bogus".into());
        let body = serde_json::to_vec(&JobEnvelope::inline("a", b"x", None)).unwrap();
        assert_eq!(
            EnvelopeReader::new(None, "d").read(&body, ctx).trace_parent,
            None
        );
    }

    #[test]
    fn the_schema_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let valid = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("valid");
            let parsed = serde_json::from_str::<JobEnvelope>(&text);
            let ok = parsed.as_ref().is_ok_and(|e| e.problems().is_empty());
            assert_eq!(ok, valid, "{}: {parsed:?}", path.display());
            seen += 1;
        }
        assert!(seen >= 4);
    }
}
