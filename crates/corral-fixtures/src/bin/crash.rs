//! `crash <segfault|abort|kill|exit N|hang>`: misbehaves as told, as a whole
//! program (for tools that supervise commands, like the `corral` command).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("segfault") => corral_fixtures::segfault(()),
        Some("abort") => corral_fixtures::abort(()),
        Some("kill") => corral_fixtures::kill_self(()),
        Some("exit") => {
            corral_fixtures::exit_with(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(3))
        }
        Some("hang") => corral_fixtures::hang(()),
        _ => {
            eprintln!("usage: crash <segfault|abort|kill|exit N|hang>");
            std::process::exit(2)
        }
    }
}
