//! OpenTelemetry, configured with the standard `OTEL_*` variables
//! (OpenTelemetry specification, "Environment Variable Specification"), with the
//! specification's defaults.

use std::time::Duration;

use serde::{Serialize, Serializer};

use super::net::HttpUrl;
use super::secret::Secret;
use super::vars::{Echo, Vars};
use super::{Environment, Problem};

const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
const OTEL_LOGS_EXPORTER: &str = "OTEL_LOGS_EXPORTER";
const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const OTEL_PROPAGATORS: &str = "OTEL_PROPAGATORS";
const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";

/// The `OTEL_*` variables this configuration reads.
pub(super) const VARIABLES: &[&str] = &[
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_TRACES_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_LOGS_EXPORTER,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
    OTEL_PROPAGATORS,
    OTEL_METRIC_EXPORT_INTERVAL,
];

/// Declares a string-valued enum: its variants, their spellings, and `parse`.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every accepted spelling, for problem messages.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// Parses one spelling (case-insensitive).
            pub fn parse(value: &str) -> Option<Self> {
                match value.trim().to_ascii_lowercase().as_str() {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The specification's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    OtlpProtocol {
        /// OTLP over gRPC (port 4317 by convention).
        Grpc = "grpc",
        /// OTLP over HTTP with protobuf bodies (port 4318): the specification's default.
        HttpProtobuf = "http/protobuf",
        /// OTLP over HTTP with JSON bodies (port 4318).
        HttpJson = "http/json",
    }
}

named_enum! {
    /// One entry of `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` or `OTEL_LOGS_EXPORTER`.
    Exporter {
        /// OTLP, to `OTEL_EXPORTER_OTLP_ENDPOINT`.
        Otlp = "otlp",
        /// Zipkin (traces only).
        Zipkin = "zipkin",
        /// A Prometheus scrape endpoint (metrics only).
        Prometheus = "prometheus",
        /// Standard output, for debugging.
        Console = "console",
        /// No exporter.
        None = "none",
    }
}

named_enum! {
    /// `OTEL_TRACES_SAMPLER`.
    Sampler {
        /// Sample every trace.
        AlwaysOn = "always_on",
        /// Sample no trace.
        AlwaysOff = "always_off",
        /// Sample the fraction `OTEL_TRACES_SAMPLER_ARG` of traces.
        TraceIdRatio = "traceidratio",
        /// Follow the parent; sample roots: the specification's default.
        ParentBasedAlwaysOn = "parentbased_always_on",
        /// Follow the parent; drop roots.
        ParentBasedAlwaysOff = "parentbased_always_off",
        /// Follow the parent; sample the fraction `OTEL_TRACES_SAMPLER_ARG` of roots.
        ParentBasedTraceIdRatio = "parentbased_traceidratio",
        /// Jaeger remote sampling.
        JaegerRemote = "jaeger_remote",
        /// Follow the parent; Jaeger remote sampling for roots.
        ParentBasedJaegerRemote = "parentbased_jaeger_remote",
        /// AWS X-Ray centralized sampling.
        Xray = "xray",
    }
}

impl Sampler {
    /// Whether `OTEL_TRACES_SAMPLER_ARG` is a sampling ratio for this sampler.
    pub fn takes_ratio(self) -> bool {
        matches!(self, Self::TraceIdRatio | Self::ParentBasedTraceIdRatio)
    }

    /// Whether `OTEL_TRACES_SAMPLER_ARG` means anything to this sampler.
    pub fn takes_arg(self) -> bool {
        self.takes_ratio() || matches!(self, Self::JaegerRemote | Self::ParentBasedJaegerRemote)
    }
}

named_enum! {
    /// One entry of `OTEL_PROPAGATORS`.
    Propagator {
        /// W3C Trace Context.
        TraceContext = "tracecontext",
        /// W3C Baggage.
        Baggage = "baggage",
        /// B3 single header.
        B3 = "b3",
        /// B3 multiple headers.
        B3Multi = "b3multi",
        /// Jaeger.
        Jaeger = "jaeger",
        /// AWS X-Ray.
        Xray = "xray",
        /// OpenTracing.
        OtTrace = "ottrace",
        /// No propagation.
        None = "none",
    }
}

