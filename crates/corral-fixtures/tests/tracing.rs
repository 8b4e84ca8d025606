//! The `tracing` feature: a pool's life reaches a subscriber as events.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{Pool, TaskError};
use corral_fixtures as fx;

corral::test_support!();

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fail_init(_: ()) {
    panic!("no database (expected)");
}

#[test]
fn a_pool_reports_its_workers_and_failures() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // Global: the pool's dispatcher thread reports too.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    {
        let pool = Pool::builder()
            .processes(1)
            .task_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        assert!(matches!(
            fx::task_done(pool.submit(fx::abort, ())),
            Err(TaskError::WorkerLost(_))
        ));
        assert!(matches!(
            fx::task_done(pool.submit(fx::hang::<()>, ())),
            Err(TaskError::TimedOut(_))
        ));
        pool.join();
        let broken = Pool::builder()
            .processes(1)
            .initializer(fail_init, ())
            .build()
            .unwrap();
        assert!(matches!(
            fx::task_done(broken.submit(fx::exit_with, 0)),
            Err(TaskError::InitializerFailed(_))
        ));
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "worker started",
        "task failed with its worker",
        "killed by signal 6",
        "ran past its timeout",
        "why=Some(Timeout",
        "replaced=true",
        "why=Some(Stop) replaced=false",
        "pool broken",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
}
