//! The fork server's code copied into huge pages while it is idle, and its
//! children running from the copy. A test binary of its own: it reads the
//! server's mappings and starts itself again with `CORRAL_HUGE_CODE=0`.

use std::collections::BTreeMap;
use std::time::Duration;

use corral::ProcessError;
use corral_fixtures::{done, wait_for};

corral::test_support!();

/// The line of `/proc/<pid>/maps` whose range holds `addr`.
fn mapping_of(pid: &str, addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines()
        .find(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            let (start, end) = (
                usize::from_str_radix(start, 16).unwrap_or(0),
                usize::from_str_radix(end, 16).unwrap_or(0),
            );
            (start..end).contains(&addr)
        })
        .map(str::to_owned)
}

/// Whether a maps line is an anonymous mapping (inode 0), and its
/// permissions.
fn anonymous(line: &str) -> (bool, String) {
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[4] == "0", fields[1].to_owned())
}

/// The `AnonHugePages` of the mapping starting the maps `line`, from
/// `/proc/<pid>/smaps`, in kB.
fn huge_kb(pid: &str, line: &str) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let range = line.split_whitespace().next().unwrap();
    let after = smaps.split(&format!("{range} ")).nth(1).unwrap_or("");
    (after.lines())
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn huge_pages_on() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
}

fn code_addr() -> usize {
    busy as fn((u64, usize)) -> Vec<String> as usize
}

/// The lowest and highest address this test binary is mapped at (the fork
/// server, forked from this process before `main`, has it at the same).
fn image() -> (usize, usize) {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    (maps.lines())
        .filter(|l| l.ends_with(exe.to_str().unwrap()))
        .map(range)
        .fold((usize::MAX, 0), |(lo, hi), (s, e)| (lo.min(s), hi.max(e)))
}

fn range(line: &str) -> (usize, usize) {
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        usize::from_str_radix(start, 16).unwrap(),
        usize::from_str_radix(end, 16).unwrap(),
    )
}

/// The server's anonymous executable mapping within 2 MiB of this binary's
/// image (the copy may begin at the huge-page boundary below it).
fn copied_code(server: &str) -> Option<String> {
    let (lo, hi) = image();
    let maps = std::fs::read_to_string(format!("/proc/{server}/maps")).ok()?;
    maps.lines()
        .find(|l| {
            let (start, end) = range(l);
            anonymous(l) == (true, "r-xp".to_owned()) && start + (2 << 20) > lo && end <= hi
        })
        .map(str::to_owned)
}

/// Work that runs code from all over the program: formatting, hashing,
/// sorting, the allocator; and the child's own mapping of `addr`.
fn busy((n, addr): (u64, usize)) -> Vec<String> {
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        *words
            .entry(format!("{:x}", i * 2_654_435_761 % 1000))
            .or_default() += i;
    }
    let mut sorted: Vec<(String, u64)> = words.into_iter().collect();
    sorted.sort_by_key(|(w, v)| (std::cmp::Reverse(*v), w.clone()));
    let mine = mapping_of("self", addr).unwrap_or_default();
    vec![sorted[0].0.clone(), sorted.len().to_string(), mine]
}

fn panics(n: u64) -> u64 {
    panic!("child panicked with {n}")
}

fn server() -> String {
    done(corral::spawn(|x: u64| x + 1, 1).unwrap()).unwrap();
    corral::internal::fork_server_pid()
        .expect("this process runs a fork server")
        .to_string()
}

#[test]
fn the_fork_servers_code_moves_into_huge_pages_and_its_children_run_from_it() {
    if std::env::var_os("CORRAL_HUGE_CODE").is_some() {
        return; // started by the test below, for its own check
    }
    let server = server();
    // A few starts: not worth the copy (it would make a start that comes
    // meanwhile wait).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(copied_code(&server), None, "copied after one start");
    for _ in 0..16 {
        done(corral::spawn(|x: u64| x + 1, 1).unwrap()).unwrap();
    }
    if !huge_pages_on() {
        return; // the machine has none: the file mapping stays
    }
    let mut copy = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            copy = copied_code(&server);
            copy.is_some()
        }),
        "the idle server copies its code into huge pages (this binary's \
         read-only segments span more than 2 MiB); its maps:\n{}",
        std::fs::read_to_string(format!("/proc/{server}/maps")).unwrap_or_default()
    );
    let line = copy.unwrap();
    // Whole huge pages only.
    let (start, end) = range(&line);
    assert_eq!(
        huge_kb(&server, &line),
        (end - start) as u64 / 1024,
        "{line}"
    );
    let inside = start + (end - start) / 2;
    let expected = busy((5000, inside));
    for round in 0..30 {
        let got = done(corral::spawn(busy, (5000, inside)).unwrap()).unwrap();
        assert_eq!(got[..2], expected[..2], "round {round}");
        assert!(
            anonymous(&got[2]).0,
            "round {round}: the child runs from the copy: {}",
            got[2]
        );
        match done(corral::spawn(panics, round).unwrap()) {
            Err(ProcessError::Panicked(p)) => {
                let message = p.message;
                assert!(
                    message.contains(&format!("child panicked with {round}")),
                    "{message}"
                )
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[test]
fn with_corral_huge_code_0_the_server_keeps_its_code_mapped_from_the_file() {
    if std::env::var_os("CORRAL_HUGE_CODE").is_some() {
        // In the copy of this binary started below: the server, after 17
        // starts and idle for 200 ms (its copy would have taken one to a
        // few), still maps its code from the file.
        let server = server();
        for _ in 0..16 {
            done(corral::spawn(|x: u64| x + 1, 1).unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(copied_code(&server), None);
        let line = mapping_of(&server, code_addr()).unwrap();
        assert!(!anonymous(&line).0, "{line}");
        let got = done(corral::spawn(busy, (100, code_addr())).unwrap()).unwrap();
        assert!(!anonymous(&got[2]).0, "{}", got[2]);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("CORRAL_HUGE_CODE", "0")
        .args([
            "--exact",
            "with_corral_huge_code_0_the_server_keeps_its_code_mapped_from_the_file",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