/// OpenTelemetry settings.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// `OTEL_SDK_DISABLED`: turn all OpenTelemetry signals off. Default `false`.
    pub sdk_disabled: bool,
    /// `OTEL_SERVICE_NAME`: the `service.name` resource attribute; when unset,
    /// `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, else `mmt`.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: extra resource attributes, `key=value` pairs
    /// separated by commas, values percent-decoded.
    #[serde(serialize_with = "serialize_pairs")]
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector; unset means the specification's
    /// default for the protocol (`http://localhost:4318`, or `:4317` for gRPC).
    pub otlp_endpoint: Option<HttpUrl>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`, `http/protobuf` (default) or `http/json`.
    pub otlp_protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: headers sent with every export, `key=value`
    /// pairs; they usually carry an API key, so never printed.
    pub otlp_headers: Option<Secret>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`: per-export timeout, in milliseconds. Default 10000.
    #[serde(serialize_with = "super::serialize_seconds")]
    pub otlp_timeout: Duration,
    /// `OTEL_TRACES_EXPORTER`: comma-separated trace exporters. Default `otlp`.
    pub traces_exporter: Vec<Exporter>,
    /// `OTEL_METRICS_EXPORTER`: comma-separated metric exporters. Default `otlp`.
    /// (The Prometheus `/metrics` endpoint is served regardless.)
    pub metrics_exporter: Vec<Exporter>,
    /// `OTEL_LOGS_EXPORTER`: comma-separated log exporters. Default `otlp`.
    pub logs_exporter: Vec<Exporter>,
    /// `OTEL_TRACES_SAMPLER`: the sampler. Default `parentbased_always_on`.
    pub traces_sampler: Sampler,
    /// `OTEL_TRACES_SAMPLER_ARG`: the sampler's argument; for the ratio samplers a
    /// number from 0 to 1 (default 1.0).
    pub traces_sampler_arg: Option<String>,
    /// `OTEL_PROPAGATORS`: comma-separated context propagators. Default
    /// `tracecontext,baggage`.
    pub propagators: Vec<Propagator>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: time between metric exports, in milliseconds.
    /// Default 60000.
    #[serde(serialize_with = "super::serialize_seconds")]
    pub metric_export_interval: Duration,
}

