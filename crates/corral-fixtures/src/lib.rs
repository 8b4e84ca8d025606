//! Functions and programs that misbehave on purpose, for corral's tests.
//!
//! The functions are spawn targets (`corral::spawn(corral_fixtures::segfault,
//! ())`): each really crashes, exits or hangs the process that runs it. The
//! binaries are whole corral programs for scenarios a test cannot stage in
//! its own process: a parent that gets SIGKILLed, a program that forgets
//! `corral::init()`, a program that exits with daemon and non-daemon children.
#![expect(unsafe_code, reason = "crashing on purpose needs raw signals")]

use std::time::Duration;

/// Kills the calling process with a real `SIGSEGV`: a store to an unmapped
/// address (Rust's stack-overflow handler lets such a fault through).
pub fn segfault(_: ()) {
    let unmapped = std::hint::black_box(16usize) as *mut u8;
    // SAFETY: not safe at all, on purpose: the store faults and the process
    // dies of SIGSEGV before anything can observe it.
    unsafe { unmapped.write_volatile(1) };
    unreachable!("the store faults");
}

/// Aborts the calling process (`SIGABRT`).
pub fn abort(_: ()) {
    std::process::abort()
}

/// SIGKILLs the calling process.
pub fn kill_self(_: ()) {
    // SAFETY: kill with our own pid has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL is fatal");
}

/// Exits with `code` without returning a result.
pub fn exit_with(code: i32) {
    std::process::exit(code)
}

/// Takes `SIGINT`'s default action back, tells `ready` its pid, and hangs.
/// A test runner started in a non-interactive shell's background has
/// `SIGINT` ignored, and its children inherit that; this one ends on it.
pub fn hang_until_sigint(ready: corral::Queue<u32>) {
    // SAFETY: installing SIG_DFL involves no handler code and no memory.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let _ = ready.put(std::process::id());
    hang(());
}

/// Never returns.
pub fn hang<T>(_: T) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Allocates and fills `bytes` of memory; returns how many it filled. Under a
/// memory limit smaller than `bytes`, the allocation fails and the process
/// aborts.
pub fn allocate(bytes: u64) -> u64 {
    let block = std::hint::black_box(vec![1u8; bytes as usize]);
    block.len() as u64
}

/// A value whose serialization always fails (it deserializes from a unit).
#[derive(Debug)]
pub struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unserializable refuses to be serialized",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unserializable)
    }
}

/// A value that serializes (as a unit) but never deserializes.
#[derive(Debug)]
pub struct Undeserializable;

impl serde::Serialize for Undeserializable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for Undeserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "Undeserializable refuses to be deserialized",
        ))
    }
}

/// Returns a value that cannot be serialized.
pub fn make_unserializable(_: ()) -> Unserializable {
    Unserializable
}

/// Returns a value that cannot be deserialized.
pub fn make_undeserializable(_: ()) -> Undeserializable {
    Undeserializable
}

/// Takes a value that cannot be deserialized (so its task cannot start).
pub fn take_undeserializable(_: Undeserializable) {}

/// Takes a value that cannot be serialized (so its task cannot be sent).
pub fn take_unserializable(_: Unserializable) {}

/// Panics with a payload that is not a string.
pub fn panic_with_number(_: ()) {
    std::panic::panic_any(42u32)
}

/// Starts `sleep 600` (a process corral did not create, holding this
/// process's stdout), sends its pid on `report` and waits for it.
pub fn grandchild_holding_fd(report: corral::Sender) {
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep");
    report.send(&child.id()).expect("report the grandchild");
    let _ = child.wait();
}

/// Reads 8 bytes at `addr` in process `pid` through `/proc/<pid>/mem`,
/// under the kernel's ptrace access check (the one `process_vm_readv`, and
/// so `map_pod`'s workers, pass or fail): the `errno` of a refusal, or 0.
pub fn peek_memory((pid, addr): (u32, u64)) -> i32 {
    use std::os::unix::fs::FileExt;
    let mut word = [0u8; 8];
    let read = std::fs::File::open(format!("/proc/{pid}/mem"))
        .and_then(|mem| mem.read_exact_at(&mut word, addr));
    read.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Whether `pid` is gone: no such process, a zombie awaiting its reaper,
/// or one its reaper is reaping (`X`, seen for an instant).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X', 'x'])),
    }
}

