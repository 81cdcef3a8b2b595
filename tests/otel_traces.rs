//! OpenTelemetry traces end to end: `mmt submit` puts one recording on a
//! RabbitMQ queue and `mmt run --source rabbitmq` transcribes it into a FHIR
//! server, both exporting spans over OTLP/HTTP to a receiver started here.
//! One trace spans the broker hop, every stage and the FHIR request; the FHIR
//! server gets that trace's `traceparent`, and the worker's log lines for the
//! job carry its trace id.
//!
//! The receiver is the test's own: no OpenTelemetry Collector installs from
//! the registries this project uses (Debian has none; PyPI only a wrapper
//! that downloads the binary). It decodes what the exporter sends with the
//! protocol's own message types (`opentelemetry-proto`), as a collector would.

mod common;

#[path = "../connectors/tests/fhir_fake/mod.rs"]
mod fhir_fake;

use common::postgres::{unique, Schema, POSTGRES};
use common::{distinct_recordings, model_ready, require_service, root};
use fhir_fake::FakeFhir;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const BROKER: &str = "127.0.0.1:5672";

/// One exported span, ids in hex.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    service: String,
}

/// An OTLP/HTTP receiver on loopback: decodes every `POST /v1/traces` body.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Requests that were not a decodable trace export to `/v1/traces`.
    refused: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (into, refusals) = (Arc::clone(&spans), Arc::clone(&refused));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (into, refusals) = (Arc::clone(&into), Arc::clone(&refusals));
                std::thread::spawn(move || serve(stream, &into, &refusals));
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            refused,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }
}

/// Answers the requests of one connection (the exporter keeps it alive).
fn serve(stream: std::net::TcpStream, into: &Mutex<Vec<Span>>, refused: &Mutex<Vec<String>>) {
    let mut writer = stream.try_clone().expect("a second handle");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            if let Some(value) = lower.strip_prefix("content-type:") {
                content_type = value.trim().to_owned();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = ExportTraceServiceRequest::decode(body.as_slice());
        match decoded {
            Ok(request)
                if request_line.starts_with("POST /v1/traces ")
                    && content_type == "application/x-protobuf" =>
            {
                into.lock().expect("spans").extend(spans_of(request));
            }
            other => refused.lock().expect("refusals").push(format!(
                "{} ({content_type}): {:?}",
                request_line.trim(),
                other.err()
            )),
        }
        // An empty ExportTraceServiceResponse: everything accepted.
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Span {
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
                service: service.clone(),
            });
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `mmt` with the broker, queue and collector of this test.
fn mmt(queue: &str, collector: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .current_dir(root())
        .env("EXTERNAL_RABBITMQ_ENABLED", "true")
        .env("EXTERNAL_RABBITMQ_HOST", BROKER)
        .env("MMT_RABBITMQ_QUEUE", queue)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("OTEL_SERVICE_NAME", "mmt-otel-test")
        // Exported soon after they end, not only at exit.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_COMPRESSION")
        .env_remove("AUDIT_LOG_FILE");
    command
}

fn one<'a>(spans: &'a [Span], name: &str, trace_id: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == trace_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span in the job's trace: {spans:#?}"
    );
    found[0]
}

#[test]
fn one_job_is_one_trace_from_submit_to_the_fhir_request() {
    if !model_ready()
        || !require_service("RabbitMQ", BROKER)
        || !require_service("PostgreSQL", POSTGRES)
    {
        return;
    }
    let receiver = Receiver::start();
    let fhir = FakeFhir::start();
    let queue = unique("mmt.test.otel");
    let schema = Schema::create(&unique("mmt_otel"));
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("dictation.wav");
    let (_, audio) = distinct_recordings(1).remove(0);
    std::fs::write(&recording, audio).expect("write the recording");

    let submitted = mmt(&queue, &receiver.endpoint)
        .arg("submit")
        .arg(&recording)
        .args(["--tenant", "clinic-otel"])
        .output()
        .expect("mmt submit");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );

    let log = work.path().join("worker.log");
    let status = mmt(&queue, &receiver.endpoint)
        .args([
            "run",
            "--source",
            "rabbitmq",
            "--no-progress",
            "--idle-exit",
            "3",
        ])
        .arg("--out")
        .arg(work.path().join("out"))
        .env("DATABASE_URL", schema.url())
        .env("FHIR_SERVER_URL", fhir.base())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("worker log"))
        .status()
        .expect("mmt run");
    let log = std::fs::read_to_string(&log).expect("read the worker log");
    assert!(status.success(), "{log}");
    // Both processes flushed their spans at exit.
    let spans = receiver.spans();
    assert!(
        receiver.refused.lock().expect("refusals").is_empty(),
        "{:?}",
        receiver.refused
    );

    // The trace starts at `mmt submit`.
    let submit: Vec<&Span> = spans.iter().filter(|s| s.name == "submit").collect();
    assert_eq!(submit.len(), 1, "{spans:#?}");
    let submit = submit[0];
    let trace = submit.trace_id.clone();
    assert!(
        submit.service.contains("mmt-otel-test"),
        "{}",
        submit.service
    );

    // Every stage of the worker continues it across the broker hop.
    for stage in ["dedupe", "decode", "chunk", "assemble"] {
        let span = one(&spans, stage, &trace);
        assert_eq!(
            span.parent_span_id, submit.span_id,
            "{stage} follows submit"
        );
    }
    // One batch per chunk (a dictation of under 30 s has one), each linked
    // to the job.
    let batches: Vec<&Span> = spans.iter().filter(|s| s.name == "infer_batch").collect();
    assert!(!batches.is_empty(), "{spans:#?}");
    for batch in batches {
        assert_eq!(batch.trace_id, trace);
        assert!(
            batch
                .links
                .iter()
                .any(|(t, s)| *t == trace && *s == submit.span_id),
            "the batch links to the job: {batch:?}"
        );
    }
    let commit = one(&spans, "commit", &trace);
    let request = one(&spans, "fhir_request", &trace);
    assert_eq!(request.parent_span_id, commit.span_id);

    // The FHIR server was told the request's span.
    let requests = fhir.requests();
    let created: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(created.len(), 1, "one document created");
    assert_eq!(
        created[0].header("traceparent"),
        Some(format!("00-{trace}-{}-01", request.span_id).as_str())
    );

    // The worker's log lines inside the job's spans carry its trace id.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let job_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["span"]["job"].is_string())
        .collect();
    assert!(
        job_lines
            .iter()
            .any(|line| line["fields"]["message"] == "job completed"),
        "{log}"
    );
    for line in &job_lines {
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    }

    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    JobSubmitter::connect(&config)
        .expect("submitter")
        .delete_queues()
        .expect("clean up");
    drop(schema);
}
