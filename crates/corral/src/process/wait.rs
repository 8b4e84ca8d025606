//! Waiting on several processes and pipe ends at once.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::{Child, Data, Error, sys};

mod sealed {
    pub trait Sealed {}
}

/// Something [`wait`] can wait on: a [`Child`] (ready when it finished) or a
/// pipe end (ready when a message or end-of-file is waiting).
///
/// This trait is sealed.
pub trait Waitable: sealed::Sealed {
    #[doc(hidden)]
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>>;
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

/// Waits until at least one of `objects` is ready, or until `timeout`
/// passes (`None`: no limit). Returns the indices of the ready ones, in order
/// (empty on timeout).
///
/// Python's `multiprocessing.connection.wait` over sentinels and connections.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let fast = corral::spawn(nap, 10).unwrap();
/// let slow = corral::spawn(nap, 5_000).unwrap();
/// let ready = corral::wait(&[&fast, &slow], Some(Duration::from_secs(2))).unwrap();
/// assert_eq!(ready, vec![0]);
/// slow.kill().unwrap();
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>, Error> {
    let sets: Vec<Vec<BorrowedFd<'_>>> = objects.iter().map(|o| o.wait_fds()).collect();
    let flat: Vec<BorrowedFd<'_>> = sets.iter().flatten().copied().collect();
    let ready = sys::poll_readable(&flat, timeout).map_err(Error::io("waiting"))?;
    let mut out = Vec::new();
    let mut at = 0;
    for (index, set) in sets.iter().enumerate() {
        if ready[at..at + set.len()].iter().any(|&r| r) {
            out.push(index);
        }
        at += set.len();
    }
    Ok(out)
}
