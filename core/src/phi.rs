//! Masking of protected health information (PHI) for audit events and logs.
//!
//! Audit events, logs, metrics and dead letters carry ids and masked values only;
//! the document sink is the one place transcript text and references go in full.

/// Masks the id of a FHIR reference, keeping its resource type so an auditor
/// still sees what kind of thing was referenced:
/// `Patient/123` → `Patient/***`, `https://fhir.example/Patient/123/_history/2` →
/// `Patient/***`, `#contained` → `#***`, `urn:uuid:…` → `urn:uuid:***`,
/// anything else → `***`.
pub fn mask_reference(reference: &str) -> String {
    const MASK: &str = "***";
    let reference = reference.trim();
    if reference.starts_with('#') {
        return format!("#{MASK}");
    }
    for scheme in ["urn:uuid:", "urn:oid:"] {
        if reference
            .get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
        {
            return format!("{scheme}{MASK}");
        }
    }
    // Drop a version suffix, then take `Type/id` from the end (relative or absolute).
    let unversioned = reference
        .split_once("/_history/")
        .map_or(reference, |(head, _)| head);
    let mut parts = unversioned.rsplit('/');
    let (Some(id), Some(resource_type)) = (parts.next(), parts.next()) else {
        return MASK.to_owned();
    };
    if !id.is_empty() && is_resource_type(resource_type) {
        format!("{resource_type}/{MASK}")
    } else {
        MASK.to_owned()
    }
}

/// Masks an optional reference (see [`mask_reference`]).
pub fn mask_optional_reference(reference: Option<&str>) -> Option<String> {
    reference.map(mask_reference)
}

/// Replaces free text (a transcript, a source name) by its length only:
/// `"[redacted 42 chars]"`.
pub fn mask_text(text: &str) -> String {
    format!("[redacted {} chars]", text.chars().count())
}

/// FHIR resource type names are an upper-case letter followed by letters.
fn is_resource_type(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_keep_their_type_only() {
        assert_eq!(mask_reference("Patient/123"), "Patient/***");
        assert_eq!(mask_reference("Encounter/enc-456"), "Encounter/***");
        assert_eq!(
            mask_reference("https://fhir.example.org/r4/Patient/123/_history/2"),
            "Patient/***"
        );
        assert_eq!(mask_reference("#contained-1"), "#***");
        assert_eq!(
            mask_reference("urn:uuid:9a1f0c7e-1111-2222-3333-444455556666"),
            "urn:uuid:***"
        );
    }

    #[test]
    fn anything_unrecognised_is_fully_masked() {
        assert_eq!(mask_reference("123"), "***");
        assert_eq!(mask_reference("John Smith"), "***");
        assert_eq!(mask_reference("patient/123"), "***");
        assert_eq!(mask_reference("Patient/"), "***");
        assert_eq!(mask_reference(""), "***");
        assert_eq!(mask_reference("MRN 12/34"), "***");
    }

    #[test]
    fn optional_references() {
        assert_eq!(mask_optional_reference(None), None);
        assert_eq!(
            mask_optional_reference(Some("Patient/1")).as_deref(),
            Some("Patient/***")
        );
    }

    #[test]
    fn text_keeps_only_its_length() {
        assert_eq!(
            mask_text("Patient John Smith, DOB 1970"),
            "[redacted 28 chars]"
        );
        assert_eq!(mask_text(""), "[redacted 0 chars]");
        // Characters, not bytes.
        assert_eq!(mask_text("café"), "[redacted 4 chars]");
    }
}
