//! Chunk: a job's audio → ≤ 30 s windows of speech (silence never reaches the model).
//!
//! The chunks were planned while the audio decoded (see [`crate::decode`]);
//! each chunk here is a view of the job's spooled samples, read only when
//! the model transcribes it.

use crate::chunk::ChunkSpan;
use crate::records::{ChunkWork, DecodedJob, Samples};
use mmt_core::trace::continue_trace;
use mmt_whisper::audio::SAMPLE_RATE;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Splits each job into speech chunks, numbered in time order.
pub trait ChunkSpeech<'scope> {
    fn chunk_speech(self) -> Stream<'scope, u64, Vec<ChunkWork>>;
}

impl<'scope> ChunkSpeech<'scope> for Stream<'scope, u64, Vec<DecodedJob>> {
    fn chunk_speech(self) -> Stream<'scope, u64, Vec<ChunkWork>> {
        self.unary(Pipeline, "Chunk", move |_capability, _info| {
            move |input, output| {
                input.for_each(|capability, data| {
                    let mut session = output.session(&capability);
                    for job in data.drain(..) {
                        session.give_iterator(chunk_job(job).into_iter());
                    }
                });
            }
        })
    }
}

/// The chunks of one job; a job without speech yields one empty chunk (`total == 0`).
pub fn chunk_job(job: DecodedJob) -> Vec<ChunkWork> {
    let span = tracing::info_span!("chunk", job = %job.meta.id, chunks = job.audio.chunks.len());
    continue_trace(&span, job.meta.trace_parent.as_deref());
    let _span = span.entered();
    let job_seconds = job.duration_seconds();
    let spans = &job.audio.chunks;
    if spans.is_empty() {
        return vec![ChunkWork {
            meta: job.meta,
            seq: 0,
            total: 0,
            offset_seconds: 0.0,
            job_seconds,
            samples: Samples::default(),
            preceding: None,
        }];
    }
    let total = spans.len() as u32;
    let view = |span: &ChunkSpan| job.audio.samples.slice(span.start..span.end);
    spans
        .iter()
        .enumerate()
        .map(|(index, span)| ChunkWork {
            meta: job.meta.clone(),
            seq: span.seq,
            total,
            offset_seconds: span.start as f64 / f64::from(SAMPLE_RATE),
            job_seconds,
            samples: view(span),
            preceding: index.checked_sub(1).map(|before| view(&spans[before])),
        })
        .collect()
}
