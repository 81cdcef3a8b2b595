//! The in-process intake of the embedded default: API submissions wait here,
//! highest priority first (first come, first served within a priority), until
//! the dataflow's driver polls them.
//!
//! Nothing is lost if the process dies: every queued job's audio and metadata
//! are on disk in the upload store, and start-up queues them again.

use mmt_core::job::{ComponentError, JobId};
use mmt_core::source::{Delivery, DeliveryTag, JobSource, Settlement};
use mmt_core::ErrorClass;
use mmt_operators::records::SourceRecord;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// One waiting job.
#[derive(Debug)]
struct Waiting {
    priority: u8,
    /// Arrival order: lower is older.
    sequence: u64,
    job: JobId,
    record: SourceRecord,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    /// The heap's greatest is the next to go: higher priority, then older.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

#[derive(Debug, Default)]
struct Queue {
    waiting: BinaryHeap<Waiting>,
    next_sequence: u64,
}

/// The queue, shared by the API (producer) and the driver (consumer).
#[derive(Debug, Default)]
pub struct ApiQueue {
    queue: Mutex<Queue>,
    arrived: Condvar,
}

impl ApiQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the heap intact: keep going.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job's record.
    pub fn push(&self, job: JobId, priority: u8, record: SourceRecord) {
        let mut queue = self.lock();
        let sequence = queue.next_sequence;
        queue.next_sequence += 1;
        queue.waiting.push(Waiting {
            priority,
            sequence,
            job,
            record,
        });
        drop(queue);
        self.arrived.notify_one();
    }

    /// Takes a job out before it is processed (a deletion); whether it was waiting.
    pub fn remove(&self, job: &JobId) -> bool {
        let mut queue = self.lock();
        let before = queue.waiting.len();
        queue.waiting.retain(|waiting| &waiting.job != job);
        queue.waiting.len() != before
    }

    /// Whether the job is waiting.
    pub fn contains(&self, job: &JobId) -> bool {
        self.lock()
            .waiting
            .iter()
            .any(|waiting| &waiting.job == job)
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Up to `max` jobs, waiting at most `wait` for the first.
    fn take(&self, max: usize, wait: Duration) -> Vec<SourceRecord> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() && !wait.is_zero() {
            queue = self
                .arrived
                .wait_timeout(queue, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        let mut taken = Vec::new();
        while taken.len() < max {
            match queue.waiting.pop() {
                Some(waiting) => taken.push(waiting.record),
                None => break,
            }
        }
        taken
    }
}

/// The driver's side of the queue.
#[derive(Debug)]
pub struct ApiQueueSource {
    queue: Arc<ApiQueue>,
    next_tag: u64,
}

impl ApiQueueSource {
    pub fn new(queue: Arc<ApiQueue>) -> Self {
        Self { queue, next_tag: 0 }
    }
}

impl JobSource for ApiQueueSource {
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ComponentError> {
        if max == 0 {
            return Err(ComponentError::new(
                ErrorClass::Internal,
                "polled for zero jobs",
            ));
        }
        Ok(self
            .queue
            .take(max, wait)
            .into_iter()
            .map(|record| {
                self.next_tag += 1;
                Delivery {
                    tag: DeliveryTag(self.next_tag),
                    record,
                }
            })
            .collect())
    }

    /// Nothing to acknowledge: the job store records each job's outcome, and
    /// the upload store keeps the audio for a restart.
    fn settle(&mut self, _settled: &[(DeliveryTag, Settlement)]) -> Result<(), ComponentError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "api"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SourceRecord {
        SourceRecord {
            tenant: "t".into(),
            source: name.into(),
            ..SourceRecord::default()
        }
    }

    fn names(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries
            .iter()
            .map(|d| d.record.source.as_str())
            .collect()
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let queue = ApiQueue::new();
        queue.push(JobId("a".into()), 0, record("a"));
        queue.push(JobId("b".into()), 5, record("b"));
        queue.push(JobId("c".into()), 0, record("c"));
        queue.push(JobId("d".into()), 5, record("d"));
        let mut source = ApiQueueSource::new(Arc::clone(&queue));
        let first = source.poll(3, Duration::ZERO).unwrap();
        assert_eq!(names(&first), ["b", "d", "a"]);
        assert_eq!(queue.depth(), 1);
        let rest = source.poll(3, Duration::ZERO).unwrap();
        assert_eq!(names(&rest), ["c"]);
        assert_ne!(first[0].tag, rest[0].tag);
    }

    #[test]
    fn a_removed_job_is_never_handed_out() {
        let queue = ApiQueue::new();
        queue.push(JobId("a".into()), 0, record("a"));
        queue.push(JobId("b".into()), 0, record("b"));
        assert!(queue.remove(&JobId("a".into())));
        assert!(!queue.remove(&JobId("a".into())));
        assert!(queue.contains(&JobId("b".into())));
        let mut source = ApiQueueSource::new(queue);
        assert_eq!(names(&source.poll(5, Duration::ZERO).unwrap()), ["b"]);
    }

    #[test]
    fn a_waiting_poll_wakes_on_arrival() {
        let queue = ApiQueue::new();
        let producer = Arc::clone(&queue);
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            producer.push(JobId("late".into()), 0, record("late"));
        });
        let mut source = ApiQueueSource::new(queue);
        let got = source.poll(1, Duration::from_secs(10)).unwrap();
        handle.join().unwrap();
        assert_eq!(names(&got), ["late"]);
    }
}
