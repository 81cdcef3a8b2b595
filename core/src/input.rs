//! Checking what clients send (broker envelopes, sidecar files, API requests)
//! without ever quoting it back.
//!
//! Any field may hold PHI (a patient's name typed into the wrong field), and an
//! error travels far: into logs, the dead-letter queue, the job store and the
//! API's answers. So every problem names the field and the rule it breaks,
//! never the value. serde_json's own messages quote values (`invalid type:
//! string "Smith John", expected u8`); [`read_json`] never passes them on: it
//! finds the field with `serde_path_to_error` and answers with the rule the
//! caller wrote for that field.

use serde::de::DeserializeOwned;
use std::fmt;

/// The rule a tenant name follows.
pub const TENANT_RULE: &str = "must be 1-64 of A-Z a-z 0-9 . _ -";

/// Whether `tenant` is a tenant name: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn is_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `reference` is a relative FHIR reference `<resource_type>/<id>`
/// with a FHIR id (1–64 of `A-Za-z0-9-.`).
pub fn is_fhir_reference(reference: &str, resource_type: &str) -> bool {
    reference
        .strip_prefix(resource_type)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        })
}

/// Whether `value` is a W3C `traceparent` header of version 00:
/// `00-<32 hex>-<16 hex>-<2 hex>`, with neither id all zeros.
pub fn is_trace_parent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// One field that breaks a rule: `patient_reference must look like
/// Patient/<id>`. The field's name is the program's own (never a key the
/// client sent) and the rule says what is expected, not what was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct FieldProblem {
    pub field: &'static str,
    pub rule: String,
}

impl FieldProblem {
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

/// The problem of an optional FHIR reference field, if it has one.
pub fn reference_problem(
    field: &'static str,
    resource_type: &str,
    reference: Option<&str>,
) -> Option<FieldProblem> {
    let reference = reference?;
    (!is_fhir_reference(reference, resource_type)).then(|| {
        FieldProblem::new(
            field,
            format!("must be a FHIR reference {resource_type}/<id> (id: 1-64 of A-Z a-z 0-9 - .)"),
        )
    })
}

/// The fields of a JSON document and the rule of each, by path (`audio.inline.data`
/// for a nested field): what a problem says about the field at fault.
#[derive(Debug, Clone, Copy)]
pub struct JsonShape {
    /// What the document is, for messages: `job envelope`, `sidecar`.
    pub name: &'static str,
    /// What the document must look like as a whole (its required and known
    /// fields), said when the fault is not in one known field.
    pub summary: &'static str,
    /// Each field's path and rule.
    pub fields: &'static [(&'static str, &'static str)],
}

/// Why a JSON document was refused: never with any of its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonProblem {
    /// Not JSON at all, or cut short; the position helps find the fault.
    #[error("the {name} is not valid JSON (line {line}, column {column})")]
    NotJson {
        name: &'static str,
        line: usize,
        column: usize,
    },
    /// A known field has the wrong type or value.
    #[error("the {name}'s {problem}")]
    Field {
        name: &'static str,
        problem: FieldProblem,
    },
    /// A required field is missing, a field is unknown (its name is not
    /// repeated: it may be PHI too), or the document is not an object.
    #[error("the {name} does not have the expected fields: {summary}")]
    Shape {
        name: &'static str,
        summary: &'static str,
    },
}

impl JsonProblem {
    /// The field at fault, when the problem is in one known field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Field { problem, .. } => Some(problem.field),
            Self::NotJson { .. } | Self::Shape { .. } => None,
        }
    }

    /// Whether the document is not JSON at all (rather than JSON of the wrong shape).
    pub fn is_syntax(&self) -> bool {
        matches!(self, Self::NotJson { .. })
    }
}

/// Reads `bytes` as a `T`, describing a failure with `shape` alone.
pub fn read_json<T: DeserializeOwned>(bytes: &[u8], shape: &JsonShape) -> Result<T, JsonProblem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| describe(&error, shape))?;
    // Trailing content after the document.
    deserializer.end().map_err(|error| JsonProblem::NotJson {
        name: shape.name,
        line: error.line(),
        column: error.column(),
    })?;
    Ok(value)
}

