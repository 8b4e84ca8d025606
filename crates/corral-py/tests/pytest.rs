//! Builds the Python package with maturin into a virtual environment of its
//! own and runs its pytest suite (`tests/python`), as the README's test
//! command promises: what is missing (python3's venv module, maturin, pytest)
//! is installed, or the test fails with the line that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../../target"))
}

/// Runs `cmd` to completion within `limit`, failing the test with its
/// output otherwise.
fn run(cmd: &mut Command, what: &str, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Makes a virtual environment of `interpreter` at `dir`.
fn make_venv(dir: &Path, interpreter: &Path) -> bool {
    let made = Command::new(interpreter)
        .args(["-m", "venv"])
        .arg(dir)
        .status();
    matches!(made, Ok(s) if s.success())
}

/// A virtual environment of `interpreter` with maturin, pytest and the
/// package's dependencies; created once, reused by later runs.
fn venv(dir: &Path, interpreter: &Path) -> PathBuf {
    let python = dir.join("bin/python");
    if !python.exists() && !make_venv(dir, interpreter) {
        // Debian splits the venv module out: install it where we can.
        let _ = Command::new("apt-get")
            .args(["install", "-y", "python3-venv"])
            .status();
        let _ = std::fs::remove_dir_all(dir);
        assert!(
            make_venv(dir, interpreter),
            "creating a virtual environment failed: install it with \
             `sudo apt-get install -y python3-venv`"
        );
    }
    let ready = Command::new(&python)
        .args(["-c", "import maturin, pytest, pytest_timeout, cloudpickle"])
        .stderr(Stdio::null())
        .status();
    if !matches!(ready, Ok(s) if s.success()) {
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "maturin>=1.5,<2",
                "pytest",
                "pytest-timeout",
                "cloudpickle",
            ]),
            "pip install maturin pytest pytest-timeout cloudpickle (from PyPI)",
            Duration::from_secs(600),
        );
    }
    python
}

/// Runs the pytest suite with `python` (a virtual environment's), after
/// installing `wheel` into it.
fn pytest(python: &Path, wheel: &Path, target: &Path) -> String {
    run(
        Command::new(python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--force-reinstall", "--no-deps"])
            .arg(wheel),
        "pip install the wheel",
        Duration::from_secs(120),
    );
    let out = run(
        Command::new(python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--timeout=120",
            ])
            .arg(crate_dir().join("tests/python"))
            // The installed wheel, not the source tree, is what is tested.
            .current_dir(target),
        "pytest",
        Duration::from_secs(600),
    );
    assert!(out.contains(" passed"), "{out}");
    out
}

/// Other CPython versions on this machine (pyenv's), which the one abi3
/// wheel must serve too.
fn other_pythons() -> Vec<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .map(|r| r.join("versions"));
    let Some(Ok(entries)) = root.map(std::fs::read_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let minor: u32 = name.strip_prefix("3.")?.split('.').next()?.parse().ok()?;
            let python = e.path().join("bin/python");
            (minor >= 9 && python.exists()).then_some((minor, python))
        })
        .collect();
    found.sort();
    found.dedup_by_key(|(minor, _)| *minor);
    found.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let target = target_dir();
    let python = venv(&target.join("corral-py-venv"), Path::new("python3"));
    let bin = python.parent().unwrap();
    let wheels = target.join("corral-py-wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    // A target directory of its own: the one `cargo test` is building into
    // is locked while it runs.
    run(
        Command::new(bin.join("maturin"))
            .args(["build", "--quiet", "--out"])
            .arg(&wheels)
            .arg("--manifest-path")
            .arg(crate_dir().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target.join("corral-py-build"))
            .env("VIRTUAL_ENV", bin.parent().unwrap()),
        "maturin build",
        Duration::from_secs(900),
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("maturin built a wheel");
    println!("{}", pytest(&python, &wheel, &target));
    // The same abi3 wheel under every other CPython 3.9+ the machine has.
    let (_, (major, minor)) = corral_fixtures::python();
    let primary = format!("{major}.{minor}.");
    for interpreter in other_pythons() {
        let version = interpreter.parent().unwrap().parent().unwrap();
        let version = version.file_name().unwrap().to_string_lossy().into_owned();
        if version.starts_with(&primary) {
            continue;
        }
        let python = venv(
            &target.join(format!("corral-py-venv-{version}")),
            &interpreter,
        );
        println!(
            "CPython {version}: {}",
            pytest(&python, &wheel, &target).trim()
        );
    }
}
