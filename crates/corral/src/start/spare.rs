//! Spares: children the fork server forks ahead of need, so that neither a
//! fork nor a round trip to the server is on the path of a start.
//!
//! Once the server has served a first Fork request, and whenever it has had
//! nothing to do for 500 µs and no spare is out, it forks a spare and
//! *offers* it
//! to the parent: an 8-byte message on the control socket, `[pid: i32]
//! [OFFER: i32]`, with three descriptors attached: a pidfd of the spare, the
//! parent's end of the spare's own socket, and the read end of its status
//! pipe. The spare waits on its socket, using no CPU.
//!
//! The parent's next ForkServer start takes the offer: it writes the request
//! (the bytes a start request carries, and the argument's handles) straight
//! to the spare, then tells the server with a `taken` request. The spare runs
//! it exactly as a child forked for it would, and sends its result back on
//! the same socket. So a start costs the parent two `sendmsg`s, creates no
//! descriptor and waits for nobody. Android's pre-forked "unspecialized app
//! processes" are the same idea.
//!
//! Spares serve a program that starts children now and then: a start every
//! 2 ms took half the time with them (`bench/README.md`). Starts that come
//! back to back find none: the fork would take ~100 µs of the two cores the
//! child and its parent are using, so the server forks only when idle, and
//! such starts go through it as before.
//!
//! A spare is the server's child like any other from the moment it is
//! forked: watched, reported on its status pipe when it exits, killed when
//! the parent goes (and by its death signal if the server dies). It ends by
//! itself at end-of-file on its socket (the parent dropped the offer).
//!
//! Where a spare differs from a child forked on request: the fork hooks run
//! when it is forked, not when it is taken; the parent holds three
//! descriptors for it while it is on offer (a child the parent forks
//! directly inherits them, as it inherits any descriptor, until it exits);
//! and if it ends before the server has read the parent's `taken`, the
//! server does not kill what is left of its process group (only pool
//! workers ask for that, and they live long).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use super::child::{Kid, Prepared, child_main};
use super::reexec::{ExecPlan, ForkHooks};
use super::request::{KIND_FORK, KIND_TAKEN, read_request, send_request};
use crate::sys;

/// A spare's name until it is taken (`ps` shows it).
const SPARE_NAME: &std::ffi::CStr = c"corral-spare";

/// The `errno` field of an offer message (a reply carries 0 or an errno).
pub(super) const OFFER: i32 = -1;

/// The server's side of spares.
#[derive(Default)]
pub(super) struct Spares {
    /// The spare on offer (not yet known to be taken), by pid.
    pub(super) offered: Option<i32>,
    /// A Fork request has come: from then on a spare is kept on offer.
    pub(super) wanted: bool,
}

impl Spares {
    /// Forks a spare and offers it on `ctrl`; the spare, to watch as a
    /// child. With none to be had (no process or descriptor left), the
    /// server stops keeping spares, and starts go through it as before.
    pub(super) fn refill(
        &mut self,
        server_pid: i32,
        ctrl: BorrowedFd<'_>,
        plan: &ExecPlan,
    ) -> Option<Kid> {
        let Some((kid, chan, status)) = fork_spare(server_pid, plan) else {
            self.wanted = false;
            return None;
        };
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&kid.pid.to_le_bytes());
        message[4..].copy_from_slice(&OFFER.to_le_bytes());
        let io = [std::io::IoSlice::new(&message)];
        let fds = [kid.pidfd.as_fd(), chan.as_fd(), status.as_fd()];
        if !matches!(sys::send_with_fds(ctrl, &io, &fds), Ok(8)) {
            // The parent is gone (the server sees it on its next read) or
            // out of room: the spare ends at end-of-file on its socket.
            self.wanted = false;
        }
        self.offered = Some(kid.pid);
        Some(kid)
    }

    /// The child `pid` exited (not yet reaped). If it was the spare on
    /// offer, the next one is forked when the server is idle; unless it died
    /// without being taken (killed from outside, dropped by the parent, or
    /// broken by a fork hook): then none is until a start comes to the
    /// server again, so spares that die at once are never forked in a loop.
    /// A spare renames itself when it is taken (`taken` may be read after
    /// its exit: the parent sends it after the request).
    pub(super) fn ended(&mut self, pid: i32) {
        if self.offered.take_if(|p| *p == pid).is_some()
            && sys::name_of(pid).is_none_or(|name| name.as_bytes() == SPARE_NAME.to_bytes())
        {
            self.wanted = false;
        }
    }

    /// The parent took a spare (`meta`: its pid, then whether its group dies
    /// with it). A spare that already exited was reported as it ended.
    pub(super) fn taken(&mut self, kids: &mut [Kid], meta: &[u8]) {
        let Some(pid) = meta
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
        else {
            return;
        };
        self.offered.take_if(|p| *p == pid);
        if let Some(kid) = kids.iter_mut().find(|k| k.pid == pid) {
            kid.group_dies = meta.get(4) == Some(&1);
        }
    }
}

