//! Managers: proxy calls on a server process over its local socket, a
//! queue through the manager, a new proxy, and a remote manager over
//! loopback TCP (connect, authenticate, first call).

use std::time::Instant;

use corral::manager::{Dict, Kind, Manager, Queue};

use crate::{emit, median, micros, per_call};

/// Puts `count` items into the queue from a child process.
fn producer((q, count): (Queue<u64>, u64)) {
    for i in 0..count {
        q.put(i).expect("put");
    }
}

/// A process of its own connects to a remote manager and makes its first
/// call: the µs that took.
fn first_contact((address, key): (String, Vec<u8>)) -> f64 {
    let t = Instant::now();
    let m = Manager::connect(address.as_str(), &key).expect("connect");
    let d = m
        .registered::<Dict<String, u64>>("get_dict")
        .expect("proxy");
    d.insert("k".into(), 1).expect("call");
    micros(t.elapsed())
}

pub(crate) fn run(n: impl Fn(usize) -> usize) {
    let m = Manager::start().expect("manager");
    let d = m.dict::<String, u64>().expect("dict");
    let key = "k".to_string();
    emit(
        "corral manager dict set",
        per_call(300, n(20_000), || d.insert(key.clone(), 1).expect("set")),
        "us",
    );
    emit(
        "corral manager dict get",
        per_call(300, n(20_000), || {
            d.get(&key).expect("get");
        }),
        "us",
    );
    let l = m.list::<u64>().expect("list");
    emit(
        "corral manager list append",
        per_call(300, n(20_000), || l.push(1).expect("append")),
        "us",
    );
    let lock = m.lock().expect("lock");
    emit(
        "corral manager lock acquire+release",
        per_call(300, n(10_000), || {
            lock.acquire().expect("acquire").release().expect("release")
        }),
        "us",
    );
    let q = m.queue::<u64>().expect("queue");
    emit(
        "corral manager queue put+get",
        per_call(300, n(10_000), || {
            q.put(1).expect("put");
            q.get().expect("get");
        }),
        "us",
    );
    let count = n(20_000) as u64;
    let t = Instant::now();
    let child = corral::spawn(producer, (q.clone(), count)).expect("spawn");
    for _ in 0..count {
        q.get().expect("get");
    }
    let secs = t.elapsed().as_secs_f64();
    child.join().expect("producer");
    emit(
        "corral manager queue child put -> get",
        count as f64 / secs,
        "items/s",
    );
    emit(
        "corral manager new dict proxy",
        per_call(300, n(5_000), || drop(m.dict::<u64, u64>().expect("dict"))),
        "us",
    );
    drop(m);

    let key = b"bench key".to_vec();
    let remote = Manager::builder()
        .register("get_dict", Kind::Dict)
        .serve("127.0.0.1:0", &key)
        .expect("serve");
    let address = remote.address().to_string();
    let samples: Vec<f64> = (0..n(50).max(5))
        .map(|_| {
            let child =
                corral::spawn(first_contact, (address.clone(), key.clone())).expect("spawn");
            child.join().expect("first contact")
        })
        .collect();
    emit(
        "corral manager remote connect+first call (TCP)",
        median(samples),
        "us",
    );
    let client = Manager::connect(address.as_str(), &key).expect("connect");
    emit(
        "corral manager remote new proxy (TCP)",
        per_call(300, n(2_000), || {
            let d = client.dict::<u64, u64>().expect("dict");
            d.insert(1, 1).expect("call");
        }),
        "us",
    );
    let d = client
        .registered::<Dict<String, u64>>("get_dict")
        .expect("proxy");
    emit(
        "corral manager remote call (TCP)",
        per_call(300, n(10_000), || d.insert("k".into(), 1).expect("set")),
        "us",
    );
}
