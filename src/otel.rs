//! OpenTelemetry traces: the tracer behind the `tracing` spans of every command,
//! its OTLP/HTTP exporter configured by the standard `OTEL_*` variables, and
//! the trace and span ids in the JSON log lines.
//!
//! The tracer is on unless `OTEL_SDK_DISABLED=true`: the spans of a job then
//! continue the `traceparent` it came with, log lines carry their ids, and
//! the FHIR request and the job's events send a `traceparent` on. Spans leave
//! the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! ([`TelemetryConfig::otlp_traces_url`]); they are exported in batches from
//! a thread of the SDK's, so a slow or absent collector never holds the
//! dataflow (a full queue drops spans), and flushed when the command ends.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mmt_pipeline::config::{Sampler, TelemetryConfig};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The instrumentation scope of the spans.
const SCOPE: &str = "mmt";

/// How long the flush at exit may take: past it, the remaining spans are lost
/// rather than holding a stopping worker.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Owns the tracer provider; dropping it flushes the spans not yet exported.
#[derive(Debug)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                eprintln!("mmt: flushing traces at exit failed: {err}");
            }
        }
    }
}

/// The tracer for the `tracing-opentelemetry` layer (`None` when
/// `OTEL_SDK_DISABLED=true`), and the guard that flushes it. Runs before
/// logging is up, so problems go to stderr; they never stop the command.
pub fn tracer(config: &TelemetryConfig) -> (Option<SdkTracer>, Tracing) {
    if config.sdk_disabled {
        return (None, Tracing { provider: None });
    }
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(config))
        .with_resource(resource(config));
    if let Some(url) = config.otlp_traces_url() {
        match exporter(url, config.otlp_timeout) {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            // Not the error itself: it may quote the endpoint, and with it
            // credentials.
            Err(_) => eprintln!(
                "mmt: traces are not exported: no OTLP exporter could be built from \
                 OTEL_EXPORTER_OTLP_* (mmt check validates them)"
            ),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(SCOPE);
    (
        Some(tracer),
        Tracing {
            provider: Some(provider),
        },
    )
}

/// The OTLP/HTTP (protobuf) span exporter. Headers (`OTEL_EXPORTER_OTLP_HEADERS`)
/// are read by the exporter itself.
fn exporter(
    url: String,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, Box<dyn std::error::Error>> {
    let client = RuntimeClient::new(timeout)?;
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(timeout)
        .build()?)
}

fn sampler(config: &TelemetryConfig) -> SdkSampler {
    let ratio = config.sampling_ratio();
    let parent_based = |root: SdkSampler| SdkSampler::ParentBased(Box::new(root));
    match config.traces_sampler {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio => SdkSampler::TraceIdRatioBased(ratio),
        Sampler::ParentBasedAlwaysOff => parent_based(SdkSampler::AlwaysOff),
        Sampler::ParentBasedTraceIdRatio => parent_based(SdkSampler::TraceIdRatioBased(ratio)),
        // Remote samplers are not built in (`mmt check` says so).
        Sampler::ParentBasedAlwaysOn
        | Sampler::JaegerRemote
        | Sampler::ParentBasedJaegerRemote
        | Sampler::Xray => parent_based(SdkSampler::AlwaysOn),
    }
}

fn resource(config: &TelemetryConfig) -> Resource {
    // The SDK's own attributes (telemetry.sdk.*), then the configured ones.
    Resource::builder()
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// hyper's client on a small runtime of its own: the SDK's export thread runs
/// no tokio runtime, and the commands that have one must not lend it (a stuck
/// collector would then hold their work).
struct RuntimeClient {
    client: HyperClient,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Whether the last export failed: failures are logged when they start
    /// and end, not once per batch.
    failing: AtomicBool,
}

impl RuntimeClient {
    fn new(timeout: Duration) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        Ok(Self {
            client: HyperClient::with_default_connector(timeout, None),
            runtime: Some(runtime),
            failing: AtomicBool::new(false),
        })
    }

    /// Logs a change between exporting and failing to (the SDK itself is
    /// built without its internal logs). Names no URL.
    fn report(&self, outcome: &Result<Response<Bytes>, HttpError>) {
        let failing = !matches!(outcome, Ok(response) if response.status().is_success());
        if self.failing.swap(failing, Ordering::Relaxed) == failing {
            return;
        }
        match outcome {
            _ if !failing => tracing::info!("the OTLP collector accepts spans again"),
            Ok(response) => tracing::warn!(
                status = response.status().as_u16(),
                "the OTLP collector refuses spans; they are dropped until it accepts them"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "the OTLP collector is unreachable; spans are dropped until it is back"
            ),
        }
    }
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeClient").finish_non_exhaustive()
    }
}

impl Drop for RuntimeClient {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self.runtime.as_ref().ok_or("the export runtime is gone")?;
        let client = self.client.clone();
        let outcome = runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?;
        self.report(&outcome);
        outcome
    }
}

/// The JSON event format with the current span's `trace_id` and `span_id`
/// first in the line, for every event inside a traced span.
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The layer makes an entered span's context the current one (context
        // activation), so this is the span the event is in.
        let context = opentelemetry::Context::current();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() || ctx.lookup_current().is_none() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Collects what the log layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `body` under the subscriber `init_logging` builds (no exporter);
    /// returns the JSON log lines.
    fn logged(body: impl FnOnce()) -> Vec<serde_json::Value> {
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || writer.clone())
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE)))
            .with(logs);
        tracing::subscriber::with_default(subscriber, body);
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn a_stage_continues_the_jobs_trace_and_its_log_lines_say_so() {
        let mut sent = None;
        let lines = logged(|| {
            tracing::info!("outside any span");
            let span = tracing::info_span!("decode", job = "j1");
            mmt_core::trace::continue_trace(&span, Some(PARENT));
            let _entered = span.entered();
            sent = mmt_core::trace::current_trace_parent();
            tracing::info!("inside");
        });
        let sent = sent.expect("a traceparent for outgoing calls");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "a span of its own: {sent}"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span_id"].as_str(), sent.get(36..52));
        assert_eq!(lines[1]["fields"]["message"], "inside");
        assert_eq!(lines[1]["span"]["job"], "j1");
    }

    #[test]
    fn a_malformed_trace_parent_starts_a_new_trace() {
        let mut sent = None;
        logged(|| {
            let span = tracing::info_span!("decode");
            mmt_core::trace::continue_trace(&span, Some("00-not-a-trace-01"));
            let _entered = span.entered();
            sent = mmt_core::trace::current_trace_parent();
        });
        let sent = sent.expect("a root span still has a traceparent");
        assert!(mmt_core::input::is_trace_parent(&sent), "{sent}");
    }

    #[test]
    fn the_sampler_follows_the_variables() {
        let config = |vars: &[(&str, &str)]| {
            mmt_pipeline::config::Config::load_vars(
                vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .config
            .telemetry
        };
        assert!(matches!(sampler(&config(&[])), SdkSampler::ParentBased(_)));
        assert!(matches!(
            sampler(&config(&[("OTEL_TRACES_SAMPLER", "always_off")])),
            SdkSampler::AlwaysOff
        ));
        let ratio = sampler(&config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]));
        assert!(matches!(ratio, SdkSampler::TraceIdRatioBased(r) if (r - 0.25).abs() < 1e-9));
        let (tracer, _guard) = tracer(&config(&[("OTEL_SDK_DISABLED", "true")]));
        assert!(tracer.is_none());
    }
}
