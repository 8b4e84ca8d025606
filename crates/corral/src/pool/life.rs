//! The life of one worker process, as one explicit state machine.
//!
//! ```text
//!             Ready                      (holds batches: busy)
//!  Starting ─────────► Ready ◄──────────────────────────────┐
//!     │                  │ Eof / SendClosed / Kill / Stop   │ batches
//!     └──────────────────┴──────────► Leaving(why) ─────────┘
//!                                        │ pidfd readable
//!                                        ▼
//!                                      buried (removed)
//! ```
//!
//! The state machine performs no I/O: the dispatcher feeds it [`Event`]s
//! (a frame said READY, end-of-file was read, a send failed, the pool wants
//! it killed or stopped, time passed) and carries out the [`Action`] it
//! returns (a signal to the worker's process group, closing the channel).
//! "Cannot send", "end-of-file read" and "process exited" are three different
//! events, and a worker cannot hold contradictory flags: it is in exactly one
//! state. Whether it ever said READY is remembered across `Leaving`, because
//! the pool blames start-up failures only on workers that never got there.

use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL for a timed-out worker.
pub(super) const KILL_GRACE: Duration = Duration::from_millis(20);
/// How long a stopping worker may take to exit on its own before it is killed.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why a worker is leaving. Kill reasons name the item they concern, so that
/// the death is blamed on that item only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// It closed its channel (end-of-file read, or sends find it closed): it
    /// is exiting on its own.
    Gone,
    /// The pool is stopping; it was asked to exit.
    Stop,
    /// The pool was terminated; it was killed at once.
    Terminate,
    /// Item `index` of batch `seq` ran past its time limit.
    Timeout { seq: u64, index: usize },
    /// Item `index` of batch `seq` was cancelled while it ran.
    Cancel { seq: u64, index: usize },
    /// Its initializer ran past the task timeout.
    Init,
    /// It held a timed batch and started nothing for longer than the time
    /// limit (stopped with SIGSTOP, say): its unstarted items run elsewhere.
    Stalled,
    /// A send to it failed part-way: its channel can no longer be trusted.
    Broken,
    /// It takes no more work and leaves once what it holds is done.
    Retire(Retire),
}

/// Why a healthy worker is retired between tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retire {
    /// It sat idle past the pool's idle timeout.
    Idle,
    /// The pool was resized below the number of workers.
    Shrink,
    /// Its resident memory grew past the pool's recycling threshold.
    Memory,
}

impl Why {
    /// Whether the pool itself is killing the worker (rather than the
    /// worker ending on its own, or retiring once its work is done).
    pub(super) fn is_kill(self) -> bool {
        !matches!(self, Why::Gone | Why::Retire(_))
    }
}

/// What happened to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// It sent its READY frame.
    Ready,
    /// End-of-file was read from its channel.
    Eof,
    /// A send found its channel closed (`EPIPE`/`ECONNRESET`) before any byte
    /// of the frame left.
    SendClosed,
    /// A send failed after part of a frame left: the stream is corrupt.
    SendBroken,
    /// The pool wants it dead, for this reason.
    Kill(Why),
    /// The pool is closing: it should exit once its channel closes.
    Stop,
    /// The pool was terminated.
    Terminate,
    /// The pool wants it to leave once the work it holds is done.
    Retire(Retire),
    /// A retiring worker holds no more work.
    Drained,
    /// Time passed (escalates a pending SIGKILL).
    Tick,
}

/// What the driver must do after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Nothing,
    /// SIGTERM to the worker and its process group.
    Term,
    /// SIGKILL to the worker and its process group.
    Kill,
    /// Close the pool's end of the channel (the worker's loop then ends).
    Shutdown,
}

/// A worker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Life {
    /// Spawned; has not said READY (batches sent now wait in its socket).
    Starting,
    /// Said READY; takes batches.
    Ready,
    /// Takes no more work and is expected to exit.
    Leaving {
        why: Why,
        said_ready: bool,
        /// When SIGKILL is due, if it has not been sent.
        kill_at: Option<Instant>,
    },
}

