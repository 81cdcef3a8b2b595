//! The in-process intake of the embedded default: API submissions wait here,
//! highest priority first (first come, first served within a priority), until
//! the dataflow's driver polls them.
//!
//! Only job ids wait in memory (with their tenant and priority): the audio
//! stays in the upload store until the driver takes the job, so a long queue
//! of long recordings costs a few bytes per job. Nothing is lost if the
//! process dies: every queued job's audio and metadata are on disk, and
//! start-up queues them again.
//!
//! The queue is bounded ([`QueueLimits`]): a submission is admitted only
//! through a [`Reservation`], taken before anything is recorded, so the bound
//! holds however many submissions run at once. Jobs restored at start-up are
//! queued whatever the bound: they were accepted, and are never dropped.

use crate::serve::uploads::UploadStore;
use mmt_core::job::{ComponentError, JobId};
use mmt_core::source::{Backlog, Delivery, DeliveryTag, JobSource, Settlement};
use mmt_core::ErrorClass;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a refused client is asked to wait (`Retry-After`): long enough
/// for the dataflow to take a few jobs, short enough to keep a client's
/// backlog moving.
pub const RETRY_AFTER_SECONDS: u64 = 30;

/// The bounds of the queue (`MMT_API_MAX_QUEUED_JOBS`,
/// `MMT_API_MAX_QUEUED_PER_TENANT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Jobs waiting, all tenants together.
    pub max_jobs: usize,
    /// Jobs waiting of one tenant.
    pub max_per_tenant: usize,
}

impl QueueLimits {
    pub fn from_config(config: &crate::config::IntakeConfig) -> Self {
        Self {
            max_jobs: config.max_queued_jobs as usize,
            max_per_tenant: config.max_queued_per_tenant as usize,
        }
    }
}

/// Why a submission is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the job queue is full")]
    QueueFull,
    #[error("the tenant holds its whole share of the job queue")]
    TenantShareFull,
}

/// One waiting job.
#[derive(Debug)]
struct Waiting {
    priority: u8,
    /// Arrival order: lower is older.
    sequence: u64,
    job: JobId,
    tenant: String,
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
    /// Jobs waiting or reserved, per tenant (absent: none).
    per_tenant: HashMap<String, usize>,
    /// Reservations not yet committed or released.
    reserved: usize,
}

impl Queue {
    fn held_by(&self, tenant: &str) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    fn check(&self, limits: &QueueLimits, tenant: &str) -> Result<(), Refusal> {
        if self.waiting.len() + self.reserved >= limits.max_jobs {
            Err(Refusal::QueueFull)
        } else if self.held_by(tenant) >= limits.max_per_tenant {
            Err(Refusal::TenantShareFull)
        } else {
            Ok(())
        }
    }

    fn count_in(&mut self, tenant: &str) {
        *self.per_tenant.entry(tenant.to_owned()).or_insert(0) += 1;
    }

    fn count_out(&mut self, tenant: &str) {
        if let Some(held) = self.per_tenant.get_mut(tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    fn push(&mut self, job: JobId, tenant: String, priority: u8) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.waiting.push(Waiting {
            priority,
            sequence,
            job,
            tenant,
        });
    }
}

/// The queue, shared by the API (producer) and the driver (consumer).
#[derive(Debug)]
pub struct ApiQueue {
    queue: Mutex<Queue>,
    arrived: Condvar,
    limits: QueueLimits,
}

impl ApiQueue {
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            arrived: Condvar::new(),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the heap intact: keep going.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a submission of `tenant` would be admitted now (no reservation).
    pub fn admits(&self, tenant: &str) -> Result<(), Refusal> {
        self.lock().check(&self.limits, tenant)
    }

    /// Holds a place for one job of `tenant`, or says why there is none.
    /// The place is given back when the reservation is dropped uncommitted.
    pub fn reserve(self: &Arc<Self>, tenant: &str) -> Result<Reservation, Refusal> {
        let mut queue = self.lock();
        queue.check(&self.limits, tenant)?;
        queue.reserved += 1;
        queue.count_in(tenant);
        Ok(Reservation {
            queue: Arc::clone(self),
            tenant: tenant.to_owned(),
            committed: false,
        })
    }

    /// Queues a job accepted before (the backlog found at start-up), whatever
    /// the bound: an accepted job is never dropped.
    pub fn restore(&self, job: JobId, tenant: &str, priority: u8) {
        let mut queue = self.lock();
        queue.count_in(tenant);
        queue.push(job, tenant.to_owned(), priority);
        drop(queue);
        self.arrived.notify_one();
    }

