//! The FHIR R4 `DocumentReference` a completed job becomes.
//!
//! The transcript travels as a base64 `text/plain` attachment. Everything else is
//! ids and codes; the only PHI in the resource are the transcript and the patient
//! and encounter references, which is why documents go only to the document sink.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mmt_core::job::CompletedJob;
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};

/// The identifier system of MMT job ids.
pub const JOB_ID_SYSTEM: &str = "urn:mmt:job";

/// LOINC 34109-9 "Note": the generic document-ontology code for a clinical note
/// whose kind (progress note, consult, discharge summary…) is not known. MMT
/// transcribes any dictation, so a specific code such as 11488-4 "Consult note"
/// or 11506-3 "Progress note" would claim something the engine cannot know; an
/// upstream system that knows the kind can recode. 34109-9 is in the US Core
/// DocumentReference type value set.
pub const NOTE_TYPE: Coding = Coding {
    system: "http://loinc.org",
    code: "34109-9",
    display: "Note",
};

/// US Core's DocumentReference category for clinical notes.
pub const CLINICAL_NOTE_CATEGORY: Coding = Coding {
    system: "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
    code: "clinical-note",
    display: "Clinical Note",
};

/// The attachment's title: fixed, because a file or message name may hold PHI.
pub const ATTACHMENT_TITLE: &str = "Transcribed dictation";

/// The MIME type of the transcript attachment.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// A FHIR `DocumentReference` (R4), with only the elements MMT fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReference {
    /// Always `DocumentReference`.
    pub resource_type: String,
    /// The job id.
    pub id: String,
    pub identifier: Vec<Identifier>,
    /// `current`.
    pub status: String,
    /// `final`: the transcript will not change.
    pub doc_status: String,
    #[serde(rename = "type")]
    pub type_: CodeableConcept,
    pub category: Vec<CodeableConcept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// When the document was made (FHIR `instant`).
    pub date: String,
    pub content: Vec<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
}

/// A FHIR `Identifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identifier {
    pub system: String,
    pub value: String,
}

/// A FHIR `Coding`, as constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Coding {
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
}

/// A FHIR `Coding` as it appears in a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodingValue {
    pub system: String,
    pub code: String,
    pub display: String,
}

impl From<Coding> for CodingValue {
    fn from(coding: Coding) -> Self {
        Self {
            system: coding.system.to_owned(),
            code: coding.code.to_owned(),
            display: coding.display.to_owned(),
        }
    }
}

/// A FHIR `CodeableConcept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeableConcept {
    pub coding: Vec<CodingValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A FHIR `Reference` (literal reference only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub reference: String,
}

/// `DocumentReference.content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub attachment: Attachment,
}

/// A FHIR `Attachment` with inline data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Standard base64 (with padding) of the UTF-8 transcript text; absent for an
    /// empty transcript (FHIR forbids empty strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Bytes of the data before base64 encoding.
    pub size: u64,
    pub title: String,
    /// When the transcript was made (FHIR `dateTime`).
    pub creation: String,
}

/// `DocumentReference.context`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// R4 allows several encounters: an array even for one.
    pub encounter: Vec<Reference>,
}

/// Builds the `DocumentReference` of a completed job.
///
/// Fails only if the job id cannot be a FHIR id (job ids are hex digests, so it
/// always can).
pub fn document_reference(job: &CompletedJob) -> Result<DocumentReference> {
    let id = &job.meta.id.0;
    if !is_fhir_id(id) {
        return Err(ConnectorError::InvalidFhirId(id.clone()));
    }
    let text = job.transcript.text.as_bytes();
    let created = fhir_instant(job.completed_at);
    let language = job.transcript.language.trim();
    Ok(DocumentReference {
        resource_type: "DocumentReference".to_owned(),
        id: id.clone(),
        identifier: vec![Identifier {
            system: JOB_ID_SYSTEM.to_owned(),
            value: id.clone(),
        }],
        status: "current".to_owned(),
        doc_status: "final".to_owned(),
        type_: CodeableConcept {
            coding: vec![NOTE_TYPE.into()],
            text: Some("Transcribed clinical note".to_owned()),
        },
        category: vec![CodeableConcept {
            coding: vec![CLINICAL_NOTE_CATEGORY.into()],
            text: None,
        }],
        subject: non_empty(job.meta.patient_reference.as_deref()).map(reference),
        date: created.clone(),
        content: vec![Content {
            attachment: Attachment {
                content_type: CONTENT_TYPE.to_owned(),
                language: is_language_code(language).then(|| language.to_owned()),
                data: (!text.is_empty()).then(|| STANDARD.encode(text)),
                size: text.len() as u64,
                title: ATTACHMENT_TITLE.to_owned(),
                creation: created,
            },
        }],
        context: non_empty(job.meta.encounter_reference.as_deref()).map(|encounter| Context {
            encounter: vec![reference(encounter)],
        }),
    })
}

