//! Start methods and the child bootstrap.
//!
//! * [`StartMethod::ForkServer`] (the default): at [`crate::init`], while the
//!   program is still single-threaded, corral forks a small server. Children
//!   are forked from that clean server, never from your (possibly
//!   multi-threaded) program. Fast and safe. Once you have started one
//!   child, the server forks one more ahead of need whenever it is idle
//!   (named `corral-spare` in `ps`, using no CPU), which the next start
//!   takes: that start then waits for neither a fork nor the server. The
//!   server ends when your program does, and then kills everything it
//!   started or watches, with their process groups; it holds `SIGTERM`,
//!   `SIGINT`, `SIGHUP` and `SIGQUIT` blocked (its children do not), so that
//!   a `pkill -f your-program` that reaches it too still finds it there to
//!   do so.
//! * [`StartMethod::Spawn`]: the server forks and the child re-executes the
//!   current binary (`/proc/self/exe`), which runs `main` up to
//!   `corral::init()` and then the task. Slowest and most isolated; the basis
//!   for running the same binary on other machines.
//! * [`StartMethod::Fork`]: fork the caller directly. The only method that can
//!   run a capturing closure ([`crate::ProcessBuilder::fork_closure`]). The
//!   child is a copy of your program with only the calling thread: a lock that
//!   another thread held at that instant stays locked in the child, so a child
//!   that touches such a lock deadlocks (it is not memory-unsafe). Prefer it
//!   only for single-threaded programs or when the closure touches no shared
//!   locks. When your program dies, its Fork children die with the
//!   subprocesses they started (their process group), as under the other
//!   methods; but a descendant that left the group (`setsid`, a
//!   double-forking daemon) is found only under ForkServer and Spawn, whose
//!   server adopts it (it is a child subreaper): a Fork child's is adopted
//!   by init and outlives your program.
//!
//! A task crosses into a ForkServer or Spawn child as data: the offsets of its
//! function and a typed entry point, and the serialized argument. Before it
//! resolves those offsets the child checks that it runs the same binary as the
//! parent (its ELF build-id) and refuses with a clear error otherwise.

pub(crate) mod bootstrap;
mod child;
pub(crate) mod forkserver;
pub(crate) mod identity;
pub(crate) mod orphans;
pub(crate) mod reexec;
mod request;
pub(crate) mod runtime;
pub(crate) mod spare;

/// How a child process is created.
///
/// # Examples
///
/// ```no_run
/// use corral::{Process, StartMethod};
/// fn square(x: u64) -> u64 { x * x }
/// corral::init();
/// for method in [StartMethod::ForkServer, StartMethod::Spawn, StartMethod::Fork] {
///     let child = Process::builder().start_method(method).spawn(square, 7).unwrap();
///     assert_eq!(child.join().unwrap(), 49);
/// }
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum StartMethod {
    /// Fork from a clean single-threaded server started at [`crate::init`].
    ///
    /// Once it has served 16 starts and is idle, the server copies the code
    /// and read-only data of the program and its libraries into transparent
    /// huge pages, where the machine has them (whole huge pages of them
    /// only), so that its children start without a page fault for each
    /// 64 KiB of code they run (a `fork` copies no page tables of a file's
    /// mapping). Debuggers and
    /// profilers then find no file behind those addresses in the server and
    /// its children; the environment variable `CORRAL_HUGE_CODE=0`, set
    /// before [`crate::init`], keeps them mapped from the file.
    #[default]
    ForkServer,
    /// Re-execute the current binary.
    Spawn,
    /// Fork the calling process directly.
    Fork,
}
