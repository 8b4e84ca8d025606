//! Deadline arithmetic that saturates: a time limit of `Duration::MAX` (or
//! any limit past the clock's range) means "never", not an overflow panic or
//! a wrapped value that has already passed.

use std::time::{Duration, Instant};

/// `start + limit`, or `None` if that is beyond the clock's range (never).
pub(crate) fn after(start: Instant, limit: Duration) -> Option<Instant> {
    start.checked_add(limit)
}

/// The deadline `limit` from now, or `None` for never.
pub(crate) fn deadline(limit: Duration) -> Option<Instant> {
    after(Instant::now(), limit)
}

/// [`deadline`] for an optional limit (`None`: no limit).
pub(crate) fn deadline_opt(limit: Option<Duration>) -> Option<Instant> {
    limit.and_then(deadline)
}

/// `start_ns + limit` in nanoseconds of the monotonic clock, saturating.
pub(crate) fn ns_after(start_ns: u64, limit: Duration) -> u64 {
    start_ns.saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_limits_mean_never() {
        assert_eq!(deadline(Duration::MAX), None);
        assert_eq!(deadline_opt(Some(Duration::MAX)), None);
        assert_eq!(ns_after(5, Duration::MAX), u64::MAX);
        assert_eq!(ns_after(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert!(deadline(Duration::from_secs(1)).is_some());
    }
}