impl TelemetryConfig {
    /// The service name used when neither variable names one.
    pub const DEFAULT_SERVICE_NAME: &'static str = "mmt";

    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        let resource_attributes = vars
            .parse(
                OTEL_RESOURCE_ATTRIBUTES,
                "key=value pairs separated by commas, values percent-encoded",
                Echo::Value,
                parse_pairs,
            )
            .unwrap_or_default();
        let service_name = vars
            .text(OTEL_SERVICE_NAME)
            .or_else(|| lookup(&resource_attributes, "service.name"))
            .unwrap_or_else(|| Self::DEFAULT_SERVICE_NAME.to_owned());
        Self {
            sdk_disabled: vars.bool(OTEL_SDK_DISABLED, false),
            service_name,
            resource_attributes,
            otlp_endpoint: vars.parse(
                OTEL_EXPORTER_OTLP_ENDPOINT,
                HttpUrl::EXPECTED,
                Echo::Never,
                HttpUrl::parse,
            ),
            otlp_protocol: one_of(
                vars,
                OTEL_EXPORTER_OTLP_PROTOCOL,
                OtlpProtocol::NAMES,
                OtlpProtocol::parse,
            )
            .unwrap_or(OtlpProtocol::HttpProtobuf),
            otlp_headers: vars.parse(
                OTEL_EXPORTER_OTLP_HEADERS,
                "key=value pairs separated by commas",
                Echo::Never,
                |s| parse_pairs(s).map(|_| Secret::new(s)),
            ),
            otlp_timeout: vars.millis(OTEL_EXPORTER_OTLP_TIMEOUT, Duration::from_secs(10)),
            traces_exporter: list_of(
                vars,
                OTEL_TRACES_EXPORTER,
                &[Exporter::Otlp],
                &[
                    Exporter::Otlp,
                    Exporter::Zipkin,
                    Exporter::Console,
                    Exporter::None,
                ],
            ),
            metrics_exporter: list_of(
                vars,
                OTEL_METRICS_EXPORTER,
                &[Exporter::Otlp],
                &[
                    Exporter::Otlp,
                    Exporter::Prometheus,
                    Exporter::Console,
                    Exporter::None,
                ],
            ),
            logs_exporter: list_of(
                vars,
                OTEL_LOGS_EXPORTER,
                &[Exporter::Otlp],
                &[Exporter::Otlp, Exporter::Console, Exporter::None],
            ),
            traces_sampler: one_of(vars, OTEL_TRACES_SAMPLER, Sampler::NAMES, Sampler::parse)
                .unwrap_or(Sampler::ParentBasedAlwaysOn),
            traces_sampler_arg: vars.text(OTEL_TRACES_SAMPLER_ARG),
            propagators: propagators(vars),
            metric_export_interval: vars
                .millis(OTEL_METRIC_EXPORT_INTERVAL, Duration::from_secs(60)),
        }
    }

    /// The OTLP endpoint to export to: the configured one, else the specification's
    /// default for the protocol. It may carry credentials: do not log it.
    pub fn effective_otlp_endpoint(&self) -> &str {
        match (&self.otlp_endpoint, self.otlp_protocol) {
            (Some(url), _) => url.as_str(),
            (None, OtlpProtocol::Grpc) => "http://localhost:4317",
            (None, _) => "http://localhost:4318",
        }
    }

    /// The trace sampling ratio, for the ratio samplers: `OTEL_TRACES_SAMPLER_ARG`
    /// when valid, else 1.0.
    pub fn sampling_ratio(&self) -> f64 {
        self.traces_sampler_arg
            .as_deref()
            .and_then(parse_ratio)
            .unwrap_or(1.0)
    }

    /// Where traces are posted (OTLP/HTTP, protobuf), or `None` when they are
    /// not exported: the SDK is disabled, `OTEL_TRACES_EXPORTER` lacks `otlp`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is unset (tracing stays off rather than
    /// posting to the specification's localhost default), or the protocol or
    /// scheme is one this build does not speak (see `validate`).
    pub fn otlp_traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint.as_ref()?;
        let exports = !self.sdk_disabled
            && self.traces_exporter.contains(&Exporter::Otlp)
            && self.otlp_protocol == OtlpProtocol::HttpProtobuf
            && !endpoint.is_https();
        // The specification's signal path, appended to the base URL.
        exports.then(|| format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/')))
    }

    /// Whether any signal exports over OTLP.
    pub fn exports_otlp(&self) -> bool {
        !self.sdk_disabled
            && [
                &self.traces_exporter,
                &self.metrics_exporter,
                &self.logs_exporter,
            ]
            .iter()
            .any(|list| list.contains(&Exporter::Otlp))
    }

    pub(super) fn validate(&self, env: Environment, out: &mut Vec<Problem>) {
        self.validate_sampler(out);
        self.validate_trace_export(out);
        self.validate_endpoint(env, out);
        for (variable, list) in [
            (OTEL_TRACES_EXPORTER, &self.traces_exporter),
            (OTEL_METRICS_EXPORTER, &self.metrics_exporter),
            (OTEL_LOGS_EXPORTER, &self.logs_exporter),
        ] {
            if list.len() > 1 && list.contains(&Exporter::None) {
                out.push(Problem::warning(
                    variable,
                    "combines none with other exporters; none should stand alone",
                ));
            }
        }
    }

    fn validate_sampler(&self, out: &mut Vec<Problem>) {
        let Some(arg) = &self.traces_sampler_arg else {
            return;
        };
        if self.traces_sampler.takes_ratio() && parse_ratio(arg).is_none() {
            out.push(Problem::fatal(
                OTEL_TRACES_SAMPLER_ARG,
                format!(
                    "expected a sampling ratio from 0 to 1 for OTEL_TRACES_SAMPLER={} \
                     (the value is not shown)",
                    self.traces_sampler.as_str()
                ),
            ));
        } else if !self.traces_sampler.takes_arg() {
            out.push(Problem::warning(
                OTEL_TRACES_SAMPLER_ARG,
                format!(
                    "is ignored by OTEL_TRACES_SAMPLER={}",
                    self.traces_sampler.as_str()
                ),
            ));
        }
    }

    /// Trace export speaks OTLP/HTTP with protobuf bodies over plain HTTP (a
    /// collector or agent beside the worker): anything else turns it off.
    fn validate_trace_export(&self, out: &mut Vec<Problem>) {
        let Some(endpoint) = &self.otlp_endpoint else {
            return;
        };
        if self.sdk_disabled || !self.traces_exporter.contains(&Exporter::Otlp) {
            return;
        }
        if self.otlp_protocol != OtlpProtocol::HttpProtobuf {
            out.push(Problem::warning(
                OTEL_EXPORTER_OTLP_PROTOCOL,
                format!(
                    "traces are exported with http/protobuf only; with {} they are not exported",
                    self.otlp_protocol.as_str()
                ),
            ));
        }
        if endpoint.is_https() {
            out.push(Problem::warning(
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "is https: traces are exported over plain HTTP only (to a collector on the \
                 host or in the pod); they are not exported",
            ));
        }
        if self
            .traces_exporter
            .iter()
            .any(|e| !matches!(e, Exporter::Otlp | Exporter::None))
        {
            out.push(Problem::warning(
                OTEL_TRACES_EXPORTER,
                "only otlp is exported; the other trace exporters are ignored",
            ));
        }
        if matches!(
            self.traces_sampler,
            Sampler::JaegerRemote | Sampler::ParentBasedJaegerRemote | Sampler::Xray
        ) {
            out.push(Problem::warning(
                OTEL_TRACES_SAMPLER,
                "is not available in this build; parentbased_always_on is used",
            ));
        }
    }

    fn validate_endpoint(&self, env: Environment, out: &mut Vec<Problem>) {
        if let Some(url) = &self.otlp_endpoint {
            let expected_port = match self.otlp_protocol {
                OtlpProtocol::Grpc => 4318,
                OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => 4317,
            };
            if url.port() == expected_port {
                out.push(Problem::warning(
                    OTEL_EXPORTER_OTLP_ENDPOINT,
                    format!(
                        "uses port {expected_port}, the conventional port of the other OTLP \
                         protocol; check OTEL_EXPORTER_OTLP_PROTOCOL={}",
                        self.otlp_protocol.as_str()
                    ),
                ));
            }
        } else if env.is_prod() && self.exports_otlp() {
            out.push(Problem::warning(
                OTEL_EXPORTER_OTLP_ENDPOINT,
                "not set in prod: telemetry goes to a collector on localhost; set the \
                 collector's URL, or OTEL_SDK_DISABLED=true",
            ));
        }
    }
}

