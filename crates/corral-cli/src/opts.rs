//! Values of the options, in GNU parallel's grammar: durations (`30s`,
//! `2m`, `1.5h`, bare seconds), sizes (`512M`, `1G`), `-j` (`4`, `50%`,
//! `+1`, `-1`), `--timeout 200%` and `--halt now,fail=1`.

use std::time::Duration;

/// A duration: a number with an optional unit `ms`, `s`, `m`, `h`, `d`
/// (seconds without one).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 30s, 500ms, 2m, 1h)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("`{text}` is too long"))
}

/// A size in bytes: a number with an optional `K`, `M`, `G`, `T` (powers of
/// 1024; a trailing `B` or `iB` is allowed).
pub(crate) fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper.trim_end_matches("IB").trim_end_matches('B');
    let split = body
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(body.len());
    let (num, unit) = body.split_at(split);
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("`{text}` is not a size (e.g. 512M, 1G)"))?;
    let scale: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (K, M, G, T)")),
    };
    Ok((value * scale as f64) as u64)
}

/// `-j`: `N`, `N%` of the CPUs, `+N`/`-N` relative to them; `0` = as many
/// as possible (64 per CPU, at most 1024). Never less than 1.
pub(crate) fn jobs(text: &str, cpus: usize) -> Result<usize, String> {
    let bad = || format!("`-j {text}`: expected N, N%, +N or -N");
    let t = text.trim();
    let n = if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad())?;
        (cpus as f64 * p / 100.0).floor() as i64
    } else if let Some(rest) = t.strip_prefix('+') {
        cpus as i64 + rest.parse::<i64>().map_err(|_| bad())?
    } else if let Some(rest) = t.strip_prefix('-') {
        cpus as i64 - rest.parse::<i64>().map_err(|_| bad())?
    } else {
        match t.parse::<i64>().map_err(|_| bad())? {
            0 => (cpus * 64).min(1024) as i64,
            n => n,
        }
    };
    Ok(n.max(1) as usize)
}

/// `--timeout`: a duration or a percentage of the median runtime of the
/// jobs that succeeded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Timeout {
    Fixed(Duration),
    Percent(f64),
}

pub(crate) fn timeout(text: &str) -> Result<Timeout, String> {
    match text.trim().strip_suffix('%') {
        Some(p) => p
            .parse::<f64>()
            .ok()
            .filter(|p| *p > 0.0 && p.is_finite())
            .map(Timeout::Percent)
            .ok_or_else(|| format!("`--timeout {text}`: expected a duration or N%")),
        None => duration(text).map(Timeout::Fixed),
    }
}

/// When `--halt` acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// Kill the running jobs and stop.
    Now,
    /// Start no new job; let the running ones finish.
    Soon,
}

/// What `--halt` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    Fail,
    Success,
    Done,
}

/// `--halt when,what=N` or `…=P%`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Halt {
    pub(crate) when: When,
    pub(crate) what: Count,
    pub(crate) threshold: Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Threshold {
    Jobs(u64),
    Percent(f64),
}

/// Parses GNU parallel's `--halt`: `never`, `now|soon,fail|success|done=N|P%`,
/// and the old numbers `0` (never), `1` (soon,fail=1), `2` (now,fail=1).
pub(crate) fn halt(text: &str) -> Result<Option<Halt>, String> {
    let bad = || {
        format!(
            "`--halt {text}`: expected never, or now|soon,fail|success|done=N or =P% (e.g. now,fail=1, soon,fail=10%)"
        )
    };
    let t = text.trim();
    let simple = |when| Halt {
        when,
        what: Count::Fail,
        threshold: Threshold::Jobs(1),
    };
    match t {
        "never" | "0" => return Ok(None),
        "1" => return Ok(Some(simple(When::Soon))),
        "2" => return Ok(Some(simple(When::Now))),
        _ => {}
    }
    let (when, rest) = t.split_once(',').ok_or_else(bad)?;
    let when = match when {
        "now" => When::Now,
        "soon" => When::Soon,
        _ => return Err(bad()),
    };
    let (what, value) = rest.split_once('=').ok_or_else(bad)?;
    let what = match what {
        "fail" => Count::Fail,
        "success" => Count::Success,
        "done" => Count::Done,
        _ => return Err(bad()),
    };
    let threshold = match value.strip_suffix('%') {
        Some(p) => Threshold::Percent(
            p.parse()
                .ok()
                .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
                .ok_or_else(bad)?,
        ),
        None => Threshold::Jobs(
            value
                .parse()
                .ok()
                .filter(|n: &u64| *n > 0)
                .ok_or_else(bad)?,
        ),
    };
    Ok(Some(Halt {
        when,
        what,
        threshold,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("soon").is_err());
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert!(size("1Q").is_err());
        assert_eq!(jobs("50%", 4), Ok(2));
        assert_eq!(jobs("+1", 2), Ok(3));
        assert_eq!(jobs("-5", 2), Ok(1));
        assert!(jobs("x", 2).is_err());
        assert_eq!(timeout("200%"), Ok(Timeout::Percent(200.0)));
        assert_eq!(halt("never"), Ok(None));
        assert_eq!(
            halt("soon,fail=10%"),
            Ok(Some(Halt {
                when: When::Soon,
                what: Count::Fail,
                threshold: Threshold::Percent(10.0)
            }))
        );
        assert_eq!(
            halt("2"),
            Ok(Some(Halt {
                when: When::Now,
                what: Count::Fail,
                threshold: Threshold::Jobs(1)
            }))
        );
        assert!(halt("now,fail").is_err());
        assert!(halt("later,fail=1").is_err());
    }
}