/// Whether `pid` has been reaped: no `/proc` entry at all, not even a
/// zombie. (Check it at once after the event: a number long free may have
/// been taken by another process.)
pub fn is_reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `Z`...), or
/// `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Asserts that every one of `pids` is seen asleep (state `S`) in 20 looks
/// in a row, 5 ms apart, within `limit`: a process that sleeps rather than
/// spins when it has nothing to do. Panics with their states if not.
pub fn assert_stay_asleep(pids: &[u32], limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut asleep_in_a_row = 0;
    while asleep_in_a_row < 20 {
        let states: Vec<Option<char>> = pids.iter().map(|&p| proc_state(p)).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "still running after {limit:?}: {pids:?} in states {states:?}"
        );
        if states.iter().all(|&s| s == Some('S')) {
            asleep_in_a_row += 1;
        } else {
            asleep_in_a_row = 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The children of this process's fork server (none without one).
pub fn server_children() -> Vec<u32> {
    let Some(server) = corral::internal::fork_server_pid() else {
        return Vec::new();
    };
    std::fs::read_to_string(format!("/proc/{server}/task/{server}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The live spares of this process's fork server: its children named
/// `corral-spare` (forked ahead of need, see corral's `start::spare`).
pub fn spares() -> Vec<u32> {
    server_children()
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "corral-spare")
                && !is_gone(p)
        })
        .collect()
}

/// The number of open descriptors of this process, less the ones corral
/// holds for the spare child its fork server offered (there is one or
/// none, depending on timing).
pub fn open_fds() -> usize {
    let all = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    all.saturating_sub(corral::internal::spare_fds())
}

/// Children of this process that are zombies.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    tasks
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let rest: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                rest.first() == Some(&"Z") && rest.get(1) == Some(&me.as_str())
            })
        })
        .collect()
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`), so a test can reap what a killed child left.
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) has no memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reaps every exited child of this process without blocking.
pub fn reap_exited_children() {
    loop {
        // SAFETY: waitpid with a null status pointer has no preconditions.
        let reaped = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped <= 0 {
            break;
        }
    }
}

/// Stops `pid` (SIGSTOP): it holds its sockets but answers nothing.
pub fn sigstop(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
}

/// Resumes a process stopped by [`sigstop`].
pub fn sigcont(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Sends `SIGKILL` to `pid` (a process the test does not own a handle to,
/// like the fork server).
pub fn sigkill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Whether `pid` is asleep in the kernel (state `S`): blocked on a futex, a
/// read, a lock.
pub fn is_sleeping(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('S'))
    })
}

/// Waits until `test` holds, at most `limit`; returns whether it did.
pub fn wait_for(limit: std::time::Duration, mut test: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if test() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    test()
}

/// The names in `/dev/shm`.
pub fn shm_entries() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `child.join()`, bounded: a child still running after 60 s is killed and
/// the test fails there, instead of hanging CI.
pub fn done<R: corral::Data>(child: corral::Child<R>) -> Result<R, corral::ProcessError> {
    match child.join_timeout(std::time::Duration::from_secs(60)) {
        Ok(value) => Ok(value),
        Err(corral::JoinTimeout::Failed(e)) => Err(e),
        Err(corral::JoinTimeout::Elapsed(child)) => {
            let _ = child.kill();
            panic!("child {} still running after 60 s", child.pid());
        }
    }
}

/// `task.join()`, bounded: a task still running after 60 s is cancelled and
/// the test fails there, instead of hanging CI.
pub fn task_done<R: corral::Data>(task: corral::Task<R>) -> Result<R, corral::TaskError> {
    match task.join_timeout(std::time::Duration::from_secs(60)) {
        Ok(value) => Ok(value),
        Err(corral::TaskTimeout::Failed(e)) => Err(e),
        Err(corral::TaskTimeout::Elapsed(task)) => {
            task.cancel();
            panic!("a task still running after 60 s");
        }
    }
}

/// Runs `body` on a thread and fails the test if it has not finished within
/// `limit` (a wedged pool must fail, not hang CI). A panic of `body` is
/// raised again here, as itself.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("still running after {limit:?}: wedged"),
        Err(RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body ended without sending its value"),
        },
    }
}

/// The machine's `python3` and its (major, minor) version: found on PATH,
/// installed with apt-get where that works, or a panic with the install
/// line (the interop tests never skip silently).
pub fn python() -> (&'static str, (u32, u32)) {
    static FOUND: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let version = FOUND.get_or_init(|| {
        let probe = || {
            std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sys; print(sys.version_info[0], sys.version_info[1])",
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        let out = probe().or_else(|| {
            // Not installed: install it where we can, as the README's test
            // command promises.
            let _ = std::process::Command::new("apt-get")
                .args(["install", "-y", "python3"])
                .status();
            probe()
        });
        let out = out.unwrap_or_else(|| {
            panic!(
                "the interop tests need python3: install it with `sudo apt-get install -y python3`"
            )
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    });
    ("python3", *version)
}

/// Runs a Python script (with args), bounded to 60 s: (success, stdout,
/// stderr).
pub fn run_python(script: &str, args: &[&str]) -> (bool, String, String) {
    let (py, _) = python();
    let child = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = within(Duration::from_secs(60), move || {
        child.wait_with_output().unwrap()
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// CPU ticks (1/100 s) a process and its threads have used, from
/// `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// An example program of the `corral` package, next to the running test
/// binary (`cargo test` builds them; built here if missing).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "-p", "corral", "--example", name])
            .status()
            .unwrap();
        assert!(built.success(), "building example {name}");
    }
    path
}

