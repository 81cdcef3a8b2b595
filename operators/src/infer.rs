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
//! long dictations); a batch therefore holds at most one chunk per stream, and
//! batching happens across streams and jobs. A long recording is cut into
//! several conditioned streams (`TranscribeOptions::stream_chunks`), runs of
//! consecutive chunks that are each conditioned on their own text only and
//! spread over the workers, so one long recording still fills batches. Where
//! the cuts fall depends on the recording alone, never on what else is being
//! transcribed, so the same audio gives the same text. Without conditioning
//! (`condition_on_previous_text: false`) a job's chunks are independent: they
//! are spread over the workers and batched together, so one long recording
//! fills whole batches (as faster-whisper's batched pipeline does).

use crate::records::{route, ChunkResult, ChunkWork, Outcome, Samples};
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
        // The chunks hold speech (the chunk stage's voice-activity detection
        // left silence out), so no window of them is dropped as silence.
        let options = options.for_speech_chunks();
        // With packing, several short chunks share a window: take more chunks
        // per batch so the batch still fills `batch_size` windows.
        let batch_size = options.batch_size.max(1)
            * if options.packing {
                CHUNKS_PER_PACKED_WINDOW
            } else {
                1
            };
        let independent = !options.condition_on_previous_text;
        let stream_chunks = options.stream_chunks;
        // A conditioned stream's chunks stay together on one worker, in
        // order; independent chunks go wherever there is room.
        let pact = Exchange::new(move |work: &ChunkWork| {
            let job = route(&work.meta.id);
            if independent {
                job.wrapping_add(u64::from(work.seq))
            } else {
                let (stream, _, _) = stream_bounds(work.seq, work.total, stream_chunks);
                job.wrapping_add(u64::from(stream))
            }
        });
        let results: Stream<'scope, u64, Vec<Result<ChunkResult, Outcome>>> =
            self.unary_frontier(pact, "Transcribe", move |_capability, info| {
                let activator = scope.activator_for(info.address);
                // Each chunk with its capability and when it arrived (for the batch wait).
                let mut pending: Vec<(Capability<u64>, ChunkWork, Instant)> = Vec::new();
                let mut streams: HashMap<StreamKey, StreamProgress> = HashMap::new();
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
                        .filter(|&i| independent || is_next(&streams, &pending[i].1, stream_chunks))
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
                            run_batch(&mut engine, &options, &metrics, &mut streams, batch)
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

/// One conditioned stream of a recording: a run of consecutive chunks decoded
/// in order, each prompted with the stream's text so far.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamKey {
    job: JobId,
    stream: u32,
    /// The stream's first chunk.
    first_seq: u32,
    /// One past the stream's last chunk.
    end_seq: u32,
}

impl StreamKey {
    fn of(work: &ChunkWork, stream_chunks: u32) -> Self {
        let (stream, first_seq, end_seq) = stream_bounds(work.seq, work.total, stream_chunks);
        Self {
            job: work.meta.id.clone(),
            stream,
            first_seq,
            end_seq,
        }
    }
}

/// The stream of chunk `seq` of a recording of `total` chunks: its number and
/// its chunks `first..end`. The recording is cut into `ceil(total /
/// stream_chunks)` streams of near-equal length (16 chunks at 6 per stream:
/// 6, 5, 5, not 6, 6, 4); `stream_chunks` 0 keeps one stream.
fn stream_bounds(seq: u32, total: u32, stream_chunks: u32) -> (u32, u32, u32) {
    let total = u64::from(total.max(1));
    let seq = u64::from(seq).min(total - 1);
    let count = match u64::from(stream_chunks) {
        0 => 1,
        per_stream => total.div_ceil(per_stream),
    };
    // Stream k holds chunks ceil(k·total/count) .. ceil((k+1)·total/count);
    // a chunk's stream is therefore floor(seq·count/total).
    let start = |k: u64| (k * total).div_ceil(count) as u32;
    let stream = seq * count / total;
    (stream as u32, start(stream), start(stream + 1))
}

/// How far a stream's chunks have been transcribed, and the text context they leave.
#[derive(Debug, Default)]
struct StreamProgress {
    next_seq: u32,
    context: Vec<u32>,
}

/// Whether `work` is its stream's next chunk (chunks of a stream go in order).
fn is_next(
    streams: &HashMap<StreamKey, StreamProgress>,
    work: &ChunkWork,
    stream_chunks: u32,
) -> bool {
    let key = StreamKey::of(work, stream_chunks);
    work.total == 0 || work.seq == streams.get(&key).map_or(key.first_seq, |p| p.next_seq)
}

/// Records that `work` is done; forgets the stream after its last chunk.
fn advance(
    streams: &mut HashMap<StreamKey, StreamProgress>,
    work: &ChunkWork,
    stream_chunks: u32,
    context: Vec<u32>,
) {
    let key = StreamKey::of(work, stream_chunks);
    if work.seq + 1 >= key.end_seq {
        streams.remove(&key);
    } else {
        let progress = streams.entry(key).or_default();
        progress.next_seq = work.seq + 1;
        progress.context = context;
    }
}

/// The stream that `work` starts and the chunk before it, when it needs a
/// lead-in: a conditioned stream that begins mid-recording has no text of its
/// own before it, so the chunk before it is decoded first (its text stays the
/// other stream's) and prompts the stream's first chunk as long-form decoding
/// would have.
fn lead_in<'w>(
    streams: &HashMap<StreamKey, StreamProgress>,
    work: &'w ChunkWork,
    options: &TranscribeOptions,
) -> Option<(StreamKey, &'w Samples)> {
    let key = StreamKey::of(work, options.stream_chunks);
    let preceding = work.preceding.as_ref()?;
    let starts = options.condition_on_previous_text
        && key.stream > 0
        && work.seq == key.first_seq
        && !streams.contains_key(&key);
    starts.then_some((key, preceding))
}