fn describe(
    error: &serde_path_to_error::Error<serde_json::Error>,
    shape: &JsonShape,
) -> JsonProblem {
    use serde_json::error::Category;
    let inner = error.inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => JsonProblem::NotJson {
            name: shape.name,
            line: inner.line(),
            column: inner.column(),
        },
        Category::Data => {
            let path = error.path().to_string();
            match shape.fields.iter().find(|(field, _)| *field == path) {
                Some((field, rule)) => JsonProblem::Field {
                    name: shape.name,
                    problem: FieldProblem::new(field, *rule),
                },
                None => JsonProblem::Shape {
                    name: shape.name,
                    summary: shape.summary,
                },
            }
        }
    }
}

/// A list of problems as one line: `a must …; b must …`.
pub fn join(problems: &[FieldProblem]) -> String {
    Joined(problems).to_string()
}

struct Joined<'a>(&'a [FieldProblem]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        tenant: String,
        #[serde(default)]
        priority: u8,
        #[serde(default)]
        audio: Option<Audio>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Audio {
        Inline { data: String },
    }

    const SHAPE: JsonShape = JsonShape {
        name: "document",
        summary: "tenant (required), priority, audio",
        fields: &[
            ("tenant", "must be a string"),
            ("priority", "must be an integer 0-9"),
            ("audio.inline.data", "must be a base64 string"),
        ],
    };

    const CANARY: &str = "Smith John";

    fn problem(json: &str) -> JsonProblem {
        let error = read_json::<Doc>(json.as_bytes(), &SHAPE).expect_err("refused");
        assert!(!error.to_string().contains("Smith"), "{error}");
        assert!(!error.to_string().contains("1958"), "{error}");
        error
    }

    #[test]
    fn a_wrong_field_is_named_with_its_rule_and_never_its_value() {
        let error = problem(r#"{"tenant":"a","priority":"Smith John"}"#);
        assert_eq!(error.field(), Some("priority"));
        assert_eq!(
            error.to_string(),
            "the document's priority must be an integer 0-9"
        );
        let error = problem(r#"{"tenant":"a","priority":1958}"#);
        assert_eq!(error.field(), Some("priority"));
        let error = problem(r#"{"tenant":["Smith John"]}"#);
        assert_eq!(error.field(), Some("tenant"));
        let error = problem(r#"{"tenant":"a","audio":{"inline":{"data":1958}}}"#);
        assert_eq!(error.field(), Some("audio.inline.data"));
    }

    #[test]
    fn unknown_and_missing_fields_and_variants_are_not_repeated() {
        for json in [
            r#"{"tenant":"a","Smith John":"1958-03-12"}"#,
            r#"{"priority":1}"#,
            r#"{"tenant":"a","audio":{"Smith John":{}}}"#,
            r#"{"tenant":"a","audio":{"inline":{"data":"x","Smith John":1}}}"#,
            r#""Smith John""#,
            "19580312",
        ] {
            let error = problem(json);
            assert!(
                matches!(error, JsonProblem::Shape { .. }),
                "{json}: {error:?}"
            );
            assert!(error.to_string().contains(SHAPE.summary));
        }
    }

    #[test]
    fn broken_json_gives_its_position_only() {
        for json in [
            r#"{"tenant":"Smith John"#,
            r#"{"tenant": Smith John}"#,
            r#"{"tenant":"a"} Smith John"#,
            "",
        ] {
            let error = problem(json);
            assert!(error.is_syntax(), "{json}: {error:?}");
            assert!(error.to_string().contains("line 1"), "{error}");
        }
    }

    #[test]
    fn tenants_and_references() {
        assert!(is_tenant("clinic-a.b_c"));
        assert!(!is_tenant(CANARY));
        assert!(!is_tenant(""));
        assert!(!is_tenant(&"a".repeat(65)));
        assert!(is_fhir_reference("Patient/p-17", "Patient"));
        assert!(!is_fhir_reference("Patient/", "Patient"));
        assert!(!is_fhir_reference("Patient/a b", "Patient"));
        assert!(!is_fhir_reference("Encounter/9", "Patient"));
        assert!(!is_fhir_reference(
            &format!("Patient/{}", "1".repeat(65)),
            "Patient"
        ));
        assert_eq!(reference_problem("patient", "Patient", None), None);
        let problem = reference_problem("patient", "Patient", Some(CANARY)).expect("refused");
        assert_eq!(problem.field, "patient");
        assert!(!problem.to_string().contains("Smith"));
        assert_eq!(
            join(&[problem.clone(), problem]),
            "patient must be a FHIR reference Patient/<id> (id: 1-64 of A-Z a-z 0-9 - .); \
             patient must be a FHIR reference Patient/<id> (id: 1-64 of A-Z a-z 0-9 - .)"
        );
    }
}
