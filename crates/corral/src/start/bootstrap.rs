//! The child side of a start: run the task, report its outcome, exit.
//!
//! The outcome travels back as one frame on the child's result socket: a tag
//! byte followed by the encoded value, panic, refusal or codec error. A child
//! that dies before writing a whole frame is reported through its exit status.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use serde::{Deserialize, Serialize};

use crate::sys::code::{Verified, code_pointer};
use crate::{CodecError, Data, ProcessError, RemotePanic, sys, wire};

/// What the parent sends with a start request, except the argument bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StartMeta {
    /// The parent's [`sys::executable_identity`].
    pub(crate) identity: Vec<u8>,
    /// Offset of the typed entry point (a [`trampoline`]).
    pub(crate) entry: i64,
    /// Offset of the user's function.
    pub(crate) func: i64,
    /// The child's name, for `ps` and [`crate::current_process`].
    pub(crate) name: Option<String>,
    /// Whether it is a daemon (for [`crate::current_process`]).
    pub(crate) daemon: bool,
    /// The pid of the process that asked for it (its parent for
    /// [`crate::parent_process`], whoever forked it).
    pub(crate) parent: u32,
    /// Its nesting depth (its parent's plus one).
    pub(crate) depth: u32,
    /// Kill what is left of its process group when it exits.
    pub(crate) group_dies: bool,
    /// Where the parent's working directory and environment differ from the
    /// fork server's.
    pub(crate) context: StartContext,
    /// For a `Spawn` child: the parent's re-exec command, if it set one
    /// (else the server runs its own program, which is the parent's).
    pub(crate) exec: Option<Vec<Vec<u8>>>,
}

/// The parent's working directory and environment at the start, sent only
/// where they changed since the fork server started (Python's children
/// follow the parent's current directory and `os.environ`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StartContext {
    /// The working directory, as bytes.
    pub(crate) cwd: Option<Vec<u8>>,
    /// The whole environment, `KEY=VALUE` entries.
    pub(crate) env: Option<Vec<Vec<u8>>>,
}

/// The signature of a task entry point (a monomorphized trampoline).
pub(crate) type Entry = fn(&Verified, i64, &[u8], Vec<OwnedFd>) -> Outcome;
code_pointer!(Entry);

/// How a task ended, as the child reports it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The encoded value, and the value itself: dropped only after the
    /// bytes are written, so a `Drop` that kills the child loses nothing.
    Value(Vec<u8>, Box<dyn std::any::Any>),
    Panic(RemotePanic),
    Refused(String),
    Codec(CodecError),
}

const TAG_VALUE: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_REFUSED: u8 = 2;
const TAG_CODEC: u8 = 3;

impl Outcome {
    /// The child's exit code for this outcome (1 for a panic, like Python's
    /// exit code for an uncaught exception).
    fn exit_code(&self) -> i32 {
        match self {
            Outcome::Value(..) => 0,
            Outcome::Panic(_) => 1,
            Outcome::Refused(_) => 2,
            Outcome::Codec(_) => 3,
        }
    }

    /// Writes the outcome as one frame.
    pub(crate) fn write_to(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let encoded;
        let (tag, body): (u8, &[u8]) = match self {
            Outcome::Value(bytes, _) => (TAG_VALUE, bytes),
            Outcome::Panic(p) => {
                encoded = postcard::to_stdvec(p).unwrap_or_default();
                (TAG_PANIC, &encoded)
            }
            Outcome::Refused(msg) => (TAG_REFUSED, msg.as_bytes()),
            Outcome::Codec(e) => (TAG_CODEC, e.message().as_bytes()),
        };
        wire::write_frame(fd, &[&[tag], body], &[])
    }
}

/// Turns a result frame into the task's value or error.
pub(crate) fn decode_outcome<R: Data>(frame: &[u8]) -> Result<R, ProcessError> {
    let Some((&tag, body)) = frame.split_first() else {
        return Err(ProcessError::Codec(CodecError::new("empty result frame")));
    };
    let text = || String::from_utf8_lossy(body).into_owned();
    match tag {
        TAG_VALUE => wire::decode(body, Vec::new()).map_err(ProcessError::Codec),
        TAG_PANIC => match postcard::from_bytes::<RemotePanic>(body) {
            Ok(p) => Err(ProcessError::Panicked(p)),
            Err(e) => Err(ProcessError::Codec(CodecError::new(format!(
                "bad panic report: {e}"
            )))),
        },
        TAG_REFUSED => Err(ProcessError::Refused(text())),
        TAG_CODEC => Err(ProcessError::Codec(CodecError::new(text()))),
        _ => Err(ProcessError::Codec(CodecError::new(format!(
            "unknown result tag {tag}"
        )))),
    }
}

