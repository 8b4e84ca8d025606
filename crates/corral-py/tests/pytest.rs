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

/// A virtual environment with maturin, pytest and the package's
/// dependencies; created once, reused by later runs.
fn venv(dir: &Path) -> PathBuf {
    let python = dir.join("bin/python");
    if !python.exists() {
        corral_fixtures::python();
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir)
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            // Debian splits the venv module out: install it where we can.
            let _ = Command::new("apt-get")
                .args(["install", "-y", "python3-venv"])
                .status();
            let _ = std::fs::remove_dir_all(dir);
            let again = Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir)
                .status();
            assert!(
                matches!(again, Ok(s) if s.success()),
                "creating a virtual environment failed: install it with \
                 `sudo apt-get install -y python3-venv`"
            );
        }
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

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let target = target_dir();
    let python = venv(&target.join("corral-py-venv"));
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
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--force-reinstall", "--no-deps"])
            .arg(&wheel),
        "pip install the wheel",
        Duration::from_secs(120),
    );
    let out = run(
        Command::new(&python)
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
            .current_dir(&target),
        "pytest",
        Duration::from_secs(600),
    );
    println!("{out}");
    assert!(out.contains(" passed"), "{out}");
}
