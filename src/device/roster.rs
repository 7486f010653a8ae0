//! The queue roster: what a device's queue threads and its control side
//! share about each queue, for pool devices ([`super::queue`]) and cluster
//! devices ([`super::remote_queue`]) alike.
//!
//! Contract:
//! - A queue's CPU is `cpus[q % cpus.len()]` ([`QueueRoster::cpu_of`]).
//! - Each queue thread calls [`QueueRoster::enter`] once, first thing: it
//!   pins itself, records its thread id and takes its trace producer (one
//!   thread per queue: a second `enter` for a queue panics). It then
//!   publishes its statistics with [`QueueRoster::set_snapshot`].
//! - The control side, once the device is live, calls
//!   [`QueueRoster::pin_all`] (libublk applies the kernel's default queue
//!   affinity when the device starts, after the threads pinned themselves)
//!   and reads [`QueueRoster::snapshots`] for the control socket.
//! - Every queue thread's io_uring is built by [`init_queue_ring`].

use crate::device::config::queue_cpu;
use crate::device::metrics::{QueueMetrics, QueueSnapshot, TraceProducer};
use crate::device::queue::{pin_current, pin_thread};
use crate::device::DeviceError;
use io_uring::squeue;
use libublk::UblkError;
use std::sync::{Arc, Mutex};

/// Per-queue slots shared by the queue threads and the control side.
pub struct QueueRoster {
    cpus: Vec<usize>,
    producers: Mutex<Vec<Option<TraceProducer>>>,
    snapshots: Mutex<Vec<Option<Arc<Mutex<QueueSnapshot>>>>>,
    tids: Mutex<Vec<Option<i32>>>,
}

impl QueueRoster {
    /// One slot per trace producer (one producer per queue).
    pub fn new(cpus: Vec<usize>, producers: Vec<TraceProducer>) -> Self {
        assert!(!cpus.is_empty(), "a device needs at least one CPU");
        let nq = producers.len();
        Self {
            cpus,
            producers: Mutex::new(producers.into_iter().map(Some).collect()),
            snapshots: Mutex::new(vec![None; nq]),
            tids: Mutex::new(vec![None; nq]),
        }
    }

    /// The CPU queue `q` runs on.
    pub fn cpu_of(&self, q: u16) -> usize {
        queue_cpu(&self.cpus, q)
    }

    /// The start of queue thread `qid`: pin the calling thread to its CPU
    /// (a warning when that fails), record its thread id, and hand it its
    /// trace producer. Returns the CPU and the producer.
    pub fn enter(&self, qid: u16) -> (usize, TraceProducer) {
        let cpu = self.cpu_of(qid);
        if !pin_current(cpu) {
            tracing::warn!("queue {qid}: could not pin to CPU {cpu}");
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tids.lock().expect("tids")[qid as usize] = Some(tid);
        let producer = self.producers.lock().expect("producers")[qid as usize]
            .take()
            .expect("one thread per queue");
        (cpu, producer)
    }

    /// Queue `qid` publishes its statistics through `metrics`.
    pub fn set_snapshot(&self, qid: u16, metrics: &QueueMetrics) {
        self.snapshots.lock().expect("snapshots")[qid as usize] = Some(metrics.shared());
    }

    /// Pin every queue thread that has started to its CPU again; returns
    /// the thread ids (0 for a queue not started) and the CPUs, by queue.
    pub fn pin_all(&self) -> Result<(Vec<i32>, Vec<usize>), DeviceError> {
        let tids: Vec<i32> = self
            .tids
            .lock()
            .expect("tids")
            .iter()
            .map(|t| t.unwrap_or(0))
            .collect();
        let cpus: Vec<usize> = (0..tids.len() as u16).map(|q| self.cpu_of(q)).collect();
        for (q, (&tid, &cpu)) in tids.iter().zip(&cpus).enumerate() {
            if tid != 0 {
                pin_thread(tid, cpu)
                    .map_err(|e| DeviceError::Os(format!("pinning queue {q} to CPU {cpu}"), e))?;
            }
        }
        Ok((tids, cpus))
    }

    /// The statistics published so far, by queue (queues not started left out).
    pub fn snapshots(&self) -> Vec<Arc<Mutex<QueueSnapshot>>> {
        self.snapshots
            .lock()
            .expect("snapshots")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Build the calling queue thread's io_uring (once per thread): room for
/// every tag's command plus a few target SQEs each, and a completion queue
/// twice that (libublk's default sizes both to the depth). Target SQEs
/// beyond the SQ size are flushed and retried by the queues.
///
/// The ring has one issuer (this thread) and defers the kernel's task work
/// (the ublk commands' delivery, completions) to the moments the thread
/// enters the ring for completions (`DEFER_TASKRUN`, 6.1), flagging pending
/// work in the SQ ring (`TASKRUN_FLAG`) so the busy and adaptive spins,
/// which enter without waiting, still run it: no task-work interrupt per
/// request (bench/RESULTS.md "Queue rings that defer their task work").
/// A kernel that refuses those flags gets `COOP_TASKRUN` alone, with a
/// message.
pub fn init_queue_ring(depth: u16) -> Result<(), UblkError> {
    let sq = (u32::from(depth) * 2).next_power_of_two().max(8);
    libublk::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let mut b = io_uring::IoUring::<squeue::Entry>::builder();
            b.setup_cqsize(sq * 2).setup_coop_taskrun();
            let deferred = b
                .clone()
                .setup_taskrun_flag()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(sq);
            let ring = match deferred {
                Ok(ring) => ring,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(
                        "queue ring: the kernel refused SINGLE_ISSUER/DEFER_TASKRUN ({e}); \
                         using COOP_TASKRUN alone"
                    );
                    b.build(sq).map_err(UblkError::IOError)?
                }
                Err(e) => return Err(UblkError::IOError(e)),
            };
            cell.set(std::cell::RefCell::new(ring))
                .map_err(|_| UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::DEVICE_TRACE_RING_EVENTS;
    use crate::device::metrics::trace_ring;

    fn roster(cpus: Vec<usize>, queues: usize) -> QueueRoster {
        let producers = (0..queues)
            .map(|_| trace_ring(DEVICE_TRACE_RING_EVENTS).0)
            .collect();
        QueueRoster::new(cpus, producers)
    }

    #[test]
    fn queues_spread_round_robin_over_the_cpus() {
        let r = roster(vec![3, 5], 5);
        let cpus: Vec<usize> = (0..5).map(|q| r.cpu_of(q)).collect();
        assert_eq!(cpus, vec![3, 5, 3, 5, 3]);
    }

    #[test]
    fn entered_queues_are_listed_with_their_thread_and_statistics() {
        let r = Arc::new(roster(vec![0], 2));
        let r1 = r.clone();
        let tid = std::thread::spawn(move || {
            let (cpu, _producer) = r1.enter(1);
            assert_eq!(cpu, 0);
            r1.set_snapshot(1, &QueueMetrics::new(1, cpu));
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() }
        })
        .join()
        .unwrap();
        // Queue 0 never started: listed as thread 0, no statistics. (The
        // entered thread has exited, so it is not pinned again here.)
        let tids = r.tids.lock().unwrap().clone();
        assert_eq!(tids, vec![None, Some(tid)]);
        assert_eq!(r.snapshots().len(), 1);
    }

    #[test]
    #[should_panic(expected = "one thread per queue")]
    fn a_queue_is_entered_once() {
        let r = roster(vec![0], 1);
        let _first = r.enter(0);
        let _second = r.enter(0);
    }
}
