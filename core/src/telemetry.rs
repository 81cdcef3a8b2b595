//! Every Prometheus metric MMT exports, registered in one place.
//!
//! Names are the ones operators already alert on (see `alerts/`); labels are
//! bounded (stage, class, route, status), never a patient or job id.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::io::Write;
use std::path::Path;

/// Buckets for work measured in seconds, from a short API call to a long dictation.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets for a job's whole stay, received to committed: from a short
/// dictation on an idle worker to a long one behind a backlog (the operators'
/// guide alerts on a p95 above 15 s).
const END_TO_END_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The process-wide metrics, ready to be scraped at `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// The broker's backlog: messages ready in the job queue, read from the
    /// broker (RabbitMQ) every few seconds by `mmt run`/`mmt serve` workers.
    pub transcription_queue_depth: IntGauge,
    /// Uploads `mmt serve` accepted that wait for the dataflow (embedded intake).
    pub async_task_queue_size: IntGauge,
    /// Speech chunks waiting for a model batch, summed over the workers.
    pub transcription_batch_pending_chunks: IntGauge,
    /// Jobs this process received and has not committed yet.
    pub transcription_jobs_in_flight: IntGauge,
    /// Wall time of one batched model call (several chunks of several jobs).
    pub transcription_duration_seconds: Histogram,
    /// A job's whole stay, from received to committed in every sink.
    pub transcription_end_to_end_duration_seconds: Histogram,
    /// Seconds of audio transcribed.
    pub transcribed_audio_seconds_total: IntCounter,
    /// REST request latency by route template and status code.
    pub api_request_duration_seconds: HistogramVec,
    /// Broker publishes that failed.
    pub publish_failures_total: IntCounter,
    /// Times a circuit breaker opened.
    pub breaker_open_total: IntCounter,
    /// Dead-letter reprocessor outcomes (`reprocessor_<outcome>_total`).
    pub reprocessor_attempts_total: IntCounter,
    pub reprocessor_succeeded_total: IntCounter,
    pub reprocessor_failed_total: IntCounter,
    pub reprocessor_exhausted_total: IntCounter,
    /// Dead letters parked for good (permanent, exhausted, or by an operator).
    pub reprocessor_parked_total: IntCounter,
    /// Vault secret refreshes that failed.
    pub vault_refresh_failures_total: IntCounter,
    /// Vault token renewals.
    pub vault_token_renew_success_total: IntCounter,
    pub vault_token_renew_failure_total: IntCounter,
    /// Records sent to the dead-letter queue, by pipeline stage and error class.
    pub dlq_messages_total: IntCounterVec,
    /// Records removed by the retention purge, by kind (job, audio, transcript, task).
    pub retention_purged_total: IntCounterVec,
    /// Jobs for which dedupe could not use the idempotency filter and relied on
    /// the job store alone, by reason (`check_failed`, `insert_failed`).
    pub idempotency_filter_fallback_total: IntCounterVec,
    /// 1 while the configured idempotency filter answers, 0 while it fails (or
    /// when none is configured).
    pub idempotency_filter_available: IntGauge,
    /// Model work by kind (`windows_encoded`, `decoder_calls`,
    /// `decoder_rows`, `decoder_tokens`, `fallback_windows`, `packs_split`,
    /// `packs_redone`): what the audio cost.
    pub model_work_total: IntCounterVec,
    /// Seconds inside the model's graphs, by stage (`encoder`, `decoder`),
    /// summed over workers: where a batch's time goes.
    pub model_compute_seconds_total: CounterVec,
    /// 1 while writes to a sink (`documents`, `audit`, `dead_letters`,
    /// `store`) fail transiently and the commit stage holds the source back.
    pub sink_outage: IntGaugeVec,
    /// Outages of a sink: one per run of transient failures, not per retry.
    pub sink_outage_total: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };

        let transcription_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "transcription_duration_seconds",
                "Wall time to transcribe one job",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(transcription_duration_seconds.clone()))?;
        let transcription_end_to_end_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "transcription_end_to_end_duration_seconds",
                "Wall time of one job from received to committed in every sink",
            )
            .buckets(END_TO_END_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(transcription_end_to_end_duration_seconds.clone()))?;
        let api_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "REST request latency")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "status"],
        )?;
        registry.register(Box::new(api_request_duration_seconds.clone()))?;

        Ok(Self {
            transcription_queue_depth: gauge(
                "transcription_queue_depth",
                "Messages ready in the broker's job queue, as the broker reports them",
            )?,
            async_task_queue_size: gauge(
                "async_task_queue_size",
                "Accepted uploads waiting for the transcription dataflow",
            )?,
            transcription_batch_pending_chunks: gauge(
                "transcription_batch_pending_chunks",
                "Speech chunks waiting for a model batch",
            )?,
            transcription_jobs_in_flight: gauge(
                "transcription_jobs_in_flight",
                "Jobs received and not yet committed",
            )?,
            transcription_duration_seconds,
            transcription_end_to_end_duration_seconds,
            transcribed_audio_seconds_total: counter(
                "transcribed_audio_seconds_total",
                "Seconds of audio transcribed",
            )?,
            api_request_duration_seconds,
            publish_failures_total: counter(
                "publish_failures_total",
                "Broker publishes that failed",
            )?,
            breaker_open_total: counter("breaker_open_total", "Times a circuit breaker opened")?,
            reprocessor_attempts_total: counter(
                "reprocessor_attempts_total",
                "Dead letters the reprocessor retried",
            )?,
            reprocessor_succeeded_total: counter(
                "reprocessor_succeeded_total",
                "Dead letters that succeeded on retry",
            )?,
            reprocessor_failed_total: counter(
                "reprocessor_failed_total",
                "Dead-letter retries that failed again",
            )?,
            reprocessor_exhausted_total: counter(
                "reprocessor_exhausted_total",
                "Dead letters that ran out of attempts",
            )?,
            reprocessor_parked_total: counter(
                "reprocessor_parked_total",
                "Dead letters parked: never retried again",
            )?,
            vault_refresh_failures_total: counter(
                "vault_refresh_failures_total",
                "Vault secret refreshes that failed",
            )?,
            vault_token_renew_success_total: counter(
                "vault_token_renew_success_total",
                "Vault token renewals that succeeded",
            )?,
            vault_token_renew_failure_total: counter(
                "vault_token_renew_failure_total",
                "Vault token renewals that failed",
            )?,
            dlq_messages_total: counter_vec(
                "dlq_messages_total",
                "Records sent to the dead-letter queue",
                &["stage", "class"],
            )?,
            retention_purged_total: counter_vec(
                "retention_purged_total",
                "Records removed by the retention purge",
                &["kind"],
            )?,
            idempotency_filter_fallback_total: counter_vec(
                "idempotency_filter_fallback_total",
                "Jobs deduplicated by the job store alone because the idempotency filter failed",
                &["reason"],
            )?,
            model_work_total: counter_vec(
                "model_work_total",
                "Model work done: windows encoded, decoder calls, rows and tokens, fallbacks, packs",
                &["kind"],
            )?,
            model_compute_seconds_total: {
                let metric = CounterVec::new(
                    Opts::new(
                        "model_compute_seconds_total",
                        "Seconds inside the encoder and decoder graphs, summed over workers",
                    ),
                    &["stage"],
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            idempotency_filter_available: gauge(
                "idempotency_filter_available",
                "Whether the idempotency filter answers (1) or is bypassed (0)",
            )?,
            sink_outage: {
                let metric = IntGaugeVec::new(
                    Opts::new(
                        "sink_outage",
                        "Whether writes to a sink are failing and the source is paused (1) or not (0)",
                    ),
                    &["sink"],
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            sink_outage_total: counter_vec(
                "sink_outage_total",
                "Sink outages (runs of transient write failures) the commit stage waited out",
                &["sink"],
            )?,
            registry,
        })
    }

    /// The registry, for exporters that gather it themselves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric family exported, with its name and type, including the
    /// labelled ones that have no child yet (which `Registry::gather` leaves
    /// out): the names `alerts/` may use (tests/alert_metrics.rs).
    pub fn families(&self) -> Vec<MetricFamily> {
        self.collectors()
            .iter()
            .flat_map(|collector| collector.collect())
            .collect()
    }

    /// A handle on each metric. The pattern names every field (no `..`), so a
    /// metric added to the struct must be added here too or this fails to
    /// compile.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let Self {
            registry: _,
            transcription_queue_depth,
            async_task_queue_size,
            transcription_batch_pending_chunks,
            transcription_jobs_in_flight,
            transcription_duration_seconds,
            transcription_end_to_end_duration_seconds,
            transcribed_audio_seconds_total,
            api_request_duration_seconds,
            publish_failures_total,
            breaker_open_total,
            reprocessor_attempts_total,
            reprocessor_succeeded_total,
            reprocessor_failed_total,
            reprocessor_exhausted_total,
            reprocessor_parked_total,
            vault_refresh_failures_total,
            vault_token_renew_success_total,
            vault_token_renew_failure_total,
            dlq_messages_total,
            retention_purged_total,
            idempotency_filter_fallback_total,
            idempotency_filter_available,
            model_work_total,
            model_compute_seconds_total,
            sink_outage,
            sink_outage_total,
        } = self;
        vec![
            Box::new(transcription_queue_depth.clone()),
            Box::new(async_task_queue_size.clone()),
            Box::new(transcription_batch_pending_chunks.clone()),
            Box::new(transcription_jobs_in_flight.clone()),
            Box::new(transcription_duration_seconds.clone()),
            Box::new(transcription_end_to_end_duration_seconds.clone()),
            Box::new(transcribed_audio_seconds_total.clone()),
            Box::new(api_request_duration_seconds.clone()),
            Box::new(publish_failures_total.clone()),
            Box::new(breaker_open_total.clone()),
            Box::new(reprocessor_attempts_total.clone()),
            Box::new(reprocessor_succeeded_total.clone()),
            Box::new(reprocessor_failed_total.clone()),
            Box::new(reprocessor_exhausted_total.clone()),
            Box::new(reprocessor_parked_total.clone()),
            Box::new(vault_refresh_failures_total.clone()),
            Box::new(vault_token_renew_success_total.clone()),
            Box::new(vault_token_renew_failure_total.clone()),
            Box::new(dlq_messages_total.clone()),
            Box::new(retention_purged_total.clone()),
            Box::new(idempotency_filter_fallback_total.clone()),
            Box::new(idempotency_filter_available.clone()),
            Box::new(model_work_total.clone()),
            Box::new(model_compute_seconds_total.clone()),
            Box::new(sink_outage.clone()),
            Box::new(sink_outage_total.clone()),
        ]
    }

    /// Records one batched model call and the audio it transcribed.
    pub fn record_transcription(&self, wall_seconds: f64, audio_seconds: f64) {
        self.transcription_duration_seconds.observe(wall_seconds);
        self.transcribed_audio_seconds_total
            .inc_by(audio_seconds.max(0.0).round() as u64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode_text(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered families into a Vec only fails on invalid metric data,
        // which registration already rejected.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Writes [`Self::encode_text`] to `path` for node_exporter's textfile
    /// collector (for processes that end before a scrape: CronJobs).
    ///
    /// Written to a temporary file beside `path`, synced, then renamed over
    /// it, so the collector reads the old file or the new one, never half of
    /// one. Name it `*.prom`: the collector reads only those.
    pub fn write_textfile(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
        })?;
        // A dot-name the collector skips (it reads `*.prom` only), unique per
        // process so two writers never share a temporary file.
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".{}.tmp", std::process::id()));
        let temporary = dir.join(temporary_name);
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(self.encode_text().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_names_operators_alert_on() {
        let metrics = Metrics::new().expect("metrics register");
        metrics.record_transcription(1.5, 30.0);
        metrics
            .api_request_duration_seconds
            .with_label_values(&["/v1/jobs", "202"])
            .observe(0.01);
        metrics
            .dlq_messages_total
            .with_label_values(&["decode", "user_input"])
            .inc();
        metrics
            .retention_purged_total
            .with_label_values(&["job"])
            .inc();
        metrics
            .idempotency_filter_fallback_total
            .with_label_values(&["check_failed"])
            .inc();
        metrics.sink_outage.with_label_values(&["store"]).set(0);
        metrics
            .sink_outage_total
            .with_label_values(&["store"])
            .inc();
        let text = metrics.encode_text();
        for name in [
            "transcription_queue_depth",
            "async_task_queue_size",
            "transcription_duration_seconds_bucket",
            "transcription_end_to_end_duration_seconds_bucket",
            "transcription_batch_pending_chunks",
            "transcription_jobs_in_flight",
            "api_request_duration_seconds_bucket",
            "publish_failures_total",
            "breaker_open_total",
            "reprocessor_attempts_total",
            "reprocessor_parked_total",
            "vault_refresh_failures_total",
            "vault_token_renew_success_total",
            "dlq_messages_total",
            "retention_purged_total",
            "idempotency_filter_fallback_total",
            "idempotency_filter_available",
            "sink_outage",
            "sink_outage_total",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        assert!(text.contains("transcribed_audio_seconds_total 30"));
    }

    #[test]
    fn families_lists_every_registered_metric_children_or_none() {
        let metrics = Metrics::new().expect("metrics register");
        // Each handle is in the registry: registering it again is refused.
        for collector in metrics.collectors() {
            let name = collector.desc()[0].fq_name.clone();
            assert!(
                matches!(
                    metrics.registry.register(collector),
                    Err(prometheus::Error::AlreadyReg)
                ),
                "{name} is not registered"
            );
        }
        let families = metrics.families();
        let names: Vec<&str> = families.iter().map(MetricFamily::name).collect();
        // A vec with no child yet, which gather() does not show.
        assert!(names.contains(&"dlq_messages_total"));
        assert!(!metrics.encode_text().contains("dlq_messages_total"));
        // Nothing gather() shows escapes families(), once the vecs have children.
        metrics
            .api_request_duration_seconds
            .with_label_values(&["/", "200"])
            .observe(0.1);
        metrics
            .dlq_messages_total
            .with_label_values(&["decode", "user_input"])
            .inc();
        metrics
            .retention_purged_total
            .with_label_values(&["job"])
            .inc();
        metrics
            .idempotency_filter_fallback_total
            .with_label_values(&["check_failed"])
            .inc();
        metrics
            .model_work_total
            .with_label_values(&["decoder_calls"])
            .inc();
        metrics
            .model_compute_seconds_total
            .with_label_values(&["decoder"])
            .inc_by(0.5);
        metrics.sink_outage.with_label_values(&["store"]).set(0);
        metrics
            .sink_outage_total
            .with_label_values(&["store"])
            .inc();
        for family in metrics.registry.gather() {
            assert!(
                names.contains(&family.name()),
                "{} is registered but not in families()",
                family.name()
            );
        }
        let histogram = families
            .iter()
            .find(|family| family.name() == "transcription_duration_seconds")
            .expect("histogram listed");
        assert_eq!(
            histogram.get_field_type(),
            prometheus::proto::MetricType::HISTOGRAM
        );
    }

    #[test]
    fn end_to_end_buckets_cover_half_a_second_to_ten_minutes() {
        let metrics = Metrics::new().expect("metrics register");
        metrics
            .transcription_end_to_end_duration_seconds
            .observe(12.0);
        let text = metrics.encode_text();
        assert!(text.contains("transcription_end_to_end_duration_seconds_bucket{le=\"0.5\"} 0"));
        assert!(text.contains("transcription_end_to_end_duration_seconds_bucket{le=\"15\"} 1"));
        assert!(text.contains("transcription_end_to_end_duration_seconds_bucket{le=\"600\"} 1"));
        assert!(text.contains("transcription_end_to_end_duration_seconds_count 1"));
    }

    #[test]
    fn the_textfile_holds_the_exposition_and_replaces_the_last_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mmt_retention.prom");
        let metrics = Metrics::new().expect("metrics register");
        metrics
            .retention_purged_total
            .with_label_values(&["job"])
            .inc_by(3);
        metrics.write_textfile(&path).expect("first write");
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first, metrics.encode_text());
        assert!(first.contains("retention_purged_total{kind=\"job\"} 3"));

        metrics
            .retention_purged_total
            .with_label_values(&["job"])
            .inc();
        metrics.write_textfile(&path).expect("second write");
        let second = std::fs::read_to_string(&path).expect("read");
        assert!(second.contains("retention_purged_total{kind=\"job\"} 4"));
        // Only the file itself is left: no temporary the collector could read.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("mmt_retention.prom")]);
    }

    #[test]
    fn a_textfile_that_cannot_be_written_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::new().expect("metrics register");
        let missing = dir.path().join("no-such-folder").join("mmt.prom");
        assert!(metrics.write_textfile(&missing).is_err());
        // Renaming onto a folder fails after the temporary file was written.
        let folder = dir.path().join("taken.prom");
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::write(folder.join("inside"), "x").expect("fill");
        assert!(metrics.write_textfile(&folder).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("taken.prom")]);
    }
}
