//! Waiting on several processes, pipe ends and queues at once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crate::{Child, Data, Error, sys};

pub(crate) mod sealed {
    pub trait Sealed {}

    /// A pool task seen by [`super::wait`]: it has no descriptor either;
    /// a waker rings the wait's eventfd when it ends.
    pub trait Notify: Sync {
        /// It has ended.
        fn is_ready(&self) -> bool;
        /// Registers `waker` unless it has ended; true if it has.
        fn register(&self, waker: &std::task::Waker) -> bool;
    }

    /// A queue seen by [`super::wait`]: it has no descriptor to poll, so a
    /// watcher thread sleeps on its futex instead.
    pub trait Watched: Sync {
        /// An item (or the end of a closed queue) is there to get.
        fn readable(&self) -> bool;
        /// Returns once the queue may be readable, `stop` is set, or a
        /// short while has passed (so a missed interruption costs at most
        /// that).
        fn watch_once(&self, stop: &std::sync::atomic::AtomicBool);
        /// Wakes the watchers sleeping in [`Watched::watch_once`].
        fn interrupt(&self);
    }
}

pub(crate) use sealed::Watched;

/// Something [`wait`] can wait on: a [`Child`] (ready when it finished), a
/// pipe end (ready when a message or end-of-file is waiting), a queue
/// (ready when an item is there, or it is closed), or a pool
/// [`Task`](crate::Task) (ready when it ended).
///
/// This trait is sealed.
pub trait Waitable: sealed::Sealed {
    #[doc(hidden)]
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>>;

    #[doc(hidden)]
    fn wait_queue(&self) -> Option<&dyn sealed::Watched> {
        None
    }

    #[doc(hidden)]
    fn wait_task(&self) -> Option<&dyn sealed::Notify> {
        None
    }
}

impl<R> sealed::Sealed for Child<R> {}
impl<R: Data> Waitable for Child<R> {
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.proc().wait_fds()
    }
}

impl sealed::Sealed for crate::pipe::Connection {}
impl Waitable for crate::pipe::Connection {
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.fd()]
    }
}

impl sealed::Sealed for crate::pipe::Receiver {}
impl Waitable for crate::pipe::Receiver {
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.fd()]
    }
}

macro_rules! waitable_queue {
    ($($ty:ident),*) => {$(
        impl<T> sealed::Sealed for crate::queue::$ty<T> {}
        impl<T> Waitable for crate::queue::$ty<T> {
            fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
                Vec::new()
            }
            fn wait_queue(&self) -> Option<&dyn sealed::Watched> {
                Some(self.watched())
            }
        }
    )*};
}
waitable_queue!(Queue, JoinableQueue, SimpleQueue);

/// Waits until at least one of `objects` is ready, or until `timeout`
/// passes (`None`: no limit). Returns the indices of the ready ones, in order
/// (empty on timeout).
///
/// Python's `multiprocessing.connection.wait` over sentinels, connections
/// and queue readers, and `concurrent.futures.wait` over futures, in one
/// call.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let fast = corral::spawn(nap, 10).unwrap();
/// let slow = corral::spawn(nap, 5_000).unwrap();
/// let results = corral::Queue::<u64>::unbounded().unwrap();
/// let pool = corral::Pool::new(1).unwrap();
/// let task = pool.submit(nap, 5_000);
/// let ready = corral::wait(&[&fast, &slow, &results, &task], Some(Duration::from_secs(2))).unwrap();
/// assert_eq!(ready, vec![0]);
/// slow.kill().unwrap();
/// task.cancel();
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>, Error> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let set = WaitSet::new(objects);
    let fds = set.fds();
    if set.queues.is_empty() && set.tasks.is_empty() {
        let polled = sys::poll_readable(&fds, timeout).map_err(Error::io("waiting"))?;
        return Ok(set.ready(&polled));
    }
    let polled = sys::poll_readable(&fds, Some(Duration::ZERO)).map_err(Error::io("waiting"))?;
    let ready = set.ready(&polled);
    if !ready.is_empty() {
        return Ok(ready);
    }
    set.wait_with_bell(fds, deadline)
}

