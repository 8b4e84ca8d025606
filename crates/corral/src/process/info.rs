//! Who this process is, who started it, and which children it has.

use crate::start::{identity, runtime};
use crate::sys;

/// A process as corral knows it: what [`current_process`],
/// [`parent_process`] and [`active_children`] return.
///
/// # Examples
///
/// ```no_run
/// fn whoami(_: ()) -> (Option<String>, bool, bool) {
///     let me = corral::current_process();
///     (me.name, me.daemon, me.corral_child)
/// }
/// corral::init();
/// let child = corral::Process::builder().name("worker-1").spawn(whoami, ()).unwrap();
/// assert_eq!(child.join().unwrap(), (Some("worker-1".into()), false, true));
/// assert!(!corral::current_process().corral_child);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The process id.
    pub pid: u32,
    /// The name it was given ([`ProcessBuilder::name`](crate::ProcessBuilder::name));
    /// `None` for the main program and unnamed children (Python calls them
    /// `MainProcess` and `Process-N`). Pool workers are `corral-worker`.
    pub name: Option<String>,
    /// Whether it is a daemon (Python's `daemon`; pool workers are).
    pub daemon: bool,
    /// Whether corral started it (a child running a task, or a pool worker).
    pub corral_child: bool,
}

impl ProcessInfo {
    /// Whether the process is still running.
    ///
    /// For a parent, this is a check by pid: corral's children die with
    /// their parent, so a child that asks finds it alive unless it is in the
    /// middle of dying with it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// corral::init();
    /// assert!(corral::current_process().is_alive());
    /// ```
    pub fn is_alive(&self) -> bool {
        sys::process_exists(self.pid as i32)
    }
}

/// This process: its pid, and its name and daemon flag when corral started
/// it. Python's `multiprocessing.current_process()`.
///
/// # Examples
///
/// ```no_run
/// corral::init();
/// let me = corral::current_process();
/// assert_eq!(me.pid, std::process::id());
/// assert!(!me.corral_child);
/// ```
pub fn current_process() -> ProcessInfo {
    let pid = std::process::id();
    match identity::identity() {
        Some(id) => ProcessInfo {
            pid,
            name: id.name,
            daemon: id.daemon,
            corral_child: true,
        },
        None => ProcessInfo {
            pid,
            name: None,
            daemon: false,
            corral_child: false,
        },
    }
}

/// The process that started this one, if corral started it (`None` in the
/// main program). Python's `multiprocessing.parent_process()`.
///
/// Under the fork server the operating system's parent is the server; this
/// is the process that called `spawn`.
///
/// # Examples
///
/// ```no_run
/// fn parent(_: ()) -> Option<u32> { corral::parent_process().map(|p| p.pid) }
/// corral::init();
/// assert_eq!(corral::spawn(parent, ()).unwrap().join().unwrap(), Some(std::process::id()));
/// assert_eq!(corral::parent_process(), None);
/// ```
pub fn parent_process() -> Option<ProcessInfo> {
    let id = identity::identity().filter(|id| id.parent != 0)?;
    Some(ProcessInfo {
        pid: id.parent,
        name: None,
        daemon: false,
        corral_child: false,
    })
}

/// This process's children that are still running (pool workers
/// included), reaping those that have ended. Python's
/// `multiprocessing.active_children()`.
///
/// # Examples
///
/// ```no_run
/// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
/// corral::init();
/// let child = corral::Process::builder().name("napper").spawn(nap, 500).unwrap();
/// let names: Vec<_> = corral::active_children().into_iter().map(|c| c.name).collect();
/// assert!(names.contains(&Some("napper".to_owned())));
/// child.join().unwrap();
/// assert!(corral::active_children().iter().all(|c| c.pid != 0 && c.name.as_deref() != Some("napper")));
/// ```
pub fn active_children() -> Vec<ProcessInfo> {
    runtime::live_children()
        .iter()
        .map(|c| ProcessInfo {
            pid: c.pid(),
            name: c.name().map(str::to_owned),
            daemon: c.daemon(),
            corral_child: true,
        })
        .collect()
}
