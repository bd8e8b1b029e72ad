//! The wall clock, read in one place (the library bans `SystemTime::now` elsewhere so that
//! everything below takes time as an argument).

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Monotonic time for deadlines and latency measurements.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
