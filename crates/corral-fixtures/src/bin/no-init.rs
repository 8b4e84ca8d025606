//! A program that forgets `corral::init()`: its spawn must fail clearly.

fn double(x: u32) -> u32 {
    x * 2
}

fn main() {
    match corral::spawn(double, 21) {
        Ok(child) => {
            println!("spawned {}", child.pid());
            std::process::exit(1);
        }
        Err(corral::Error::NotInitialized) => {
            println!("{}", corral::Error::NotInitialized);
        }
        Err(other) => {
            println!("unexpected: {other}");
            std::process::exit(1);
        }
    }
}