/// Decodes the lead-in chunks (alone: no prompt) and keeps each one's text as
/// its stream's context.
fn decode_lead_ins(
    engine: &mut Engine,
    options: &TranscribeOptions,
    streams: &mut HashMap<StreamKey, StreamProgress>,
    lead_ins: Vec<(StreamKey, Vec<f32>)>,
) -> Result<(), mmt_whisper::WhisperError> {
    if lead_ins.is_empty() {
        return Ok(());
    }
    let inputs: Vec<&[f32]> = lead_ins.iter().map(|(_, audio)| audio.as_slice()).collect();
    let prompts = vec![&[][..]; inputs.len()];
    let decoded = engine.transcribe_continuing(&inputs, &prompts, options)?;
    for ((key, _), continued) in lead_ins.into_iter().zip(decoded) {
        let next_seq = key.first_seq;
        streams.insert(
            key,
            StreamProgress {
                next_seq,
                context: continued.context,
            },
        );
    }
    Ok(())
}

/// Runs one batch; every chunk yields a result or, if the model failed, a dead letter.
fn run_batch(
    engine: &mut Engine,
    options: &TranscribeOptions,
    metrics: &Metrics,
    streams: &mut HashMap<StreamKey, StreamProgress>,
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
    let mut lead_ins = Vec::new();
    for (capability, work) in speech {
        let read = work.samples.read().and_then(|samples| {
            if let Some((key, preceding)) = lead_in(streams, &work, options) {
                lead_ins.push((key, preceding.read()?));
            }
            Ok(samples)
        });
        match read {
            Ok(samples) => loaded.push((capability, work, samples)),
            Err(err) => {
                tracing::error!(error = %err, "reading a chunk's audio back failed");
                if options.condition_on_previous_text {
                    advance(streams, &work, options.stream_chunks, Vec::new());
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
    let transcribed = decode_lead_ins(engine, options, streams, lead_ins).and_then(|()| {
        let prompts: Vec<&[u32]> = speech
            .iter()
            .map(|(_, w)| {
                streams
                    .get(&StreamKey::of(w, options.stream_chunks))
                    .map_or(&[][..], |p| p.context.as_slice())
            })
            .collect();
        engine.transcribe_continuing(&inputs, &prompts, options)
    });
    let work = engine.work().since(&work_before);
    for (kind, count) in work.labelled() {
        metrics
            .model_work_total
            .with_label_values(&[kind])
            .inc_by(count);
    }
    for (stage, seconds) in work.seconds() {
        metrics
            .model_compute_seconds_total
            .with_label_values(&[stage])
            .inc_by(seconds);
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
                    advance(streams, &work, options.stream_chunks, continued.context);
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
                    advance(streams, &work, options.stream_chunks, Vec::new());
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

#[cfg(test)]
mod tests {
    use super::stream_bounds;

    /// Every chunk's stream, as (stream, first, end) per chunk.
    fn plan(total: u32, stream_chunks: u32) -> Vec<(u32, u32, u32)> {
        (0..total)
            .map(|seq| stream_bounds(seq, total, stream_chunks))
            .collect()
    }

    #[test]
    fn streams_are_near_equal_runs_of_consecutive_chunks() {
        let lengths = |total, per| {
            let mut runs: Vec<u32> = Vec::new();
            for (seq, (stream, first, end)) in plan(total, per).into_iter().enumerate() {
                assert!(first as usize <= seq && seq < end as usize);
                if runs.len() as u32 == stream {
                    assert_eq!(first as usize, seq, "a stream starts at its first chunk");
                    runs.push(end - first);
                }
            }
            runs
        };
        assert_eq!(lengths(16, 6), vec![6, 5, 5]);
        assert_eq!(lengths(12, 6), vec![6, 6]);
        assert_eq!(lengths(13, 6), vec![5, 4, 4]);
        assert_eq!(lengths(5, 6), vec![5]);
        assert_eq!(lengths(40, 0), vec![40]);
        assert_eq!(lengths(7, 1), vec![1; 7]);
    }

    #[test]
    fn a_silent_recording_and_stray_numbers_stay_in_bounds() {
        assert_eq!(stream_bounds(0, 0, 6), (0, 0, 1));
        assert_eq!(stream_bounds(9, 4, 2), (1, 2, 4));
    }
}
