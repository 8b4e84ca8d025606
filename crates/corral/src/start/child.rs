//! A fork server's child: what the server prepares for it before the fork,
//! what the child does on its way to its task, and the server's record of
//! it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use super::bootstrap::{self, BOOT_ENV, Ending, Outcome, StartMeta};
use super::reexec::ExecPlan;
use super::request::KIND_FORK;
use crate::sys;

/// A child of the server, forked or watched.
pub(super) struct Kid {
    pub(super) pid: i32,
    pub(super) pidfd: OwnedFd,
    /// The status pipe for children the server forked; `None` for watched ones.
    pub(super) status: Option<OwnedFd>,
    /// Kill what is left of its process group when it exits.
    pub(super) group_dies: bool,
}

/// The environment for re-executed children: `entries` as C strings.
pub(super) fn c_entries(entries: Vec<Vec<u8>>) -> Vec<CString> {
    entries
        .into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect()
}

/// A start request, decoded and made ready before the child runs it.
pub(super) struct Prepared<'a> {
    kind: u32,
    start: Result<StartMeta, String>,
    meta: &'a [u8],
    arg: &'a [u8],
    name: Option<CString>,
    /// The argument's handles (the result socket is `keep[0]`).
    handles: Vec<RawFd>,
    /// The parent's working directory, where it differs from ours.
    cwd: Option<CString>,
    /// The parent's environment, where it differs from ours.
    env: Option<Vec<CString>>,
}

impl<'a> Prepared<'a> {
    /// Decodes a request whose descriptors are `fds` (the result socket, then
    /// the argument's handles). The server prepares before it forks: each
    /// allocation in the child would cost it copy-on-write faults.
    pub(super) fn new(kind: u32, meta: &'a [u8], arg: &'a [u8], fds: &[OwnedFd]) -> Prepared<'a> {
        let start = postcard::from_bytes::<StartMeta>(meta).map_err(|e| e.to_string());
        let meta_ok = start.as_ref().ok();
        // Unnamed children would keep the server's name: `ps` would show a
        // row of "corral-server"s.
        let name = sys::process_name(
            meta_ok
                .and_then(|m| m.name.as_deref())
                .unwrap_or("corral-child"),
        );
        let context = meta_ok.map(|m| m.context.clone()).unwrap_or_default();
        Prepared {
            kind,
            name,
            handles: fds.iter().skip(1).map(sys::raw).collect(),
            cwd: context.cwd.and_then(|d| CString::new(d).ok()),
            env: context.env.map(c_entries),
            start,
            meta,
            arg,
        }
    }

    /// Whether the child runs the task itself (a Fork start), rather than
    /// re-executing the binary.
    pub(super) fn is_fork(&self) -> bool {
        self.kind == KIND_FORK
    }

    /// Whether what is left of the child's process group is killed when it
    /// exits (a pool worker's).
    pub(super) fn group_dies(&self) -> bool {
        self.start.as_ref().is_ok_and(|m| m.group_dies)
    }
}

pub(super) fn child_main(
    prepared: Prepared<'_>,
    keep: &mut [RawFd],
    server_pid: i32,
    plan: &ExecPlan,
    env: &[CString],
) -> ! {
    sys::enter_child(server_pid, true, prepared.name.as_deref());
    // The server blocks SIGCHLD for its signalfd, and the signals that ask
    // a process to end; the child must not.
    sys::unblock_server_signals();
    let result_raw = keep[0];
    sys::close_all_except(keep);
    let result = sys::adopt_inherited_fds(&[result_raw])
        .pop()
        .expect("the result socket");
    bootstrap::keep_result_fd(result.as_fd());
    let handles = sys::adopt_inherited_fds(&prepared.handles);
    if let Some(cwd) = &prepared.cwd
        && let Err(e) = sys::chdir(cwd)
    {
        bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("entering the parent's directory {cwd:?}: {e}")),
            Ending::Quick,
        )
    }
    let start = match prepared.start {
        Ok(start) => start,
        Err(e) => bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("corrupt start message: {e}")),
            Ending::Quick,
        ),
    };
    if prepared.kind == KIND_FORK {
        if let Some(env) = &prepared.env {
            sys::replace_env(env);
        }
        let outcome = bootstrap::run_task(&start, prepared.arg, handles);
        bootstrap::finish(result.as_fd(), outcome, Ending::Quick)
    }
    let env = prepared.env.as_deref().unwrap_or(env);
    // The parent's own command, if it set one; else ours (the same program).
    let own;
    let plan = match start.exec.clone().map(ExecPlan::command) {
        Some(Ok(parents)) => {
            own = parents;
            &own
        }
        Some(Err(e)) => bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("the re-exec command: {e}")),
            Ending::Quick,
        ),
        None => plan,
    };
    let failure = match exec_child(prepared.meta, prepared.arg, &result, &handles, plan, env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    bootstrap::finish(
        result.as_fd(),
        Outcome::Refused(format!("re-executing the binary failed: {failure}")),
        Ending::Quick,
    )
}

fn exec_child(
    meta_bytes: &[u8],
    arg: &[u8],
    result: &OwnedFd,
    handles: &[OwnedFd],
    plan: &ExecPlan,
    env: &[CString],
) -> io::Result<std::convert::Infallible> {
    let memfd = sys::memfd_with(&bootstrap::boot_file(meta_bytes, arg))?;
    for fd in handles.iter().chain([&memfd, result]) {
        sys::set_cloexec(fd.as_fd(), false)?;
    }
    let raws: Vec<RawFd> = handles.iter().map(sys::raw).collect();
    let spec = bootstrap::boot_spec(sys::raw(&memfd), sys::raw(result), &raws);
    let mut env = env.to_vec();
    env.push(sys::c_string(format!("{BOOT_ENV}={spec}").as_bytes())?);
    Err(plan.with_env(&env).exec())
}