    /// Takes a job out before it is processed (a deletion); whether it was waiting.
    pub fn remove(&self, job: &JobId) -> bool {
        let mut queue = self.lock();
        let mut removed = Vec::new();
        let waiting = std::mem::take(&mut queue.waiting);
        queue.waiting = waiting
            .into_iter()
            .filter_map(|waiting| {
                if &waiting.job == job {
                    removed.push(waiting.tenant);
                    None
                } else {
                    Some(waiting)
                }
            })
            .collect();
        for tenant in &removed {
            queue.count_out(tenant);
        }
        !removed.is_empty()
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

    /// Up to `max` job ids, waiting at most `wait` for the first.
    fn take(&self, max: usize, wait: Duration) -> Vec<JobId> {
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
                Some(waiting) => {
                    queue.count_out(&waiting.tenant);
                    taken.push(waiting.job);
                }
                None => break,
            }
        }
        taken
    }
}

/// A place held in the queue for one submission in progress.
#[derive(Debug)]
pub struct Reservation {
    queue: Arc<ApiQueue>,
    tenant: String,
    committed: bool,
}

impl Reservation {
    /// Queues the job in the place held (once it is recorded and its upload stored).
    pub fn commit(mut self, job: JobId, priority: u8) {
        let mut queue = self.queue.lock();
        queue.reserved = queue.reserved.saturating_sub(1);
        queue.push(job, std::mem::take(&mut self.tenant), priority);
        drop(queue);
        self.committed = true;
        self.queue.arrived.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut queue = self.queue.lock();
            queue.reserved = queue.reserved.saturating_sub(1);
            queue.count_out(&self.tenant);
        }
    }
}

/// The driver's side of the queue: reads each taken job's upload from disk.
#[derive(Debug)]
pub struct ApiQueueSource {
    queue: Arc<ApiQueue>,
    uploads: UploadStore,
    next_tag: u64,
}

impl ApiQueueSource {
    pub fn new(queue: Arc<ApiQueue>, uploads: UploadStore) -> Self {
        Self {
            queue,
            uploads,
            next_tag: 0,
        }
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
        let mut deliveries = Vec::new();
        let mut wait = wait;
        // Uploads are handed over as file references (decoded as a stream),
        // so a poll costs no audio memory however long its recordings are.
        while deliveries.len() < max {
            // Only the first job is waited for; the rest go if they are there.
            let Some(job) = self.queue.take(1, wait).pop() else {
                break;
            };
            wait = Duration::ZERO;
            match self.uploads.load(&job) {
                Ok(Some(upload)) => {
                    self.next_tag += 1;
                    deliveries.push(Delivery {
                        tag: DeliveryTag(self.next_tag),
                        record: upload.record,
                    });
                }
                // Deleted between its queueing and now: nothing to do.
                Ok(None) => tracing::warn!(%job, "a queued job has no upload any more; skipped"),
                // Left queued in the store: the next start tries it again.
                Err(err) => {
                    tracing::error!(%job, error = %err.kind(), "a queued job's upload cannot be read; skipped");
                }
            }
        }
        Ok(deliveries)
    }

