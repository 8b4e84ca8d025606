//! The cluster pool over TLS (`rediss://`, feature `cluster-tls`) against a
//! real `redis-server` serving TLS only: a node (this test binary with
//! `CORRAL_NODE`) and a client that trust the test CA run a task; a client
//! that does not trust it is refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use corral::Pool;
use corral_fixtures::{Redis, within};

corral::test_support!();

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn tasks_cross_a_tls_broker_that_is_trusted_and_only_then() {
    let redis = Redis::start_tls();
    let ca = std::env::temp_dir().join(format!("corral-tls-ca-{}.crt", std::process::id()));
    std::fs::write(&ca, Redis::tls_ca()).unwrap();
    let mut node = Command::new(std::env::current_exe().unwrap())
        .env("CORRAL_NODE", redis.url())
        .env("CORRAL_NODE_PROCESSES", "1")
        .env("CORRAL_CLUSTER_CA_FILE", &ca)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = redis.url();
    let outcome = within(Duration::from_secs(60), move || {
        let pool = Pool::cluster(&url).tls_ca(Redis::tls_ca()).build().unwrap();
        let v = pool.apply(square, 12);
        pool.join();
        v
    });
    let untrusted = Pool::cluster(&redis.url()).build().unwrap_err();
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_file(&ca);
    assert_eq!(outcome, Ok(144));
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");
}
