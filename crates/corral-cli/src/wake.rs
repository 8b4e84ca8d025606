//! The running jobs' tasks, each of which wakes the runner's thread itself
//! when it ends (a task is a future; its waker unparks this thread), so a
//! finished job reaches the scheduler without a hop through another thread.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use corral::{Data, Task, TaskError};

/// Which tasks said they ended, and the thread to wake.
#[derive(Debug)]
struct Woken {
    seqs: Mutex<Vec<u64>>,
    thread: Thread,
}

struct SeqWaker {
    seq: u64,
    woken: Arc<Woken>,
}

impl Wake for SeqWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.seq);
        self.woken.thread.unpark();
    }
}

/// Tasks by job number; waits for the next to end.
pub(crate) struct Tasks<R> {
    tasks: HashMap<u64, Task<R>>,
    ready: VecDeque<(u64, Result<R, TaskError>)>,
    woken: Arc<Woken>,
}

impl<R: Data> Tasks<R> {
    /// Tasks that wake the calling thread.
    pub(crate) fn new() -> Tasks<R> {
        Tasks {
            tasks: HashMap::new(),
            ready: VecDeque::new(),
            woken: Arc::new(Woken {
                seqs: Mutex::new(Vec::new()),
                thread: std::thread::current(),
            }),
        }
    }

    /// Adds job `seq`'s task.
    pub(crate) fn add(&mut self, seq: u64, task: Task<R>) {
        self.tasks.insert(seq, task);
        self.poll(seq);
    }

    /// Polls task `seq`: moves it to `ready` if it has ended.
    fn poll(&mut self, seq: u64) {
        let Some(task) = self.tasks.get_mut(&seq) else {
            return;
        };
        let waker = Waker::from(Arc::new(SeqWaker {
            seq,
            woken: Arc::clone(&self.woken),
        }));
        if let Poll::Ready(result) = Pin::new(task).poll(&mut Context::from_waker(&waker)) {
            self.tasks.remove(&seq);
            self.ready.push_back((seq, result));
        }
    }

    /// The next task to end, waiting at most `timeout`.
    pub(crate) fn next(&mut self, timeout: Duration) -> Option<(u64, Result<R, TaskError>)> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(done) = self.ready.pop_front() {
                return Some(done);
            }
            let seqs =
                std::mem::take(&mut *self.woken.seqs.lock().unwrap_or_else(|p| p.into_inner()));
            for seq in seqs {
                self.poll(seq);
            }
            if !self.ready.is_empty() {
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::park_timeout(left);
        }
    }

    /// The keys of the tasks not yet ended.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.tasks.keys().copied()
    }

    /// Forgets every task (the pool was terminated).
    pub(crate) fn clear(&mut self) {
        self.tasks.clear();
        self.ready.clear();
    }
}