fn reference(value: &str) -> Reference {
    Reference {
        reference: value.to_owned(),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A BCP-47-looking tag (`en`, `en-US`): letters, digits and hyphens.
fn is_language_code(code: &str) -> bool {
    let mut parts = code.split('-');
    parts.next().is_some_and(|primary| {
        (2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic())
    }) && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Unix seconds as a FHIR `instant` in UTC: `2023-11-14T22:13:20Z` (seconds and
/// time zone are required by `instant`).
pub fn fhir_instant(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::job::{JobId, JobMeta};
    use mmt_core::Transcript;
    use serde_json::json;

    fn job(patient: Option<&str>, encounter: Option<&str>) -> CompletedJob {
        CompletedJob {
            meta: JobMeta {
                id: JobId("3f2a9c".into()),
                tenant: "clinic-a".into(),
                content_hash: "ab".repeat(32),
                source: "smith_john_visit.wav".into(),
                patient_reference: patient.map(Into::into),
                encounter_reference: encounter.map(Into::into),
                correlation_id: "corr-1".into(),
                received_at: 1_700_000_000,
                trace_parent: None,
            },
            transcript: Transcript::from_segments(Vec::new(), 3.0, "en"),
            completed_at: 1_700_000_000,
        }
    }

    #[test]
    fn instants_have_seconds_and_zone() {
        assert_eq!(fhir_instant(0), "1970-01-01T00:00:00Z");
        assert_eq!(fhir_instant(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fhir_instant(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fhir_instant(-1), "1969-12-31T23:59:59Z");
        assert_eq!(fhir_instant(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn full_shape() {
        let mut job = job(Some("Patient/123"), Some("Encounter/456"));
        job.transcript.text = "Blood pressure 120 over 80.".into();
        let doc = serde_json::to_value(document_reference(&job).expect("valid id")).expect("json");
        assert_eq!(
            doc,
            json!({
                "resourceType": "DocumentReference",
                "id": "3f2a9c",
                "identifier": [{"system": "urn:mmt:job", "value": "3f2a9c"}],
                "status": "current",
                "docStatus": "final",
                "type": {
                    "coding": [{"system": "http://loinc.org", "code": "34109-9", "display": "Note"}],
                    "text": "Transcribed clinical note"
                },
                "category": [{"coding": [{
                    "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                    "code": "clinical-note",
                    "display": "Clinical Note"
                }]}],
                "subject": {"reference": "Patient/123"},
                "date": "2023-11-14T22:13:20Z",
                "content": [{"attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en",
                    "data": "Qmxvb2QgcHJlc3N1cmUgMTIwIG92ZXIgODAu",
                    "size": 27,
                    "title": "Transcribed dictation",
                    "creation": "2023-11-14T22:13:20Z"
                }}],
                "context": {"encounter": [{"reference": "Encounter/456"}]}
            })
        );
    }

    #[test]
    fn absent_references_are_omitted() {
        let doc = serde_json::to_value(document_reference(&job(None, Some("  "))).expect("valid"))
            .expect("json");
        assert!(doc.get("subject").is_none());
        assert!(doc.get("context").is_none());
        // An empty transcript has no data (FHIR strings are never empty), size 0.
        assert!(doc["content"][0]["attachment"].get("data").is_none());
        assert_eq!(doc["content"][0]["attachment"]["size"], 0);
    }

    #[test]
    fn base64_is_standard_with_padding() {
        let mut job = job(None, None);
        job.transcript.text = "ab?>".into();
        let doc = document_reference(&job).expect("valid");
        // "ab?>" → standard alphabet uses '/' and '+', and pads to a multiple of 4.
        assert_eq!(doc.content[0].attachment.data.as_deref(), Some("YWI/Pg=="));
    }

    #[test]
    fn no_source_name_leaks_into_the_document() {
        let text = serde_json::to_string(&document_reference(&job(None, None)).expect("valid"))
            .expect("json");
        assert!(!text.contains("smith"));
        assert!(!text.contains("clinic-a"));
    }

    #[test]
    fn ids_and_languages_are_checked() {
        assert!(is_fhir_id(&"a".repeat(64)));
        assert!(!is_fhir_id(&"a".repeat(65)));
        assert!(!is_fhir_id("tenant/abc"));
        assert!(!is_fhir_id(""));
        let mut bad = job(None, None);
        bad.meta.id = JobId("has space".into());
        assert!(matches!(
            document_reference(&bad),
            Err(ConnectorError::InvalidFhirId(_))
        ));
        assert!(is_language_code("en") && is_language_code("en-US"));
        assert!(!is_language_code("") && !is_language_code("english language"));
    }
}
