//! Built with `panic = "abort"` by the `panic_abort` test: a child's panic and
//! a pool task's panic must still come back with their message.

fn boom(_: ()) -> u8 {
    panic!("boom from the child")
}

fn task_boom(x: u8) -> u8 {
    assert!(x != 3, "boom from task {x}");
    x
}

fn main() {
    corral::init();
    match corral::spawn(boom, ()).map(corral::Child::join) {
        Ok(Err(e)) => println!("spawn: {e}"),
        other => println!("spawn: unexpected {other:?}"),
    }
    let pool = corral::Pool::new(1).expect("a pool");
    match pool.apply(task_boom, 3) {
        Err(e) => println!("pool: {e}"),
        Ok(v) => println!("pool: unexpected {v}"),
    }
    println!("after: {:?}", pool.apply(task_boom, 4));
}