/// What [`wait`] waits on: each object's descriptors, and the queues and
/// tasks among them, which have none.
struct WaitSet<'a> {
    sets: Vec<Vec<BorrowedFd<'a>>>,
    queues: Vec<(usize, &'a dyn sealed::Watched)>,
    tasks: Vec<(usize, &'a dyn sealed::Notify)>,
}

impl<'a> WaitSet<'a> {
    fn new(objects: &[&'a dyn Waitable]) -> WaitSet<'a> {
        WaitSet {
            sets: objects.iter().map(|o| o.wait_fds()).collect(),
            queues: (objects.iter().enumerate())
                .filter_map(|(i, o)| o.wait_queue().map(|q| (i, q)))
                .collect(),
            tasks: (objects.iter().enumerate())
                .filter_map(|(i, o)| o.wait_task().map(|t| (i, t)))
                .collect(),
        }
    }

    /// Every object's descriptors, in order.
    fn fds(&self) -> Vec<BorrowedFd<'a>> {
        self.sets.iter().flatten().copied().collect()
    }

    /// The objects ready now, given which of [`fds`](Self::fds) polled
    /// readable.
    fn ready(&self, polled: &[bool]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        for (index, set) in self.sets.iter().enumerate() {
            let fd_ready = polled[at..at + set.len()].iter().any(|&r| r);
            let queue_ready = (self.queues.iter()).any(|&(i, q)| i == index && q.readable());
            let task_ready = (self.tasks.iter()).any(|&(i, t)| i == index && t.is_ready());
            if fd_ready || queue_ready || task_ready {
                out.push(index);
            }
            at += set.len();
        }
        out
    }

    /// Waits until an object is ready or `deadline` passes. Queues and
    /// tasks have no descriptor: a watcher thread per queue, and a waker
    /// per task, turn "may be ready" into an eventfd the poll includes.
    fn wait_with_bell(
        &self,
        fds: Vec<BorrowedFd<'a>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<usize>, Error> {
        // One bell per thread, and one waker for it: a task registers the
        // same waker however many times it is waited on (no growth in a
        // polling loop). A ring left over from an earlier wait is drained
        // first.
        let (bell, waker) = thread_bell()?;
        sys::eventfd_drain(bell.as_fd());
        for &(_, t) in &self.tasks {
            if t.register(&waker) {
                sys::eventfd_notify(bell.as_fd());
            }
        }
        let mut fds: Vec<BorrowedFd<'_>> = fds;
        fds.push(bell.as_fd());
        let stop = AtomicBool::new(false);
        // Whether each queue's watcher is still watching (it leaves once it
        // rang the bell).
        let watching: Vec<AtomicBool> = (self.queues.iter())
            .map(|_| AtomicBool::new(false))
            .collect();
        std::thread::scope(|scope| {
            let watch = |k: usize| {
                let (stop, bell, q, on) = (&stop, bell.as_fd(), self.queues[k].1, &watching[k]);
                on.store(true, Ordering::SeqCst);
                scope.spawn(move || watch_queue(q, stop, on, bell));
            };
            (0..self.queues.len()).for_each(watch);
            // The bell may ring for nothing ready here (a task of an earlier
            // wait ended; a queue's item was taken by another consumer
            // first): then the wait goes on, watching again the queues that
            // rang.
            let outcome = loop {
                let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
                let polled = match sys::poll_readable(&fds, left) {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                let ready = self.ready(&polled[..polled.len() - 1]);
                if !ready.is_empty() || deadline.is_some_and(|at| Instant::now() >= at) {
                    break Ok(ready);
                }
                sys::eventfd_drain(bell.as_fd());
                (0..self.queues.len())
                    .filter(|&k| !watching[k].load(Ordering::SeqCst))
                    .for_each(watch);
            };
            stop.store(true, Ordering::SeqCst);
            for &(_, q) in &self.queues {
                q.interrupt();
            }
            outcome
        })
        .map_err(Error::io("waiting"))
    }
}

/// A queue's watcher thread: rings `bell` once the queue is readable
/// (clearing `on`), or leaves when `stop` is set.
fn watch_queue(q: &dyn sealed::Watched, stop: &AtomicBool, on: &AtomicBool, bell: BorrowedFd<'_>) {
    while !stop.load(Ordering::SeqCst) {
        if q.readable() {
            on.store(false, Ordering::SeqCst);
            sys::eventfd_notify(bell);
            return;
        }
        q.watch_once(stop);
    }
}

/// Rings this thread's wait eventfd when a task ends.
struct Bell(Arc<OwnedFd>);

impl Wake for Bell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        sys::eventfd_notify(self.0.as_fd());
    }
}

/// A thread's bell: its eventfd, the waker that rings it, and the process
/// it belongs to (a forked child makes its own).
type ThreadBell = (u32, Arc<OwnedFd>, Waker);

thread_local! {
    static BELL: std::cell::RefCell<Option<ThreadBell>> = const { std::cell::RefCell::new(None) };
}

/// This thread's bell for waiting on tasks, and the waker that rings it.
fn thread_bell() -> Result<(Arc<OwnedFd>, Waker), Error> {
    let pid = std::process::id();
    BELL.with(|cell| {
        let mut bell = cell.borrow_mut();
        if let Some((owner, fd, waker)) = bell.as_ref()
            && *owner == pid
        {
            return Ok((fd.clone(), waker.clone()));
        }
        let fd = Arc::new(sys::eventfd().map_err(Error::io("creating an eventfd"))?);
        let waker = Waker::from(Arc::new(Bell(fd.clone())));
        *bell = Some((pid, fd.clone(), waker.clone()));
        Ok((fd, waker))
    })
}
