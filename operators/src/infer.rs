//! Batcher + inference: chunks of many jobs transcribed together on ONNX Runtime.
//!
//! Chunks are stashed under their capability and run through the model in
//! batches of up to `batch_size`: a full batch runs at once, a partial one when
//! the input frontier shows no more chunks can arrive for its epoch, or (with a
//! maximum batch wait) once its oldest chunk has waited that long. After each
//! batch the operator yields (re-activating itself), so that results flow to the
//! commit stage while later batches wait.
//!
//! The chunks of one job are transcribed in order, each prompted with the text
//! before it (Whisper's previous-text conditioning, worth several WER points on
//! long dictations); a batch therefore holds at most one chunk per job, and
//! batching happens across jobs. Without conditioning
//! (`condition_on_previous_text: false`) a job's chunks are independent: they
//! are spread over the workers and batched together, so one long recording
//! fills whole batches (as faster-whisper's batched pipeline does).

use crate::records::{route, ChunkResult, ChunkWork, Outcome};
use mmt_core::job::{unix_now, DeadLetter, JobId, Stage};
use mmt_core::telemetry::Metrics;
use mmt_core::trace::{continue_trace, link_jobs};
use mmt_core::Segment;
use mmt_whisper::{Engine, TranscribeOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Chunks taken per packed window when sizing a batch. Three 7 s dictations
/// fill a window; taking four per window gives the packer (first fit,
/// longest first) the choice to fill windows fuller. On the 50 eval
/// dictations at batch 4: 26 windows encoded with three, 18 with four.
const CHUNKS_PER_PACKED_WINDOW: usize = 4;

/// Transcribes chunks in cross-job batches; model failures become dead letters.
pub trait Transcribe<'scope> {
    /// `max_wait`: the longest a chunk waits for its batch to fill before a
    /// partial batch runs (`None`: until its epoch is complete).
    fn transcribe(
        self,
        engine: Engine,
        options: TranscribeOptions,
        max_wait: Option<Duration>,
        metrics: Metrics,
    ) -> (
        Stream<'scope, u64, Vec<ChunkResult>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> Transcribe<'scope> for Stream<'scope, u64, Vec<ChunkWork>> {
    fn transcribe(
        self,
        mut engine: Engine,
        options: TranscribeOptions,
        max_wait: Option<Duration>,
        metrics: Metrics,
    ) -> (
        Stream<'scope, u64, Vec<ChunkResult>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        let scope = self.scope();
        // With packing, several short chunks share a window: take more chunks
        // per batch so the batch still fills `batch_size` windows.
        let batch_size = options.batch_size.max(1)
            * if options.packing {
                CHUNKS_PER_PACKED_WINDOW
            } else {
                1
            };
        let independent = !options.condition_on_previous_text;
        // Conditioned chunks stay with their job's worker (dedupe routed the
        // job there), in order; independent ones go wherever there is room.
        let pact = Exchange::new(move |work: &ChunkWork| {
            let job = route(&work.meta.id);
            if independent {
                job.wrapping_add(u64::from(work.seq))
            } else {
                job
            }
        });
        let results: Stream<'scope, u64, Vec<Result<ChunkResult, Outcome>>> =
            self.unary_frontier(pact, "Transcribe", move |_capability, info| {
                let activator = scope.activator_for(info.address);
                // Each chunk with its capability and when it arrived (for the batch wait).
                let mut pending: Vec<(Capability<u64>, ChunkWork, Instant)> = Vec::new();
                let mut jobs: HashMap<JobId, JobProgress> = HashMap::new();
                // This worker's share of the gauge, which sums every worker's.
                let mut reported_pending: i64 = 0;
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        if let Some(capability) = capability.retain_least(0) {
                            let now = Instant::now();
                            pending
                                .extend(data.drain(..).map(|work| (capability.clone(), work, now)));
                        }
                    });
                    // Oldest epoch first, so a frontier-complete epoch flushes early.
                    pending.sort_by_key(|(capability, work, _)| (*capability.time(), work.seq));
                    let ready: Vec<usize> = (0..pending.len())
                        .filter(|&i| independent || is_next(&jobs, &pending[i].1))
                        .take(batch_size)
                        .collect();
                    let oldest_complete = ready
                        .first()
                        .is_some_and(|&i| !frontier.frontier().less_equal(pending[i].0.time()));
                    let waited = ready.iter().map(|&i| pending[i].2.elapsed()).max();
                    let waited_enough = match (max_wait, waited) {
                        (Some(limit), Some(waited)) => waited >= limit,
                        _ => false,
                    };
                    if ready.len() >= batch_size || oldest_complete || waited_enough {
                        let batch: Vec<_> = ready
                            .iter()
                            .rev()
                            .map(|&i| {
                                let (capability, work, _) = pending.swap_remove(i);
                                (capability, work)
                            })
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        for (capability, result) in
                            run_batch(&mut engine, &options, &metrics, &mut jobs, batch)
                        {
                            output.session(&capability).give(result);
                        }
                        if !pending.is_empty() {
                            activator.activate();
                        }
                    } else if let (Some(limit), Some(waited)) = (max_wait, waited) {
                        // Come back when the oldest ready chunk has waited long enough.
                        activator.activate_after(limit.saturating_sub(waited));
                    }
                    let now_pending = pending.len() as i64;
                    metrics
                        .transcription_batch_pending_chunks
                        .add(now_pending - reported_pending);
                    reported_pending = now_pending;
                }
            });
        results.ok_err(|result| result)
    }
}

