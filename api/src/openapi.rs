//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "MMT job API",
        description = "Submit clinical audio for transcription, follow its job, fetch the transcript \
                       (JSON, text, SRT, WebVTT, FHIR DocumentReference). Bearer JWTs (HS256 or \
                       RS256 with kid) carry the tenant and roles; errors are application/problem+json."
    ),
    paths(
        crate::jobs::submit,
        crate::jobs::list_jobs,
        crate::jobs::get_job,
        crate::jobs::get_transcript,
        crate::jobs::delete_job,
        crate::ops::status,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        crate::ops::openapi_json,
    ),
    components(schemas(
        crate::error::Problem,
        crate::views::TranscriptSchema,
        crate::views::TranscriptFormatParam,
        crate::views::Status,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Transcription jobs"),
        (name = "operations", description = "Health, readiness, metrics, status"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/v1/jobs",
            "/v1/jobs/{id}",
            "/v1/jobs/{id}/transcript",
            "/v1/status",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
        // Every schema a path refers to is defined.
        let text = json.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                json["components"]["schemas"][name].is_object(),
                "{name} is referred to but not defined"
            );
        }
    }
}
