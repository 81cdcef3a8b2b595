//! Assemble: a job's chunk transcripts, in order, become its transcript.

use crate::records::{route, ChunkResult, Outcome};
use mmt_core::job::{unix_now, CompletedJob, JobId};
use mmt_core::trace::continue_trace;
use mmt_core::{Segment, Transcript};
use std::collections::HashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Collects chunk results per job; emits the job once every chunk is in.
pub trait Assemble<'scope> {
    fn assemble(self) -> Stream<'scope, u64, Vec<Outcome>>;
}

impl<'scope> Assemble<'scope> for Stream<'scope, u64, Vec<ChunkResult>> {
    fn assemble(self) -> Stream<'scope, u64, Vec<Outcome>> {
        let mut partial: HashMap<JobId, Vec<ChunkResult>> = HashMap::new();
        self.unary(
            Exchange::new(|result: &ChunkResult| route(&result.meta.id)),
            "Assemble",
            move |_capability, _info| {
                move |input, output| {
                    input.for_each(|capability, data| {
                        let mut session = output.session(&capability);
                        for result in data.drain(..) {
                            if let Some(job) = add_chunk(&mut partial, result) {
                                session.give(Outcome::Completed(Box::new(job)));
                            }
                        }
                    });
                }
            },
        )
    }
}

/// Adds one chunk; returns the finished job when it was the last one missing.
fn add_chunk(
    partial: &mut HashMap<JobId, Vec<ChunkResult>>,
    result: ChunkResult,
) -> Option<CompletedJob> {
    let expected = result.total.max(1) as usize;
    let id = result.meta.id.clone();
    let chunks = partial.entry(id.clone()).or_default();
    // A redelivered chunk must not count twice.
    if !chunks.iter().any(|c| c.seq == result.seq) {
        chunks.push(result);
    }
    if chunks.len() < expected {
        return None;
    }
    let mut chunks = partial.remove(&id)?;
    chunks.sort_by_key(|c| c.seq);
    let job_seconds = chunks[0].job_seconds;
    let meta = chunks[0].meta.clone();
    let span = tracing::info_span!("assemble", job = %meta.id, chunks = chunks.len());
    continue_trace(&span, meta.trace_parent.as_deref());
    let _span = span.entered();
    let segments: Vec<Segment> = chunks
        .into_iter()
        .flat_map(|c| c.segments)
        .enumerate()
        .map(|(id, mut segment)| {
            segment.id = id;
            segment
        })
        .collect();
    Some(CompletedJob {
        meta,
        transcript: Transcript::from_segments(segments, job_seconds, "en"),
        completed_at: unix_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::job::JobMeta;

    fn meta() -> JobMeta {
        JobMeta {
            id: JobId("ab".repeat(16)),
            tenant: "t".into(),
            content_hash: "h".into(),
            source: "s".into(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: "c".into(),
            received_at: 0,
            trace_parent: None,
        }
    }

    fn chunk(seq: u32, total: u32, text: &str, start: f64) -> ChunkResult {
        ChunkResult {
            meta: meta(),
            seq,
            total,
            job_seconds: 90.0,
            segments: vec![Segment {
                id: 0,
                start,
                end: start + 5.0,
                text: text.into(),
                avg_logprob: -0.1,
                no_speech_prob: 0.0,
                temperature: 0.0,
                confidence: 0.9,
            }],
        }
    }

    #[test]
    fn completes_when_all_chunks_arrive_in_any_order_and_orders_them() {
        let mut partial = HashMap::new();
        assert!(add_chunk(&mut partial, chunk(2, 3, "three", 60.0)).is_none());
        assert!(add_chunk(&mut partial, chunk(0, 3, "one", 0.0)).is_none());
        assert!(
            add_chunk(&mut partial, chunk(0, 3, "one", 0.0)).is_none(),
            "a repeat does not count"
        );
        let job = add_chunk(&mut partial, chunk(1, 3, "two", 30.0)).expect("complete");
        assert_eq!(job.transcript.text, "one two three");
        let ids: Vec<usize> = job.transcript.segments.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert!(partial.is_empty());
    }

    #[test]
    fn a_job_without_speech_completes_empty() {
        let mut partial = HashMap::new();
        let mut silent = chunk(0, 0, "", 0.0);
        silent.segments.clear();
        let job = add_chunk(&mut partial, silent).expect("complete");
        assert!(job.transcript.text.is_empty() && job.transcript.segments.is_empty());
    }
}
