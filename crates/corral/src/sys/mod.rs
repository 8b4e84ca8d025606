//! The operating-system boundary: the only module with FFI and `unsafe`.
//!
//! # Contract
//!
//! Everything above this module speaks in owned, I/O-safe types (`OwnedFd`,
//! `BorrowedFd`, [`Pid`](rustix::process::Pid)) and typed errors. This module provides:
//!
//! * process creation ([`fork_with`], [`ExecArgs`]) and reaping through pidfds
//!   ([`pidfd_open`], [`reap`]), signals ([`signal`], [`signal_group`]);
//! * child setup after fork ([`enter_child`], [`close_all_except`]);
//! * sockets and pipes that carry file descriptors ([`send_with_fds`],
//!   [`recv_with_fds`]) and readiness ([`poll_readable`]);
//! * process-global state that is fresh in every forked child ([`ForkLocal`]);
//! * function addresses that survive re-execution ([`code`]);
//! * external programs run as jobs: limits set between `fork` and `exec`
//!   ([`limit_at_exec`]), reaping with resource usage ([`reap_with_usage`]),
//!   signals to a job's process group ([`signal_group_number`]);
//! * shared memory ([`SharedRegion`]), memory that other processes fill
//!   ([`Landing`]), resource limits and the clock that pool workers and
//!   their supervisor share.
//!
//! Linux is the supported platform (pidfd, memfd, `prctl`, `close_range`).
#![expect(unsafe_code, reason = "this module is the FFI boundary of the crate")]

pub(crate) mod code;
mod exe;
mod futex;
mod global;
mod job;
mod landing;
mod linux;
mod shm;
mod text;

pub(crate) use exe::executable_identity;
pub(crate) use futex::*;
pub(crate) use global::{
    ForkLocal, close_in_forked_children, close_inherited_connection, forks, new_process_generation,
    watch_forks,
};
pub(crate) use job::*;
pub(crate) use landing::Landing;
pub(crate) use linux::*;
pub(crate) use shm::{SharedLayout, SharedRegion, shared_layout};
pub(crate) use text::HugeCode;

/// Runs `$f` (an `fn()`) before `main`, from the program's `.init_array`
/// (after the standard library's own start-up entries, which are ordered
/// first), so that a re-executed child or fork server takes its role before
/// any code of `main` runs.
macro_rules! before_main {
    ($f:path) => {
        #[used]
        #[allow(unsafe_code)]
        // SAFETY: the entry is a plain `extern "C" fn()` that the C runtime
        // calls once at load; it only calls `$f`, a safe Rust function.
        #[unsafe(link_section = ".init_array")]
        static BEFORE_MAIN: extern "C" fn() = {
            extern "C" fn before_main() {
                $f();
            }
            before_main
        };
    };
}
pub(crate) use before_main;
