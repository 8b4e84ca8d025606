//! Done callbacks: run on one thread per pool, never under the pool's lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Wake, Waker};
use std::thread::{JoinHandle, ThreadId};

use crate::poison::{self, lock};

/// A callback, bound to its task's outcome.
pub(super) type Callback = Box<dyn FnOnce() + Send>;

/// The pool's callback thread, started at the first callback.
#[derive(Debug, Default)]
pub(crate) struct Callbacks {
    runner: Mutex<Runner>,
    /// Callbacks registered and not yet run, and a signal when it drops.
    pending: Arc<Pending>,
}

#[derive(Debug, Default)]
struct Runner {
    tx: Option<Sender<Callback>>,
    thread: Option<JoinHandle<()>>,
    id: Option<ThreadId>,
    /// The pool has joined: later callbacks run on the caller's thread.
    stopped: bool,
}

#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    lock: Mutex<()>,
    zero: Condvar,
}

impl Pending {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _guard = lock(&self.lock);
            self.zero.notify_all();
        }
    }
}

/// Sends its callback to the pool's thread when its task ends.
struct CallbackWaker {
    run: Mutex<Option<Callback>>,
    tx: Mutex<Option<Sender<Callback>>>,
}

impl Wake for CallbackWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let run = lock(&self.run).take();
        let tx = lock(&self.tx).take();
        if let (Some(run), Some(tx)) = (run, tx) {
            // The thread outlives every registered callback (see `finish`).
            let _ = tx.send(run);
        }
    }
}

impl Callbacks {
    /// A waker that runs `run` on the callback thread once woken; `None`
    /// if the pool has joined (the caller then runs it itself, when due).
    pub(super) fn waker(&self, run: Callback) -> Result<Waker, Callback> {
        let mut runner = lock(&self.runner);
        if runner.stopped {
            return Err(run);
        }
        if runner.tx.is_none() {
            let (tx, rx) = mpsc::channel::<Callback>();
            let pending = self.pending.clone();
            let thread = std::thread::Builder::new()
                .name("corral-callbacks".into())
                .spawn(move || {
                    while let Ok(run) = rx.recv() {
                        // A panicking callback is reported by the panic hook
                        // and does not stop the others.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
                        pending.done();
                    }
                });
            match thread {
                Ok(t) => {
                    runner.id = Some(t.thread().id());
                    runner.thread = Some(t);
                    runner.tx = Some(tx);
                }
                Err(_) => return Err(run),
            }
        }
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        let tx = runner.tx.clone();
        Ok(Waker::from(Arc::new(CallbackWaker {
            run: Mutex::new(Some(run)),
            tx: Mutex::new(tx),
        })))
    }

    /// Waits for every registered callback to have run (the pool's tasks
    /// have all ended), then stops the thread. From a callback itself, it
    /// does not wait.
    pub(super) fn finish(&self) {
        let mut runner = lock(&self.runner);
        runner.stopped = true;
        if runner.id == Some(std::thread::current().id()) {
            return;
        }
        let thread = runner.thread.take();
        runner.tx = None;
        drop(runner);
        let mut guard = lock(&self.pending.lock);
        while self.pending.count.load(Ordering::Acquire) > 0 {
            guard = poison::wait(&self.pending.zero, guard);
        }
        drop(guard);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
