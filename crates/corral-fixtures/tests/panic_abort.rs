//! With `panic = "abort"` the process dies inside the panic hook: the report
//! must leave from there. Builds the `abort-panics` program under the
//! workspace's `panic-abort` profile (in a target directory of its own, so
//! as not to wait for the build lock of the running `cargo test`) and runs it.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn panics_are_reported_when_panics_abort() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target/panic-abort-test");
    let status = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--profile",
            "panic-abort",
            "-p",
            "corral-fixtures",
            "--bin",
            "abort-panics",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building abort-panics failed");
    let program = target.join("panic-abort/abort-panics");
    let mut child = Command::new(&program)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start abort-panics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("abort-panics did not finish in 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("spawn: the child panicked: 'boom from the child'"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("pool: the task panicked: 'boom from task 3'"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("after: Ok(4)"), "{stdout}\n{stderr}");
    // The message is on stderr too, as the default hook prints it.
    assert!(stderr.contains("boom from the child"), "{stderr}");
}
