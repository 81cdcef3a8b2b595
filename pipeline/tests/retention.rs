//! Retention purges old jobs from the store and the documents, and audits it.

use mmt_core::job::{CompletedJob, JobId, JobMeta};
use mmt_core::telemetry::Metrics;
use mmt_core::Transcript;
use mmt_pipeline::retention::purge_once;
use mmt_pipeline::run::plan::open_sinks;
use mmt_pipeline::run::OutputPaths;
use mmt_pipeline::Config;

fn job(id: &str, received_at: i64) -> CompletedJob {
    job_of("t", id, received_at)
}

fn job_of(tenant: &str, id: &str, received_at: i64) -> CompletedJob {
    CompletedJob {
        meta: JobMeta {
            id: JobId(id.into()),
            tenant: tenant.into(),
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
    // The embedded default's layout under `out`, as `mmt retention purge --out` uses it.
    let paths = OutputPaths::resolve(&Config::default(), out.path());
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

/// A purge whose document deletion fails (here the rewrite of the document
/// file cannot be created, as on a full disk) keeps every due job in the
/// store; the next purge finds them and removes their documents and rows.
#[test]
fn a_failed_document_purge_is_redone_by_the_next_run() {
    let out = tempfile::tempdir().expect("tempdir");
    // The embedded default's layout under `out`, as `mmt retention purge --out` uses it.
    let paths = OutputPaths::resolve(&Config::default(), out.path());
    let now = 1_800_000_000;
    let day = 86_400;
    let old = [
        "0123456789abcdef0123456789abcdef",
        "1123456789abcdef0123456789abcdef",
    ];
    {
        let mut sinks = open_sinks(&Config::default(), &paths).expect("sinks");
        for (id, age_days) in [
            (old[0], 40),
            (old[1], 35),
            ("fedcba9876543210fedcba9876543210", 5),
        ] {
            let job = job(id, now - age_days * day);
            sinks.documents.write(&job).expect("document");
            sinks.store.complete(&job).expect("store");
        }
    }
    let document_file = out.path().join("fhir/DocumentReference.ndjson");
    let documents = || {
        std::fs::read_to_string(&document_file)
            .expect("documents")
            .lines()
            .count()
    };
    // The purge rewrites the file through a sibling temporary file: a
    // directory in its place makes that write fail, a real I/O error.
    let blocker = out.path().join("fhir/DocumentReference.ndjson.tmp");
    std::fs::create_dir(&blocker).expect("blocker");
    let metrics = Metrics::new().expect("metrics");

    let failed = purge_once(&Config::default(), &paths, 30, now, false, &metrics);
    assert!(failed.is_err(), "the document purge failed: {failed:?}");
    assert_eq!(documents(), 3, "no document went");
    let (_, due) =
        purge_once(&Config::default(), &paths, 30, now, true, &metrics).expect("dry run");
    assert_eq!(due.jobs, 2, "both jobs are still recorded as due");

    std::fs::remove_dir(&blocker).expect("unblock");
    let (_, purged) =
        purge_once(&Config::default(), &paths, 30, now, false, &metrics).expect("purge");
    assert_eq!((purged.jobs, purged.documents), (2, 2));
    assert_eq!(documents(), 1, "only the recent job's document is left");
    let (_, again) =
        purge_once(&Config::default(), &paths, 30, now, false, &metrics).expect("purge again");
    assert_eq!((again.jobs, again.documents), (0, 0));
    let audit = std::fs::read_to_string(&paths.audit_log).expect("audit");
    for id in old {
        assert!(audit.contains(id), "the purge of {id} is audited");
    }
}

/// Each record of a job is purged once and audited once: a job purged,
/// submitted again and purged again is two `job_purged` events (the audit
/// trail keeps one event per job, action and correlation id), each naming the
/// job's tenant.
#[test]
fn a_job_purged_twice_is_audited_twice_with_its_tenant() {
    let out = tempfile::tempdir().expect("tempdir");
    // The embedded default's layout under `out`, as `mmt retention purge --out` uses it.
    let paths = OutputPaths::resolve(&Config::default(), out.path());
    let now = 1_800_000_000;
    let day = 86_400;
    let id = "0123456789abcdef0123456789abcdef";
    let metrics = Metrics::new().expect("metrics");
    for round in 1..=2 {
        {
            let mut sinks = open_sinks(&Config::default(), &paths).expect("sinks");
            let job = job_of("clinic-a", id, now - 40 * day);
            sinks.documents.write(&job).expect("document");
            sinks.store.complete(&job).expect("store");
        }
        let (_, purged) =
            purge_once(&Config::default(), &paths, 30, now, false, &metrics).expect("purge");
        assert_eq!((purged.jobs, purged.documents), (1, 1), "round {round}");
    }
    let audit = std::fs::read_to_string(&paths.audit_log).expect("audit");
    let purges: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("an audit line"))
        .filter(|event| event["action"] == "job_purged")
        .collect();
    assert_eq!(purges.len(), 2, "{audit}");
    for event in &purges {
        assert_eq!(event["job_id"], id);
        assert_eq!(event["tenant"], "clinic-a");
        assert!(!event["correlation_id"].as_str().unwrap_or("").is_empty());
    }
    assert_ne!(purges[0]["correlation_id"], purges[1]["correlation_id"]);
}
