//! Is the database reachable? Told by a connection of its own (not one of the pool's: a pool
//! saturated by load is not an outage), probed by the caller every second or so.
//!
//! While the database is marked unreachable, calls that would make a device or an operator
//! wait for the pool's acquire timeout fail at once with [`RegistryError::Unavailable`]
//! (retryable): a new device gets CONNACK "server unavailable" in milliseconds instead of
//! seconds, and the API answers 503.

use crate::{Registry, RegistryError, Result};
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Failed probes in a row before the database counts as unreachable.
const FAILURES_TO_MARK_DOWN: u32 = 2;

#[derive(Debug)]
pub(crate) struct Health {
    down: AtomicBool,
    failures: AtomicU32,
    /// The last successful probe's round trip, in microseconds (0: none yet).
    latency_us: AtomicU64,
    /// Flips with `down`, for calls already waiting on the pool (see
    /// [`Registry::until_unreachable`]).
    changes: tokio::sync::watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            changes: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Health {
    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            if self.down.swap(false, Ordering::AcqRel) {
                self.changes.send_replace(false);
                tracing::info!("registry database reachable again");
            }
        } else if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= FAILURES_TO_MARK_DOWN
            && !self.down.swap(true, Ordering::AcqRel)
        {
            self.changes.send_replace(true);
            tracing::warn!("registry database unreachable: new registrations and API calls fail fast until it answers");
        }
    }
}

/// Probes the database on a connection of its own.
#[derive(Debug)]
pub struct Probe {
    url: Arc<str>,
    conn: Option<sqlx::AnyConnection>,
    health: Arc<Health>,
}

impl Probe {
    /// One probe: `SELECT 1` within `timeout` (connecting first if needed). Returns whether
    /// the database answered; two failures in a row mark it unreachable, one answer reachable.
    pub async fn check(&mut self, timeout: Duration) -> bool {
        let started = tokio::time::Instant::now();
        let ok = tokio::time::timeout(timeout, self.select_one()).await.unwrap_or(false);
        if ok {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
            self.health.latency_us.store(us, Ordering::Relaxed);
        }
        if !ok {
            // A broken connection is opened afresh on the next probe.
            self.conn = None;
        }
        self.health.record(ok);
        ok
    }

    async fn select_one(&mut self) -> bool {
        if self.conn.is_none() {
            match sqlx::AnyConnection::connect(&self.url).await {
                Ok(c) => self.conn = Some(c),
                Err(_) => return false,
            }
        }
        match self.conn.as_mut() {
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
            None => false,
        }
    }
}

impl Registry {
    /// A probe for this registry's database (see [`Probe::check`]).
    pub fn probe(&self) -> Probe {
        Probe {
            url: self.url.clone(),
            conn: None,
            health: self.health.clone(),
        }
    }

    /// The last successful probe's round trip.
    pub fn probe_latency(&self) -> Option<Duration> {
        match self.health.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether the last probes found the database unreachable.
    pub fn unreachable(&self) -> bool {
        self.health.down.load(Ordering::Acquire)
    }

    /// Resolves when the database is marked unreachable (at once if it is): a caller already
    /// waiting on the pool gives up then, instead of at the pool's timeout.
    pub async fn until_unreachable(&self) {
        let mut rx = self.health.changes.subscribe();
        let _ = rx.wait_for(|down| *down).await;
    }

    /// Fails at once while the database is marked unreachable.
    pub(crate) fn fail_fast(&self) -> Result<()> {
        if self.unreachable() {
            return Err(RegistryError::Unavailable {
                detail: "database unreachable".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_failures_mark_down_and_one_answer_marks_up() {
        let h = Health::default();
        h.record(false);
        assert!(!h.down.load(Ordering::Relaxed), "one failure is not an outage");
        h.record(false);
        assert!(h.down.load(Ordering::Relaxed));
        h.record(false);
        assert!(h.down.load(Ordering::Relaxed));
        h.record(true);
        assert!(!h.down.load(Ordering::Relaxed));
        h.record(false);
        assert!(!h.down.load(Ordering::Relaxed), "the count starts again");
    }
}