/// The entry offset for tasks of type `fn(A) -> R`.
pub(crate) fn entry_offset<A: Data, R: Data>() -> i64 {
    sys::code::offset_of(trampoline::<A, R> as Entry as usize)
}

/// The function offset of `f`.
pub(crate) fn func_offset<A, R>(f: fn(A) -> R) -> i64 {
    sys::code::offset_of(sys::code::fn_addr(f))
}

fn trampoline<A: Data, R: Data>(
    verified: &Verified,
    func: i64,
    arg: &[u8],
    fds: Vec<OwnedFd>,
) -> Outcome {
    let f = verified.func::<A, R>(func);
    match wire::decode::<A>(arg, fds) {
        Ok(arg) => run_body(move || f(arg)),
        Err(e) => Outcome::Codec(CodecError::new(format!("the argument: {}", e.message()))),
    }
}

/// Runs a start message's task: checks the binary, then calls the entry.
pub(crate) fn run_task(meta: &StartMeta, arg: &[u8], fds: Vec<OwnedFd>) -> Outcome {
    super::identity::set_identity(super::identity::Identity {
        name: meta.name.clone(),
        daemon: meta.daemon,
        parent: meta.parent,
        depth: meta.depth,
    });
    match Verified::check(&meta.identity) {
        Ok(verified) => (verified.entry::<Entry>(meta.entry))(&verified, meta.func, arg, fds),
        Err(why) => Outcome::Refused(why),
    }
}

/// How a panic is reported when panics abort (`panic = "abort"`): the
/// process dies inside the hook, so the report must leave from there.
type AbortReport = Box<dyn Fn(&RemotePanic)>;

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<PanicPlace>> = const { RefCell::new(None) };
    /// This thread's report for an aborting panic (a pool worker's: a
    /// record for the running item); without one, the child's outcome.
    static ABORT_REPORT: RefCell<Option<AbortReport>> = const { RefCell::new(None) };
}

/// A copy of this child's result socket, for a report written from the
/// panic hook when panics abort (each process its own).
static RESULT: sys::ForkLocal<std::sync::OnceLock<OwnedFd>> =
    sys::ForkLocal::new(std::sync::OnceLock::new);

/// Keeps a copy of this child's result socket, when panics abort: the panic
/// hook reports through it before the process dies.
pub(crate) fn keep_result_fd(result: BorrowedFd<'_>) {
    if cfg!(panic = "abort")
        && let Ok(copy) = result.try_clone_to_owned()
    {
        let _ = RESULT.get().set(copy);
    }
}

/// Sets how this thread reports a panic when panics abort.
pub(crate) fn set_abort_report(report: AbortReport) {
    ABORT_REPORT.with(|r| *r.borrow_mut() = Some(report));
}

pub(crate) fn install_panic_hook() {
    // And count forks, for `catch_panic_hooked` (a re-executed child has
    // not counted them yet).
    sys::watch_forks();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAPTURING.get() {
                return previous(info);
            }
            let location = info.location().map(|l| l.to_string());
            // Symbols are looked up only when the report is written (the
            // costly part, about 50 µs a panic here): a `map_pod` range that goes
            // on after a panic keeps only its first.
            let backtrace = Backtrace::force_capture();
            if cfg!(panic = "abort") {
                // No unwinding will bring the report back to the caller:
                // say it now, on stderr and to the parent.
                previous(info);
                let report = RemotePanic {
                    message: info.payload_as_str().unwrap_or("Box<dyn Any>").to_owned(),
                    location,
                    backtrace: backtrace.to_string(),
                    pid: sys::getpid() as u32,
                    exit_status: None,
                };
                report_abort(&report);
                return;
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, backtrace)));
        }));
    });
}

/// Sends the report of a panic that is about to abort the process.
fn report_abort(report: &RemotePanic) {
    let handled = ABORT_REPORT.with(|r| match r.try_borrow().ok().as_deref() {
        Some(Some(report_to)) => {
            report_to(report);
            true
        }
        _ => false,
    });
    if !handled && let Some(result) = RESULT.get_if_built().and_then(|r| r.get()) {
        let _ = Outcome::Panic(report.clone()).write_to(result.as_fd());
    }
}