/// The parent pid of `pid`, from `/proc` (`None` once it is reaped).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live process below `pid` (children, their children, …), from
/// `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|&&c| parent_of(c) == Some(p)));
        i += 1;
    }
    found.remove(0);
    found
}

/// A real `redis-server` on a free loopback port, for the cluster tests:
/// killed (and its files removed) when dropped.
#[derive(Debug)]
pub struct Redis {
    child: Option<std::process::Child>,
    port: u16,
    password: String,
    dir: std::path::PathBuf,
    persistent: bool,
    /// Serves TLS only, with the certificates in `tls/` (see its README).
    tls: bool,
}

/// `redis-server`'s path: on PATH, installed with apt-get where that works,
/// or a panic with the install line (the cluster tests never skip).
pub fn redis_server() -> &'static str {
    static FOUND: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let works = || {
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    FOUND.get_or_init(|| {
        if works() {
            return;
        }
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if !works() {
            let _ = std::process::Command::new("apt-get").arg("update").status();
            let _ = std::process::Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "redis-server"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        assert!(
            works(),
            "the cluster tests need redis-server: install it with \
             `sudo apt-get install -y redis-server` (or your system's package)"
        );
    });
    "redis-server"
}

impl Redis {
    /// Starts a server with a password, without persistence.
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// Starts a server; with `persistent`, every write goes to an
    /// append-only file first (`appendfsync always`), so a restart keeps it.
    pub fn start_with(persistent: bool) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!("corral-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port,
            password: format!("pw{port}"),
            dir,
            persistent,
            tls: false,
        };
        redis.restart();
        redis
    }

    /// Starts a server that speaks TLS only (`rediss://`), with the test
    /// certificate for `localhost` that [`Redis::tls_ca`] signed.
    pub fn start_tls() -> Redis {
        let mut redis = Redis::start();
        redis.tls = true;
        redis.restart();
        redis
    }

    /// The CA certificate (PEM) the TLS server's certificate is signed by.
    pub fn tls_ca() -> &'static [u8] {
        include_bytes!("../tls/ca.crt")
    }

    /// The URL clients and nodes use.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://:{}@localhost:{}/", self.password, self.port)
        } else {
            format!("redis://:{}@127.0.0.1:{}/", self.password, self.port)
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, and waits until it
    /// answers (at most 10 s).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = std::process::Command::new(redis_server());
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--requirepass", &self.password, "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdout(std::process::Stdio::null());
        if self.tls {
            let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tls");
            cmd.args(["--port", "0", "--tls-auth-clients", "no"])
                .arg("--tls-port")
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(tls.join("server.crt"))
                .arg("--tls-key-file")
                .arg(tls.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.join("ca.crt"));
        }
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("starting redis-server"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers an authenticated PING (a TLS server:
    /// whether it accepts connections).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(format!("AUTH {}\r\nPING\r\n", self.password).as_bytes())
            .is_err()
        {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"+PONG\r\n") {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
        true
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