    fn backlog(&self) -> Option<Backlog> {
        Some(Backlog::Uploads(self.queue.depth() as u64))
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
    use mmt_operators::records::SourceRecord;

    const ROOMY: QueueLimits = QueueLimits {
        max_jobs: 100,
        max_per_tenant: 100,
    };

    fn record(name: &str) -> SourceRecord {
        SourceRecord {
            tenant: "t".into(),
            source: name.into(),
            bytes: name.as_bytes().to_vec(),
            ..SourceRecord::default()
        }
    }

    /// A queue over an upload store holding one upload per name.
    fn queue_with(
        limits: QueueLimits,
        names: &[&str],
    ) -> (tempfile::TempDir, UploadStore, Arc<ApiQueue>) {
        let dir = tempfile::tempdir().unwrap();
        let uploads = UploadStore::open(dir.path()).unwrap();
        for name in names {
            uploads
                .save(&JobId((*name).into()), &record(name), 0)
                .unwrap();
        }
        (dir, uploads, ApiQueue::new(limits))
    }

    fn push(queue: &Arc<ApiQueue>, job: &str, tenant: &str, priority: u8) {
        queue
            .reserve(tenant)
            .unwrap()
            .commit(JobId(job.into()), priority);
    }

    fn names(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries
            .iter()
            .map(|d| d.record.source.as_str())
            .collect()
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let (_dir, uploads, queue) = queue_with(ROOMY, &["a", "b", "c", "d"]);
        push(&queue, "a", "t", 0);
        push(&queue, "b", "t", 5);
        push(&queue, "c", "t", 0);
        push(&queue, "d", "t", 5);
        let mut source = ApiQueueSource::new(Arc::clone(&queue), uploads);
        let first = source.poll(3, Duration::ZERO).unwrap();
        assert_eq!(names(&first), ["b", "d", "a"]);
        let file = first[0].record.file.as_ref().expect("a file reference");
        assert_eq!(std::fs::read(&file.path).unwrap(), b"b");
        assert_eq!(queue.depth(), 1);
        let rest = source.poll(3, Duration::ZERO).unwrap();
        assert_eq!(names(&rest), ["c"]);
        assert_ne!(first[0].tag, rest[0].tag);
    }

    #[test]
    fn a_removed_job_is_never_handed_out() {
        let (_dir, uploads, queue) = queue_with(ROOMY, &["a", "b"]);
        push(&queue, "a", "t", 0);
        push(&queue, "b", "t", 0);
        assert!(queue.remove(&JobId("a".into())));
        assert!(!queue.remove(&JobId("a".into())));
        assert!(queue.contains(&JobId("b".into())));
        let mut source = ApiQueueSource::new(queue, uploads);
        assert_eq!(names(&source.poll(5, Duration::ZERO).unwrap()), ["b"]);
    }

    #[test]
    fn a_waiting_poll_wakes_on_arrival() {
        let (_dir, uploads, queue) = queue_with(ROOMY, &["late"]);
        let producer = Arc::clone(&queue);
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            push(&producer, "late", "t", 0);
        });
        let mut source = ApiQueueSource::new(queue, uploads);
        let got = source.poll(1, Duration::from_secs(10)).unwrap();
        handle.join().unwrap();
        assert_eq!(names(&got), ["late"]);
    }

    #[test]
    fn the_bound_counts_reservations_and_frees_places_as_jobs_leave() {
        let limits = QueueLimits {
            max_jobs: 3,
            max_per_tenant: 2,
        };
        let (_dir, uploads, queue) = queue_with(limits, &["a1", "a2", "b1"]);
        let held = queue.reserve("a").unwrap();
        push(&queue, "a2", "a", 0);
        // Tenant a holds its share (one reserved, one waiting); b does not.
        assert_eq!(queue.reserve("a").unwrap_err(), Refusal::TenantShareFull);
        assert_eq!(queue.admits("b"), Ok(()));
        push(&queue, "b1", "b", 0);
        assert_eq!(queue.admits("c").unwrap_err(), Refusal::QueueFull);
        // A reservation dropped uncommitted gives its place back.
        drop(held);
        assert_eq!(queue.admits("c"), Ok(()));
        assert_eq!(queue.admits("a"), Ok(()));
        // Taking and removing jobs free places too.
        push(&queue, "a1", "a", 0);
        assert_eq!(queue.admits("c").unwrap_err(), Refusal::QueueFull);
        let mut source = ApiQueueSource::new(Arc::clone(&queue), uploads);
        assert_eq!(source.poll(1, Duration::ZERO).unwrap().len(), 1);
        assert!(queue.remove(&JobId("b1".into())));
        assert_eq!(queue.depth(), 1);
        assert_eq!(queue.admits("a"), Ok(()));
    }

    #[test]
    fn a_restored_backlog_is_queued_over_the_bound_and_never_dropped() {
        let limits = QueueLimits {
            max_jobs: 1,
            max_per_tenant: 1,
        };
        let jobs: Vec<String> = (0..5).map(|i| format!("j{i}")).collect();
        let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
        let (_dir, uploads, queue) = queue_with(limits, &refs);
        for name in &refs {
            queue.restore(JobId((*name).into()), "t", 0);
        }
        assert_eq!(queue.depth(), 5);
        assert_eq!(queue.admits("u").unwrap_err(), Refusal::QueueFull);
        let mut source = ApiQueueSource::new(Arc::clone(&queue), uploads);
        let all = source.poll(10, Duration::ZERO).unwrap();
        assert_eq!(names(&all), refs);
        assert_eq!(queue.admits("t"), Ok(()));
    }

    #[test]
    fn a_job_whose_upload_is_gone_is_skipped() {
        let (_dir, uploads, queue) = queue_with(ROOMY, &["kept"]);
        push(&queue, "gone", "t", 0);
        push(&queue, "kept", "t", 0);
        let mut source = ApiQueueSource::new(queue, uploads);
        assert_eq!(names(&source.poll(5, Duration::ZERO).unwrap()), ["kept"]);
    }
}