type Tagged = (Capability<u64>, Result<ChunkResult, Outcome>);

/// How far a job's chunks have been transcribed, and the text context they leave.
#[derive(Debug, Default)]
struct JobProgress {
    next_seq: u32,
    context: Vec<u32>,
}

/// Whether `work` is its job's next chunk (chunks of a job go in order).
fn is_next(jobs: &HashMap<JobId, JobProgress>, work: &ChunkWork) -> bool {
    work.total == 0 || work.seq == jobs.get(&work.meta.id).map_or(0, |p| p.next_seq)
}

/// Records that `work` is done; forgets the job after its last chunk.
fn advance(jobs: &mut HashMap<JobId, JobProgress>, work: &ChunkWork, context: Vec<u32>) {
    if work.seq + 1 >= work.total {
        jobs.remove(&work.meta.id);
    } else {
        let progress = jobs.entry(work.meta.id.clone()).or_default();
        progress.next_seq = work.seq + 1;
        progress.context = context;
    }
}

/// Runs one batch; every chunk yields a result or, if the model failed, a dead letter.
fn run_batch(
    engine: &mut Engine,
    options: &TranscribeOptions,
    metrics: &Metrics,
    jobs: &mut HashMap<JobId, JobProgress>,
    batch: Vec<(Capability<u64>, ChunkWork)>,
) -> Vec<Tagged> {
    // Jobs without speech complete without the model.
    let (silent, speech): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, w)| w.total == 0);
    let mut out: Vec<Tagged> = silent
        .into_iter()
        .map(|(capability, work)| (capability, Ok(chunk_result(work, Vec::new()))))
        .collect();
    if speech.is_empty() {
        return out;
    }
    // One span for the batch, linked to every job it carries; it sits in the
    // first job's trace so that a job batched alone has all its spans in one.
    let span = tracing::info_span!("infer_batch", chunks = speech.len());
    let parents = || {
        speech
            .iter()
            .filter_map(|(_, w)| w.meta.trace_parent.as_deref())
    };
    continue_trace(&span, parents().next());
    link_jobs(&span, parents());
    let _span = span.entered();
    // A chunk's samples are read from the job's spool only now, so that
    // waiting chunks hold no audio.
    let mut loaded = Vec::with_capacity(speech.len());
    for (capability, work) in speech {
        match work.samples.read() {
            Ok(samples) => loaded.push((capability, work, samples)),
            Err(err) => {
                tracing::error!(error = %err, "reading a chunk's audio back failed");
                if options.condition_on_previous_text {
                    advance(jobs, &work, Vec::new());
                }
                let reason = format!("cannot read the decoded audio back: {err}");
                let class = mmt_core::ErrorClass::External { retryable: true };
                out.push((capability, Err(dead_letter(&work, class, reason))));
            }
        }
    }
    if loaded.is_empty() {
        return out;
    }
    let (speech, audio): (Vec<_>, Vec<Vec<f32>>) = loaded
        .into_iter()
        .map(|(capability, work, samples)| ((capability, work), samples))
        .unzip();
    let inputs: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let work_before = engine.work();
    let prompts: Vec<&[u32]> = speech
        .iter()
        .map(|(_, w)| {
            jobs.get(&w.meta.id)
                .map_or(&[][..], |p| p.context.as_slice())
        })
        .collect();
    let transcribed = engine.transcribe_continuing(&inputs, &prompts, options);
    for (kind, count) in engine.work().since(&work_before).labelled() {
        metrics
            .model_work_total
            .with_label_values(&[kind])
            .inc_by(count);
    }
    match transcribed {
        Ok(transcripts) => {
            let audio: f64 = speech
                .iter()
                .map(|(_, w)| w.samples.len() as f64 / 16_000.0)
                .sum();
            metrics.record_transcription(started.elapsed().as_secs_f64(), audio);
            for ((capability, work), continued) in speech.into_iter().zip(transcripts) {
                if options.condition_on_previous_text {
                    advance(jobs, &work, continued.context);
                }
                let segments = shift(
                    continued.transcript.segments,
                    work.offset_seconds,
                    work.job_seconds,
                );
                out.push((capability, Ok(chunk_result(work, segments))));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, chunks = speech.len(), "inference failed");
            for (capability, work) in speech {
                if options.condition_on_previous_text {
                    advance(jobs, &work, Vec::new());
                }
                let letter = dead_letter(&work, err.class(), err.to_string());
                out.push((capability, Err(letter)));
            }
        }
    }
    out
}

fn dead_letter(work: &ChunkWork, class: mmt_core::ErrorClass, reason: String) -> Outcome {
    Outcome::DeadLettered(DeadLetter {
        job_id: work.meta.id.clone(),
        tenant: work.meta.tenant.clone(),
        correlation_id: work.meta.correlation_id.clone(),
        stage: Stage::Inference,
        class,
        reason,
        attempts: 1,
        at: unix_now(),
    })
}

fn chunk_result(work: ChunkWork, segments: Vec<Segment>) -> ChunkResult {
    ChunkResult {
        meta: work.meta,
        seq: work.seq,
        total: work.total,
        job_seconds: work.job_seconds,
        segments,
    }
}

/// Moves chunk-relative segment times onto the job's timeline.
fn shift(segments: Vec<Segment>, offset: f64, job_seconds: f64) -> Vec<Segment> {
    segments
        .into_iter()
        .map(|mut segment| {
            segment.start = (segment.start + offset).min(job_seconds);
            segment.end = (segment.end + offset).min(job_seconds).max(segment.start);
            segment
        })
        .collect()
}
