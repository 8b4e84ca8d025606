//! Where does a forkserver spawn+join spend its time? (diagnostic)
use std::time::Instant;
fn noop(_: ()) {}
fn main() {
    corral::init();
    for _ in 0..20 {
        corral::spawn(noop, ()).unwrap().join().unwrap();
    }
    let (mut s, mut j) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        let c = corral::spawn(noop, ()).unwrap();
        let t1 = Instant::now();
        c.join().unwrap();
        s.push((t1 - t).as_micros());
        j.push(t1.elapsed().as_micros());
    }
    s.sort();
    j.sort();
    println!("spawn p50 {} us, join p50 {} us", s[150], j[150]);
}
