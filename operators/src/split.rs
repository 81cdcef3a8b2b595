//! Chunk: a job's audio → ≤ 30 s windows of speech (silence never reaches the model).

use crate::chunk::{plan_chunks, ChunkConfig};
use crate::records::{ChunkWork, DecodedJob};
use mmt_whisper::audio::SAMPLE_RATE;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Splits each job into speech chunks, numbered in time order.
pub trait ChunkSpeech<'scope> {
    fn chunk_speech(self, config: ChunkConfig) -> Stream<'scope, u64, Vec<ChunkWork>>;
}

impl<'scope> ChunkSpeech<'scope> for Stream<'scope, u64, Vec<DecodedJob>> {
    fn chunk_speech(self, config: ChunkConfig) -> Stream<'scope, u64, Vec<ChunkWork>> {
        self.unary(Pipeline, "Chunk", move |_capability, _info| {
            move |input, output| {
                input.for_each(|capability, data| {
                    let mut session = output.session(&capability);
                    for job in data.drain(..) {
                        session.give_iterator(chunk_job(job, &config).into_iter());
                    }
                });
            }
        })
    }
}

/// The chunks of one job; a job without speech yields one empty chunk (`total == 0`).
pub fn chunk_job(job: DecodedJob, config: &ChunkConfig) -> Vec<ChunkWork> {
    let job_seconds = job.duration_seconds();
    let spans = plan_chunks(&job.samples, SAMPLE_RATE, config);
    if spans.is_empty() {
        return vec![ChunkWork {
            meta: job.meta,
            seq: 0,
            total: 0,
            offset_seconds: 0.0,
            job_seconds,
            samples: Vec::new(),
        }];
    }
    let total = spans.len() as u32;
    spans
        .iter()
        .map(|span| ChunkWork {
            meta: job.meta.clone(),
            seq: span.seq,
            total,
            offset_seconds: span.start as f64 / f64::from(SAMPLE_RATE),
            job_seconds,
            samples: job.samples[span.start..span.end].to_vec(),
        })
        .collect()
}
