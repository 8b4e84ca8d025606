//! What corral runs when it must start a process by re-execution, and the
//! hooks a host (a language binding) runs around corral's own forks and at a
//! child's exit.
//!
//! corral re-executes in two cases: the fork server of a program that already
//! had threads at [`crate::init`], and every [`StartMethod::Spawn`] child.
//! By default it runs the same executable with the same arguments; the child
//! takes its role before `main`. A host whose executable is not the program
//! (a Python interpreter that loaded corral as an extension module) sets the
//! command instead, or refuses re-execution altogether.
//!
//! [`StartMethod::Spawn`]: crate::StartMethod::Spawn

use std::ffi::{CString, OsString};
use std::sync::Mutex;

use crate::poison;
use crate::{Error, sys};

/// Set in the environment of a child started by a [`Reexec::Command`]: the
/// child takes its role at [`crate::init`], not before `main`.
pub(crate) const ROLE_AT_INIT_ENV: &str = "CORRAL_ROLE_AT_INIT";

/// How corral starts a process by re-execution (see [`set_reexec`]).
///
/// # Examples
///
/// ```no_run
/// // A host program whose children must run a launcher, not itself:
/// corral::set_reexec(corral::Reexec::Command(vec![
///     "/usr/bin/python3".into(), "-c".into(), "import corral".into(),
/// ]));
/// corral::init();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reexec {
    /// Run this process's own executable (`/proc/self/exe`) with its own
    /// arguments; the child takes its role before `main` (the default).
    #[default]
    SameProgram,
    /// Run this command instead (`argv[0]` is the program's path). The child
    /// must load the same build of corral and call [`crate::init`], where it
    /// takes its role (it is told so by its environment), so whatever runs
    /// before `init` is the command's own start-up, not the user's program.
    Command(Vec<OsString>),
    /// Never re-execute: starting a fork server in a program that already
    /// has threads, or a [`StartMethod::Spawn`](crate::StartMethod::Spawn)
    /// child, fails with [`Error::ReexecRefused`].
    Refuse,
}

static HOW: Mutex<Reexec> = Mutex::new(Reexec::SameProgram);

/// Sets how corral re-executes (see [`Reexec`]). Call it before
/// [`crate::init`]: a fork server started before keeps the old setting.
///
/// # Examples
///
/// ```no_run
/// corral::set_reexec(corral::Reexec::Refuse);
/// corral::init();
/// let spawned = corral::Process::builder()
///     .start_method(corral::StartMethod::Spawn)
///     .spawn(|x: u8| x, 1);
/// assert!(matches!(spawned, Err(corral::Error::ReexecRefused(_))));
/// ```
pub fn set_reexec(how: Reexec) {
    *poison::lock(&HOW) = how;
}

/// A re-execution, made ready before the fork: a forked child of a threaded
/// program may not allocate.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    pub(crate) program: CString,
    pub(crate) argv: Vec<CString>,
    /// Entries to add to the child's environment.
    pub(crate) env: Vec<CString>,
    /// The [`Reexec::Command`] it was made from.
    command: Option<Vec<Vec<u8>>>,
}

impl ExecPlan {
    /// The re-execution in force, or [`Error::ReexecRefused`] naming `what`
    /// it was needed for.
    pub(crate) fn current(what: &'static str) -> Result<ExecPlan, Error> {
        let how = poison::lock(&HOW).clone();
        match how {
            Reexec::SameProgram => Ok(ExecPlan::same_program()),
            Reexec::Command(argv) => {
                use std::os::unix::ffi::OsStringExt;
                ExecPlan::command(argv.into_iter().map(OsString::into_vec).collect())
            }
            Reexec::Refuse => Err(Error::ReexecRefused(what)),
        }
    }

    /// This process's own executable and arguments.
    pub(crate) fn same_program() -> ExecPlan {
        ExecPlan {
            program: c"/proc/self/exe".to_owned(),
            argv: sys::own_cmdline(),
            env: Vec::new(),
            command: None,
        }
    }

    /// A command of the host's (see [`Reexec::Command`]).
    pub(crate) fn command(command: Vec<Vec<u8>>) -> Result<ExecPlan, Error> {
        let bad = |_| Error::InvalidArgument("a re-exec command argument holds a NUL byte");
        let argv: Vec<CString> = command
            .iter()
            .map(|a| CString::new(a.clone()))
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        let program = argv.first().cloned().ok_or(Error::InvalidArgument(
            "a re-exec command needs at least a program",
        ))?;
        let flag = CString::new(format!("{ROLE_AT_INIT_ENV}=1")).map_err(bad)?;
        Ok(ExecPlan {
            program,
            argv,
            env: vec![flag],
            command: Some(command),
        })
    }

