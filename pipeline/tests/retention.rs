//! Retention purges old jobs from the store and the documents, and audits it.

use mmt_core::job::{CompletedJob, JobId, JobMeta};
use mmt_core::telemetry::Metrics;
use mmt_core::Transcript;
use mmt_pipeline::retention::purge_once;
use mmt_pipeline::run::plan::open_sinks;
use mmt_pipeline::run::OutputPaths;
use mmt_pipeline::Config;

fn job(id: &str, received_at: i64) -> CompletedJob {
    CompletedJob {
        meta: JobMeta {
            id: JobId(id.into()),
            tenant: "t".into(),
            content_hash: "h".into(),
            source: "a.wav".into(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: "c".into(),
            received_at,
            trace_parent: None,
        },
        transcript: Transcript::from_segments(vec![], 1.0, "en"),
        completed_at: received_at,
    }
}

#[test]
fn purges_only_what_is_older_than_the_window_and_audits_it() {
    let out = tempfile::tempdir().expect("tempdir");
    let paths = OutputPaths {
        database_url: format!("sqlite://{}", out.path().join("mmt.db").display()),
        audit_log: out.path().join("audit.jsonl"),
        documents_dir: out.path().join("fhir"),
        dead_letter_dir: out.path().to_owned(),
    };
    let now = 1_800_000_000;
    let day = 86_400;
    {
        let mut sinks = open_sinks(&Config::default(), &paths).expect("sinks");
        for (id, age_days) in [
            ("0123456789abcdef0123456789abcdef", 40),
            ("fedcba9876543210fedcba9876543210", 5),
        ] {
            let job = job(id, now - age_days * day);
            sinks.documents.write(&job).expect("document");
            sinks.store.complete(&job).expect("store");
        }
    }
    let metrics = Metrics::new().expect("metrics");

    let (_, dry) =
        purge_once(&Config::default(), &paths, 30, now, true, &metrics).expect("dry run");
    assert_eq!((dry.jobs, dry.documents), (1, 0));
    let documents = || {
        std::fs::read_to_string(out.path().join("fhir/DocumentReference.ndjson"))
            .expect("documents")
            .lines()
            .count()
    };
    assert_eq!(documents(), 2, "a dry run removes nothing");

    let (cutoff, purged) =
        purge_once(&Config::default(), &paths, 30, now, false, &metrics).expect("purge");
    assert_eq!(cutoff, now - 30 * day);
    assert_eq!((purged.jobs, purged.documents), (1, 1));
    assert_eq!(documents(), 1);
    let audit = std::fs::read_to_string(&paths.audit_log).expect("audit");
    assert!(audit.contains("job_purged") && audit.contains("0123456789abcdef0123456789abcdef"));
    assert!(metrics
        .encode_text()
        .contains("retention_purged_total{kind=\"job\"} 1"));

    let (_, again) =
        purge_once(&Config::default(), &paths, 30, now, false, &metrics).expect("purge again");
    assert_eq!(again.jobs, 0, "purging is idempotent");
}
