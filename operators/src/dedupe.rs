//! Dedupe: one job per tenant and audio content, across redeliveries and restarts.

use crate::records::{route, DecodedJob, Outcome};
use mmt_core::job::{JobId, JobStatus, JobStore};
use std::collections::HashSet;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Routes jobs by id to the worker that owns them and drops repeats.
///
/// A job already finished in an earlier run (completed or dead-lettered in the
/// store) is a redelivery: it is only counted; a job seen twice in this run is
/// a duplicate submission and is reported (audited) once.
pub trait Dedupe<'scope> {
    fn dedupe(
        self,
        store: Box<dyn JobStore>,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> Dedupe<'scope> for Stream<'scope, u64, Vec<DecodedJob>> {
    fn dedupe(
        self,
        mut store: Box<dyn JobStore>,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        let mut seen: HashSet<JobId> = HashSet::new();
        let verdicts: Stream<'scope, u64, Vec<Result<DecodedJob, Outcome>>> = self.unary(
            Exchange::new(|job: &DecodedJob| route(&job.meta.id)),
            "Dedupe",
            move |_capability, _info| {
                move |input, output| {
                    input.for_each(|capability, data| {
                        let mut session = output.session(&capability);
                        for job in data.drain(..) {
                            session.give(judge(job, &mut seen, store.as_mut()));
                        }
                    });
                }
            },
        );
        verdicts.ok_err(|verdict| verdict)
    }
}

/// The job to process, or why it needs no processing.
fn judge(
    job: DecodedJob,
    seen: &mut HashSet<JobId>,
    store: &mut dyn JobStore,
) -> Result<DecodedJob, Outcome> {
    if !seen.insert(job.meta.id.clone()) {
        return Err(Outcome::Duplicate(job.meta));
    }
    match store.status(&job.meta.id) {
        Ok(Some(status)) if status.is_terminal() => {
            tracing::debug!(job = %job.meta.id, status = status.as_str(), "already finished");
            return Err(Outcome::AlreadyFinished(job.meta.id));
        }
        Ok(_) => {}
        // The sinks are idempotent, so processing again is safe; losing the job is not.
        Err(err) => {
            tracing::warn!(job = %job.meta.id, error = %err, "store lookup failed; processing anyway")
        }
    }
    let recorded = store
        .insert_queued(&job.meta)
        .and_then(|_| store.transition(&job.meta.id, JobStatus::Processing));
    if let Err(err) = recorded {
        tracing::warn!(job = %job.meta.id, error = %err, "could not record the job as processing");
    }
    Ok(job)
}