/// Forks a spare: the spare as a child of the server, the parent's end of
/// its socket, and the read end of its status pipe. `plan`: the server's
/// own (a spare never re-executes, but a child's code takes one).
fn fork_spare(server_pid: i32, plan: &ExecPlan) -> Option<(Kid, OwnedFd, OwnedFd)> {
    let (chan, theirs) = sys::socketpair().ok()?;
    let (status_read, status_write) = sys::pipe().ok()?;
    let theirs_raw = sys::raw(&theirs);
    let hooks = ForkHooks::before();
    let forked = sys::fork_with(|| {
        hooks.in_child();
        sys::enter_child(server_pid, true, Some(SPARE_NAME));
        let mut keep = [theirs_raw];
        sys::close_all_except(&mut keep);
        let chan = sys::adopt_inherited_fds(&keep)
            .pop()
            .expect("one descriptor");
        serve_as_spare(chan, server_pid, plan)
    });
    ForkHooks::after_fork_in_parent();
    drop(theirs);
    let pid = forked.ok()?;
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        // It ends at end-of-file on its socket.
        drop(chan);
        let _ = sys::reap_pid(pid);
        return None;
    };
    let kid = Kid {
        pid,
        pidfd,
        status: Some(status_write),
        group_dies: false,
    };
    Some((kid, chan, status_read))
}

/// A spare's life: waits for its one request, then runs it as a child
/// forked for it would, with its socket as the result socket.
fn serve_as_spare(chan: OwnedFd, server_pid: i32, plan: &ExecPlan) -> ! {
    let Ok(Some(request)) = read_request(chan.as_fd()) else {
        sys::exit_immediately(0)
    };
    if request.kind != KIND_FORK {
        sys::exit_immediately(2)
    }
    let mut fds = vec![chan];
    fds.extend(request.fds);
    let prepared = Prepared::new(request.kind, &request.meta, &request.arg, &fds);
    let mut keep: Vec<RawFd> = fds.iter().map(sys::raw).collect();
    child_main(prepared, &mut keep, server_pid, plan, &[])
}

/// The parent's side: a spare it was offered.
#[derive(Debug)]
pub(crate) struct Offer {
    pid: i32,
    pidfd: OwnedFd,
    chan: OwnedFd,
    status: OwnedFd,
}

/// A child started through the fork server.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    /// The socket its result comes on.
    pub(crate) result: OwnedFd,
    /// The pipe on which the server reports its exit status.
    pub(crate) status: OwnedFd,
}

impl Offer {
    /// The descriptors an offer holds.
    pub(super) const FDS: usize = 3;

    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// An offer message's pid and descriptors.
    pub(super) fn new(pid: i32, fds: Vec<OwnedFd>) -> Option<Offer> {
        let [pidfd, chan, status]: [OwnedFd; 3] = fds.try_into().ok()?;
        Some(Offer {
            pid,
            pidfd,
            chan,
            status,
        })
    }

    /// Starts the child: the request to the spare, then `taken` to the
    /// server. `None` if the spare is gone (the request then goes to the
    /// server).
    pub(super) fn start(
        self,
        server: BorrowedFd<'_>,
        request: (&[u8], &[u8], bool),
        handles: &[BorrowedFd<'_>],
    ) -> Option<std::io::Result<Started>> {
        let (meta, arg, group_dies) = request;
        send_request(self.chan.as_fd(), KIND_FORK, meta, arg, handles).ok()?;
        // After the request: woken first, the spare starts while the server,
        // woken second, forks the next one.
        let mut taken = self.pid.to_le_bytes().to_vec();
        taken.push(u8::from(group_dies));
        if let Err(e) = send_request(server, KIND_TAKEN, &taken, &[], &[]) {
            return Some(Err(e));
        }
        // The kernel often wakes the spare on this very CPU; a caller that
        // then watches for its result (`join` does, for 300 µs) would hold
        // the CPU the spare waits for while the other one idles.
        std::thread::yield_now();
        Some(Ok(Started {
            pid: self.pid,
            pidfd: self.pidfd,
            result: self.chan,
            status: self.status,
        }))
    }
}