impl Life {
    /// Applies `event` at time `now`; returns what the driver must do.
    pub(super) fn on(&mut self, event: Event, now: Instant) -> Action {
        let said_ready = self.said_ready();
        let leave = |why, kill_at| Life::Leaving {
            why,
            said_ready,
            kill_at,
        };
        match (*self, event) {
            (Life::Starting, Event::Ready) => {
                *self = Life::Ready;
                Action::Nothing
            }
            (Life::Leaving { why, kill_at, .. }, Event::Ready) => {
                *self = Life::Leaving {
                    why,
                    said_ready: true,
                    kill_at,
                };
                Action::Nothing
            }
            (Life::Ready, Event::Ready) => Action::Nothing,
            (Life::Starting | Life::Ready, Event::Eof | Event::SendClosed) => {
                *self = leave(Why::Gone, None);
                Action::Nothing
            }
            (Life::Leaving { .. }, Event::Eof | Event::SendClosed) => Action::Nothing,
            (_, Event::SendBroken) => self.on(Event::Kill(Why::Broken), now),
            (_, Event::Kill(why)) => {
                if let Life::Leaving { why: old, .. } = *self
                    && old.is_kill()
                    && old != Why::Stop
                {
                    // Already being killed, for the reason that counts.
                    return Action::Nothing;
                }
                match why {
                    // Nothing to wait for: the item is not wanted, or the
                    // channel is useless.
                    Why::Cancel { .. } | Why::Broken | Why::Stalled | Why::Terminate => {
                        *self = leave(why, None);
                        Action::Kill
                    }
                    _ => {
                        *self = leave(why, Some(now + KILL_GRACE));
                        Action::Term
                    }
                }
            }
            (Life::Starting | Life::Ready, Event::Stop) => {
                *self = leave(Why::Stop, Some(now + EXIT_GRACE));
                Action::Shutdown
            }
            (Life::Starting | Life::Ready, Event::Retire(r)) => {
                *self = leave(Why::Retire(r), None);
                Action::Nothing
            }
            (
                Life::Leaving {
                    why: why @ (Why::Gone | Why::Retire(_)),
                    kill_at: None,
                    ..
                },
                Event::Stop | Event::Drained,
            ) => {
                // It is exiting on its own, or may now: if it lingers, it is
                // killed.
                *self = leave(why, Some(now + EXIT_GRACE));
                Action::Shutdown
            }
            (_, Event::Retire(_) | Event::Drained) => Action::Nothing,
            (Life::Leaving { .. }, Event::Stop) => Action::Nothing,
            (_, Event::Terminate) => {
                let why = match *self {
                    Life::Leaving { why, .. } if why.is_kill() && why != Why::Stop => why,
                    _ => Why::Terminate,
                };
                *self = leave(why, None);
                Action::Kill
            }
            (Life::Leaving { why, kill_at, .. }, Event::Tick) => match kill_at {
                Some(at) if now >= at => {
                    *self = leave(why, None);
                    Action::Kill
                }
                _ => Action::Nothing,
            },
            (_, Event::Tick) => Action::Nothing,
        }
    }

    /// Whether it may be handed batches.
    pub(super) fn takes_work(&self) -> bool {
        matches!(self, Life::Starting | Life::Ready)
    }

    /// Whether it said READY at some point.
    pub(super) fn said_ready(&self) -> bool {
        match *self {
            Life::Starting => false,
            Life::Ready => true,
            Life::Leaving { said_ready, .. } => said_ready,
        }
    }

    /// Why it is leaving, if it is.
    pub(super) fn why(&self) -> Option<Why> {
        match *self {
            Life::Leaving { why, .. } => Some(why),
            _ => None,
        }
    }

    /// Whether the pool is ending it (its time limits no longer apply).
    pub(super) fn being_killed(&self) -> bool {
        self.why().is_some_and(Why::is_kill)
    }