/// Runs `body` in this child, catching a panic as data.
pub(crate) fn run_body<R: serde::Serialize + 'static>(body: impl FnOnce() -> R) -> Outcome {
    match catch_panic(body) {
        Ok(value) => match wire::encode(&value) {
            Ok(encoded) if encoded.fds.is_empty() => Outcome::Value(encoded.bytes, Box::new(value)),
            Ok(_) => Outcome::Codec(CodecError::new(
                "the result contains corral handles; send handles over a Pipe instead",
            )),
            Err(e) => Outcome::Codec(CodecError::new(format!("the result: {}", e.message()))),
        },
        Err(panic) => Outcome::Panic(panic),
    }
}

/// Runs `body`, turning a panic into a [`RemotePanic`] report (message,
/// location and backtrace of this process).
pub(crate) fn catch_panic<R>(body: impl FnOnce() -> R) -> Result<R, RemotePanic> {
    install_panic_hook();
    catch_panic_hooked(body)
}

/// [`catch_panic`] for callers that ran [`install_panic_hook`] already (a
/// pool worker, once, rather than once per item).
#[inline]
pub(crate) fn catch_panic_hooked<R>(body: impl FnOnce() -> R) -> Result<R, RemotePanic> {
    let forks = sys::forks();
    CAPTURING.set(true);
    let result = catch_unwind(AssertUnwindSafe(body));
    CAPTURING.set(false);
    if sys::forks() != forks {
        leave_as_a_forked_copy();
    }
    result.map_err(|payload| {
        let message = crate::error::panic_message(&*payload);
        let (location, backtrace) = match LAST_PANIC.with(|p| p.borrow_mut().take()) {
            Some((location, backtrace)) => (location, backtrace.to_string()),
            None => (None, String::new()),
        };
        // The payload may itself panic on drop; keep it out of the report.
        std::mem::forget(payload);
        RemotePanic {
            message,
            location,
            backtrace,
            pid: sys::getpid() as u32,
            exit_status: None,
        }
    })
}

/// Ends a process that the user's code forked and that returned into
/// corral's (a task's `fork` whose child returned too): a copy of this
/// worker or child, which would otherwise report its outcome in the
/// original's place and, in a worker, go on taking its tasks.
#[cold]
pub(crate) fn leave_as_a_forked_copy() -> ! {
    eprintln!(
        "corral: a task forked, and its child (pid {}) returned into corral: \
         it ends here; end a forked child with _exit (or exec)",
        sys::getpid()
    );
    sys::exit_immediately(0)
}

/// The first panic of a run of items that goes on after a panic (the items
/// of a `map_pod` range), held until the run ends and then raised again
/// with its own location and backtrace, inside the [`catch_panic_hooked`]
/// that runs the whole range. Later panics are dropped.
#[derive(Default)]
pub(crate) struct FirstPanic(Option<(Box<dyn std::any::Any + Send>, Option<PanicPlace>)>);

/// Where a panic happened (its location) and its backtrace, captured but
/// not yet resolved to symbols.
type PanicPlace = (Option<String>, Backtrace);

impl FirstPanic {
    /// Runs one item; `None` if it panicked.
    #[inline]
    pub(crate) fn run<R>(&mut self, body: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(value) => Some(value),
            Err(payload) => {
                let place = LAST_PANIC.with(|p| p.borrow_mut().take());
                match self.0 {
                    None => self.0 = Some((payload, place)),
                    // It may itself panic on drop; as `catch_panic_hooked`.
                    Some(_) => std::mem::forget(payload),
                }
                None
            }
        }
    }

    /// Raises the first panic again, if there was one.
    pub(crate) fn raise(self) {
        if let Some((payload, place)) = self.0 {
            LAST_PANIC.with(|p| *p.borrow_mut() = place);
            std::panic::resume_unwind(payload);
        }
    }
}

/// What a child that ends with `_exit` does first, in place of the exit
/// handlers it skips: the runtime's ending of this process's own children
/// (joined, or terminated if daemons; [`crate::init`]). Set by the runtime
/// once this process tracks children or a fork server of its own; a
/// process forked from it keeps the function, which finds nothing there
/// until that process has its own.
static BEFORE_QUICK_EXIT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets [`BEFORE_QUICK_EXIT`] (the first call only).
pub(crate) fn before_quick_exit(end_children: fn()) {
    let _ = BEFORE_QUICK_EXIT.set(end_children);
}