/// A variable holding one of `names`.
fn one_of<T>(
    vars: &mut Vars,
    variable: &'static str,
    names: &[&str],
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    vars.parse(
        variable,
        &format!("one of {}", names.join(", ")),
        Echo::Value,
        parse,
    )
}

/// A comma-separated list of exporters drawn from `allowed`.
fn list_of(
    vars: &mut Vars,
    variable: &'static str,
    default: &[Exporter],
    allowed: &[Exporter],
) -> Vec<Exporter> {
    let names: Vec<&str> = allowed.iter().map(|e| e.as_str()).collect();
    let expected = format!("a comma-separated list of {}", names.join(", "));
    vars.parse(variable, &expected, Echo::Value, |s| {
        s.split(',')
            .map(|item| Exporter::parse(item).filter(|e| allowed.contains(e)))
            .collect()
    })
    .unwrap_or_else(|| default.to_vec())
}

fn propagators(vars: &mut Vars) -> Vec<Propagator> {
    let expected = format!("a comma-separated list of {}", Propagator::NAMES.join(", "));
    vars.parse(OTEL_PROPAGATORS, &expected, Echo::Value, |s| {
        s.split(',').map(Propagator::parse).collect()
    })
    .unwrap_or_else(|| vec![Propagator::TraceContext, Propagator::Baggage])
}

fn parse_ratio(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
}

/// `key=value,key=value` (W3C Baggage style): keys trimmed and non-empty, values
/// trimmed and percent-decoded; empty items are skipped.
fn parse_pairs(value: &str) -> Option<Vec<(String, String)>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (key, value) = item.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then_some(())?;
            Some((key.to_owned(), percent_decode(value.trim())?))
        })
        .collect()
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn lookup(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn serialize_pairs<S: Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_split_trimmed_and_decoded() {
        assert_eq!(
            parse_pairs("service.name=mmt, deployment.environment = prod%20eu ,,"),
            Some(vec![
                ("service.name".into(), "mmt".into()),
                ("deployment.environment".into(), "prod eu".into()),
            ])
        );
        for bad in ["novalue", "=v", "k=%zz", "k=%4"] {
            assert_eq!(parse_pairs(bad), None, "{bad}");
        }
    }

    #[test]
    fn spellings_are_case_insensitive() {
        assert_eq!(
            OtlpProtocol::parse("HTTP/Protobuf"),
            Some(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(Sampler::parse("TraceIdRatio"), Some(Sampler::TraceIdRatio));
        assert_eq!(Sampler::parse("sometimes"), None);
    }
}