    /// The host's command, to hand to the fork server with a `Spawn`
    /// request (`None`: the server's own program, which is this one's).
    pub(crate) fn host_command(&self) -> Option<Vec<Vec<u8>>> {
        self.command.clone()
    }

    /// The plan with environment `env` (plus the plan's own entries),
    /// ready to be executed after a fork.
    pub(crate) fn with_env(&self, env: &[CString]) -> sys::ExecArgs {
        let env = env.iter().chain(&self.env).cloned().collect();
        sys::ExecArgs::new(self.program.clone(), self.argv.clone(), env)
    }
}

/// Hooks run around the forks that create corral's children.
struct Hooks {
    before: Vec<fn()>,
    parent: Vec<fn()>,
    child: Vec<fn()>,
    exit: Vec<fn()>,
}

static HOOKS: Mutex<Hooks> = Mutex::new(Hooks {
    before: Vec::new(),
    parent: Vec::new(),
    child: Vec::new(),
    exit: Vec::new(),
});

fn hooks() -> std::sync::MutexGuard<'static, Hooks> {
    poison::lock(&HOOKS)
}

/// Registers functions run around each fork that creates a corral child (a
/// process or a pool worker), like `pthread_atfork` or Python's
/// `os.register_at_fork`: `before` in the forking process just before,
/// `after_in_parent` there just after, `after_in_child` first thing in the
/// child. Under the fork server the forking process is the server (a copy
/// of the program taken at [`crate::init`]); with
/// [`StartMethod::Fork`](crate::StartMethod::Fork) it is the caller. The
/// fork server's own fork runs none of them: the server runs no user code.
/// Register them before [`crate::init`], so the fork server has them too.
///
/// # Examples
///
/// ```no_run
/// fn reseed() { /* e.g. reseed a random generator */ }
/// corral::at_fork(None, None, Some(reseed));
/// corral::init();
/// ```
pub fn at_fork(before: Option<fn()>, after_in_parent: Option<fn()>, after_in_child: Option<fn()>) {
    let mut hooks = hooks();
    hooks.before.extend(before);
    hooks.parent.extend(after_in_parent);
    hooks.child.extend(after_in_child);
}

/// Registers `f` to run in a corral child (a process or a pool worker) when
/// it ends normally: after its task returned, or when a worker retires (its
/// pool closed, or `max_tasks_per_child` reached). Not run when the child is
/// killed, times out or crashes. The place to flush buffers: children end
/// with `_exit`, which runs no `atexit` handler.
///
/// # Examples
///
/// ```no_run
/// fn flush() { use std::io::Write; let _ = std::io::stdout().flush(); }
/// corral::at_child_exit(flush);
/// corral::init();
/// ```
pub fn at_child_exit(f: fn()) {
    hooks().exit.push(f);
}

/// The hooks to run, copied out so none runs under the registry's lock.
fn take(which: impl Fn(&Hooks) -> &Vec<fn()>) -> Vec<fn()> {
    which(&hooks()).clone()
}

/// The fork hooks of one fork: `before` ran when this was made; the child's
/// are copied out beforehand, as a child forked from a threaded process may
/// not take locks or allocate before it runs them.
#[derive(Debug)]
pub(crate) struct ForkHooks {
    child: Vec<fn()>,
}

impl ForkHooks {
    /// Runs the `before` hooks; call just before forking.
    pub(crate) fn before() -> ForkHooks {
        take(|h| &h.before).into_iter().for_each(|f| f());
        ForkHooks {
            child: take(|h| &h.child),
        }
    }

    /// Runs the `after_in_parent` hooks; call just after forking.
    pub(crate) fn after_fork_in_parent() {
        take(|h| &h.parent).into_iter().for_each(|f| f());
    }

    /// Runs the `after_in_child` hooks; call first thing in the child.
    pub(crate) fn in_child(&self) {
        self.child.iter().for_each(|f| f());
    }
}

/// Runs the [`at_child_exit`] hooks.
pub(crate) fn run_at_child_exit() {
    take(|h| &h.exit).into_iter().for_each(|f| f());
}
