//! W3C trace context for jobs: how a job's spans join the trace its submitter
//! started (the `traceparent` a job carries from HTTP or the broker), and the
//! `traceparent` that outgoing calls and events send on.
//!
//! Spans are `tracing` spans; when the binary installs the OpenTelemetry layer
//! (`src/otel.rs`) they become OpenTelemetry spans. Without that layer every
//! function here is a no-op and [`current_trace_parent`] is `None`, so callers
//! keep their behaviour of before.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::input::is_trace_parent;

/// The header (and AMQP/Kafka header) name of W3C Trace Context.
pub const TRACE_PARENT_HEADER: &str = "traceparent";

/// The remote span context of a `traceparent` of version 00; `None` when it is
/// malformed (the header is client input: a bad one starts a new trace).
pub fn parse_trace_parent(value: &str) -> Option<SpanContext> {
    if !is_trace_parent(value) {
        return None;
    }
    let mut parts = value.split('-').skip(1);
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        // Only the sampled bit is defined for version 00.
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` naming `context`, or `None` for an invalid context.
pub fn format_trace_parent(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` (not yet entered) a child of the span `trace_parent` names, so
/// that a job's stages all land in its submitter's trace. Nothing happens
/// without a valid `traceparent`: the span then keeps its `tracing` parent.
pub fn continue_trace(span: &tracing::Span, trace_parent: Option<&str>) {
    let Some(parent) = trace_parent.and_then(parse_trace_parent) else {
        return;
    };
    let context = opentelemetry::Context::new().with_remote_span_context(parent);
    // An error means the span was already started or is disabled: it then
    // stays where it is, which only loses the link to the job's trace.
    let _ = span.set_parent(context);
}

/// Links `span` to the trace of every job it works for (an inference batch
/// carries chunks of several jobs, each job in its own trace).
pub fn link_jobs<'a>(span: &tracing::Span, trace_parents: impl IntoIterator<Item = &'a str>) {
    for context in trace_parents.into_iter().filter_map(parse_trace_parent) {
        span.add_link(context);
    }
}

/// The `traceparent` of the current span, for a request or message sent from
/// inside it; `None` when no OpenTelemetry span is current.
pub fn current_trace_parent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    format_trace_parent(span.span_context())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trace_parent_round_trips() {
        let context = parse_trace_parent(PARENT).expect("valid");
        assert!(context.is_remote());
        assert!(context.is_sampled());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format_trace_parent(&context).as_deref(), Some(PARENT));
    }

    #[test]
    fn malformed_trace_parents_start_no_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_trace_parent(bad).is_none(), "{bad}");
        }
        assert_eq!(format_trace_parent(&SpanContext::empty_context()), None);
    }

    #[test]
    fn unknown_flags_are_dropped() {
        let context = parse_trace_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff")
            .expect("valid");
        assert_eq!(context.trace_flags(), TraceFlags::SAMPLED);
    }

    #[test]
    fn without_the_layer_there_is_no_current_trace_parent() {
        let span = tracing::info_span!("stage");
        continue_trace(&span, Some(PARENT));
        let _entered = span.entered();
        assert_eq!(current_trace_parent(), None);
    }
}