    /// When the driver must next feed it [`Event::Tick`].
    pub(super) fn next_tick(&self) -> Option<Instant> {
        match *self {
            Life::Leaving { kill_at, .. } => kill_at,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn ready_then_busy_then_gone() {
        let mut life = Life::Starting;
        assert!(life.takes_work());
        assert_eq!(life.on(Event::Ready, now()), Action::Nothing);
        assert_eq!(life, Life::Ready);
        assert_eq!(life.on(Event::Eof, now()), Action::Nothing);
        assert!(!life.takes_work());
        assert!(life.said_ready());
        assert_eq!(life.why(), Some(Why::Gone));
        assert!(!life.being_killed());
    }

    #[test]
    fn a_failed_send_to_a_dead_worker_keeps_its_ready_frame() {
        // The send fails first; the READY frame is read while burying.
        let mut life = Life::Starting;
        life.on(Event::SendClosed, now());
        assert!(!life.said_ready());
        life.on(Event::Ready, now());
        assert!(life.said_ready(), "READY read after the failed send counts");
    }

    #[test]
    fn timeout_escalates_after_the_grace() {
        let t0 = now();
        let mut life = Life::Ready;
        let why = Why::Timeout { seq: 3, index: 1 };
        assert_eq!(life.on(Event::Kill(why), t0), Action::Term);
        assert_eq!(life.on(Event::Tick, t0), Action::Nothing);
        assert_eq!(life.next_tick(), Some(t0 + KILL_GRACE));
        assert_eq!(life.on(Event::Tick, t0 + KILL_GRACE), Action::Kill);
        assert_eq!(life.on(Event::Tick, t0 + EXIT_GRACE), Action::Nothing);
        assert_eq!(life.why(), Some(why));
    }

    #[test]
    fn the_first_kill_reason_is_kept() {
        let mut life = Life::Ready;
        let first = Why::Timeout { seq: 1, index: 0 };
        life.on(Event::Kill(first), now());
        assert_eq!(life.on(Event::Kill(Why::Stalled), now()), Action::Nothing);
        assert_eq!(life.on(Event::Eof, now()), Action::Nothing);
        assert_eq!(life.on(Event::Terminate, now()), Action::Kill);
        assert_eq!(life.why(), Some(first));
    }

    #[test]
    fn a_leaving_worker_can_still_be_blamed_for_its_running_item() {
        // It closed its channel but still runs an item: the timeout applies.
        let mut life = Life::Ready;
        life.on(Event::Eof, now());
        let why = Why::Timeout { seq: 1, index: 0 };
        assert_eq!(life.on(Event::Kill(why), now()), Action::Term);
        assert_eq!(life.why(), Some(why));
        // So does stopping: a stop is overridden by a timeout.
        let mut life = Life::Ready;
        assert_eq!(life.on(Event::Stop, now()), Action::Shutdown);
        assert_eq!(life.on(Event::Kill(why), now()), Action::Term);
        assert_eq!(life.why(), Some(why));
    }

    #[test]
    fn stop_gives_an_exit_grace_then_kills() {
        let t0 = now();
        let mut life = Life::Ready;
        assert_eq!(life.on(Event::Stop, t0), Action::Shutdown);
        // The dispatcher repeats the event each round: the timer stands.
        assert_eq!(life.on(Event::Stop, t0 + KILL_GRACE), Action::Nothing);
        assert_eq!(life.on(Event::Tick, t0 + KILL_GRACE), Action::Nothing);
        assert_eq!(life.on(Event::Tick, t0 + EXIT_GRACE), Action::Kill);
    }

    #[test]
    fn a_worker_exiting_on_its_own_is_killed_only_if_it_lingers() {
        let t0 = now();
        let mut life = Life::Ready;
        life.on(Event::Eof, t0);
        assert_eq!(life.next_tick(), None);
        assert_eq!(life.on(Event::Stop, t0), Action::Shutdown);
        assert_eq!(life.on(Event::Stop, t0 + KILL_GRACE), Action::Nothing);
        assert_eq!(life.on(Event::Tick, t0 + EXIT_GRACE), Action::Kill);
        assert!(!life.being_killed(), "still its own death, not the pool's");
    }

    #[test]
    fn a_retiring_worker_finishes_its_work_then_leaves() {
        let t0 = now();
        let mut life = Life::Ready;
        let why = Why::Retire(Retire::Memory);
        assert_eq!(life.on(Event::Retire(Retire::Memory), t0), Action::Nothing);
        assert!(!life.takes_work());
        assert!(!life.being_killed(), "its items keep their time limits");
        assert_eq!(life.next_tick(), None);
        assert_eq!(life.on(Event::Drained, t0), Action::Shutdown);
        assert_eq!(life.on(Event::Drained, t0), Action::Nothing);
        assert_eq!(life.on(Event::Tick, t0 + EXIT_GRACE), Action::Kill);
        assert_eq!(life.why(), Some(why));
        // A timeout while it retires still kills it, for that item.
        let mut life = Life::Ready;
        life.on(Event::Retire(Retire::Idle), t0);
        let timeout = Why::Timeout { seq: 1, index: 0 };
        assert_eq!(life.on(Event::Kill(timeout), t0), Action::Term);
        assert_eq!(life.why(), Some(timeout));
    }

    #[test]
    fn a_partial_send_kills_at_once() {
        let mut life = Life::Starting;
        assert_eq!(life.on(Event::SendBroken, now()), Action::Kill);
        assert_eq!(life.why(), Some(Why::Broken));
        assert!(!life.said_ready());
    }
}