/// How a child ends once its outcome is reported.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ending {
    /// A child of the fork server or a re-executed one: it started with a
    /// single thread of its own. It joins its own children, flushes stdout and
    /// stderr and calls `_exit`, like Python's children (`os._exit`): exit
    /// handlers of libraries do not run, and the ~50 µs they cost is saved.
    Quick,
    /// A child forked from a program that may have other threads: a lock
    /// such as stdout's may be held forever by a thread that did not come
    /// along. It exits through `std::process::exit`, which only try-locks.
    Careful,
}

/// Reports `outcome` on `result` and ends the child.
///
/// Either way, this child's own non-daemon children are joined first and its
/// daemons terminated (see [`crate::init`]).
pub(crate) fn finish(result: BorrowedFd<'_>, outcome: Outcome, ending: Ending) -> ! {
    let code = outcome.exit_code();
    if matches!(outcome, Outcome::Value(..)) {
        // Before the result leaves: what the hooks flush is out by the time
        // the parent sees the child end.
        super::reexec::run_at_child_exit();
    }
    if outcome.write_to(result).is_err() {
        // The parent is gone or stopped listening: nobody wants the result.
        sys::exit_immediately(code);
    }
    // The value's own `Drop` runs only now, after its bytes left.
    if let Outcome::Value(_, value) = outcome {
        drop(value);
    }
    match ending {
        Ending::Quick => {
            if let Some(end_children) = BEFORE_QUICK_EXIT.get() {
                end_children();
            }
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            sys::exit_immediately(code)
        }
        Ending::Careful => std::process::exit(code),
    }
}

/// Environment variable through which an exec'd child finds its start message.
pub(crate) const BOOT_ENV: &str = "CORRAL_BOOT";

/// Serializes the boot descriptor list for an exec'd child.
pub(crate) fn boot_spec(memfd: RawFd, result: RawFd, handles: &[RawFd]) -> String {
    let mut spec = format!("{memfd},{result}");
    for fd in handles {
        spec.push_str(&format!(",{fd}"));
    }
    spec
}

/// The body of a boot file: `[meta length: u32 LE][meta][argument]`.
pub(crate) fn boot_file(meta: &[u8], arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + meta.len() + arg.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(arg);
    out
}

/// Entry of a child started by re-execution: called by `init()` when
/// [`BOOT_ENV`] is set. Never returns.
pub(crate) fn run_exec_child(spec: &OsStr) -> ! {
    let numbers: Option<Vec<RawFd>> = spec
        .to_str()
        .and_then(|s| s.split(',').map(str::parse).collect::<Result<_, _>>().ok());
    let Some(numbers) = numbers.filter(|n| n.len() >= 2 && n.iter().all(|&fd| sys::is_open(fd)))
    else {
        eprintln!("corral: malformed {BOOT_ENV}={spec:?}; this process was not started by corral");
        sys::exit_immediately(2);
    };
    let mut fds = sys::adopt_inherited_fds(&numbers).into_iter();
    let (memfd, result) = (fds.next().expect("checked"), fds.next().expect("checked"));
    let handles: Vec<OwnedFd> = fds.collect();
    for fd in handles.iter().chain([&memfd, &result]) {
        let _ = sys::set_cloexec(fd.as_fd(), true);
    }
    keep_result_fd(result.as_fd());
    let outcome = match read_boot_file(memfd) {
        Ok((meta, arg)) => {
            // exec gave the process the binary's name: give it its own back.
            if let Some(name) = meta.name.as_deref().and_then(sys::process_name) {
                sys::set_process_name(&name);
            }
            run_task(&meta, &arg, handles)
        }
        Err(why) => Outcome::Refused(why),
    };
    finish(result.as_fd(), outcome, Ending::Quick)
}

fn read_boot_file(memfd: OwnedFd) -> Result<(StartMeta, Vec<u8>), String> {
    let bytes = std::fs::read(format!("/proc/self/fd/{}", sys::raw(&memfd)))
        .map_err(|e| format!("reading the start message: {e}"))?;
    drop(memfd);
    let meta_len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("start message too short")?;
    let meta_bytes = bytes
        .get(4..4 + meta_len)
        .ok_or("start message truncated")?;
    let meta: StartMeta =
        postcard::from_bytes(meta_bytes).map_err(|e| format!("corrupt start message: {e}"))?;
    Ok((meta, bytes[4 + meta_len..].to_vec()))
}
