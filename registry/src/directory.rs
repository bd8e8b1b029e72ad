//! The device directory: what a reconnection needs, held in memory, so that a device this
//! process has already admitted reconnects without a database transaction.
//!
//! A connection needs three facts about a known device: that it still presents the same
//! certificate (under the same CA), and its lifecycle status. The first connection of a device
//! (and any connection whose certificate differs) still runs [`Registry::register_or_touch`],
//! one durable transaction; its answer is remembered here. Later connections of that device read
//! the directory, and their bookkeeping (`last_seen`, `connections`, `last_peer`, TLS version and
//! suite) waits in memory until [`Registry::flush_sightings`] writes it in bulk.
//!
//! Measured before this existed: a reconnect's transaction (with its fsync) was most of the
//! server's cost per handshake, and reconnects queued one behind the other on SQLite's writer.
//!
//! **Staying current.** An entry is dropped whenever what it says may have changed:
//! - by this process: every registry method that changes a device's status forgets that device
//!   after its commit ([`Registry::set_device_status`], an attestation that quarantines or
//!   releases, [`Registry::revoke_ca`] forgets them all);
//! - by another process (the CLI, another gateway node): the gateway polls the registry's trust
//!   generation every second and calls [`Registry::forget_changes_since`], which reads the
//!   status events written meanwhile (everything is forgotten if one of them committed out of
//!   id order). Another process's change is therefore seen within that poll, as revocations
//!   already were.
//!
//! A connection that misses races with those changes: it may read a device's row just before a
//! status change commits and remember it just after the change was forgotten. Every forget
//! moves an epoch forward, and a registration remembers its answer only if the epoch it started
//! at is still current.
//!
//! **What waits in memory** is bookkeeping only, never an admission decision: at most one entry
//! per device that connected since the last flush, lost if the process is killed before the
//! flush (half a second in the gateway). Registrations themselves are never deferred.

use crate::devices::{DeviceStatus, Sighting, TrustGeneration, trust_generation_on};
use crate::sql::SqlBuilder;
use crate::{Backend, Registry, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// Devices remembered at most; past it the directory starts over (each device's next connect
/// runs a transaction again). About 150 bytes each.
pub(crate) const MAX_KNOWN: usize = 1 << 20;

/// Devices per bookkeeping statement (six parameters each).
const SIGHTING_ROWS: usize = 200;

/// A trust change touching more devices than this (since the last poll) forgets everything.
const FORGET_ONE_BY_ONE: i64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct Directory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    known: HashMap<Box<str>, Known>,
    /// Moves forward on every forget; see the module docs.
    epoch: u64,
    pending: HashMap<Box<str>, PendingSighting>,
}

#[derive(Clone, Copy, Debug)]
struct Known {
    cert_sha256: [u8; 32],
    ca_id: [u8; 32],
    status: DeviceStatus,
}

/// Bookkeeping of a device's connections since the last flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingSighting {
    pub last_seen_ms: i64,
    pub connections: i64,
    pub peer: Option<String>,
    pub tls_version: Option<String>,
    pub tls_suite: Option<String>,
}

impl PendingSighting {
    fn of(s: &Sighting<'_>, now_ms: i64) -> Self {
        PendingSighting {
            last_seen_ms: now_ms,
            connections: 1,
            peer: s.peer.map(str::to_owned),
            tls_version: s.tls_version.map(str::to_owned),
            tls_suite: s.tls_suite.map(str::to_owned),
        }
    }

    /// `later` happened after `self`: counts add up, the newest connection's facts win.
    fn merge(&mut self, later: PendingSighting) {
        self.connections = self.connections.saturating_add(later.connections);
        if later.last_seen_ms >= self.last_seen_ms {
            self.last_seen_ms = later.last_seen_ms;
            self.peer = later.peer;
            self.tls_version = later.tls_version;
            self.tls_suite = later.tls_suite;
        }
    }
}

impl PendingSighting {
    /// A stored row as it will read once this bookkeeping is written (see `write_sightings`).
    pub(crate) fn apply_to(self, device: &mut crate::DeviceRecord) {
        device.connections = device.connections.saturating_add(self.connections);
        device.last_seen_ms = device.last_seen_ms.max(self.last_seen_ms);
        device.last_peer = self.peer.or(device.last_peer.take());
        device.tls_version = self.tls_version.or(device.tls_version.take());
        device.tls_suite = self.tls_suite.or(device.tls_suite.take());
    }
}

/// What a connection learns from the registry before its CONNACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub status: DeviceStatus,
    /// The device was registered by this connection (just in time).
    pub created: bool,
    /// The device presented a different certificate than last time (an event was written).
    pub certificate_changed: bool,
    /// Answered from the directory, without a transaction.
    pub from_directory: bool,
}

/// A 64-digit hex SHA-256, as the verifier prints it (either case).
fn digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent under panic (every mutation is a single insert/remove).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The known device's status if it presents the certificate remembered for it (and records
    /// the connection's bookkeeping), else `None`.
    fn admit(&self, s: &Sighting<'_>, now_ms: i64) -> Option<DeviceStatus> {
        let (cert, ca) = (digest(s.cert_sha256)?, digest(s.ca_id)?);
        let mut inner = self.lock();
        let known = *inner.known.get(s.device_id)?;
        if known.cert_sha256 != cert || known.ca_id != ca {
            return None;
        }
        let sighting = PendingSighting::of(s, now_ms);
        match inner.pending.get_mut(s.device_id) {
            Some(p) => p.merge(sighting),
            None => {
                inner.pending.insert(s.device_id.into(), sighting);
            }
        }
        Some(known.status)
    }

    /// Remembers a registration's answer, unless something was forgotten since `epoch`.
    fn remember(&self, epoch: u64, s: &Sighting<'_>, status: DeviceStatus) {
        let (Some(cert_sha256), Some(ca_id)) = (digest(s.cert_sha256), digest(s.ca_id)) else {
            return;
        };
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.known.len() >= MAX_KNOWN && !inner.known.contains_key(s.device_id) {
            inner.known = HashMap::new();
        }
        inner.known.insert(
            s.device_id.into(),
            Known {
                cert_sha256,
                ca_id,
                status,
            },
        );
    }

    /// A transaction just wrote this device's newest peer and TLS facts: queued ones are older
    /// (their counts still add up).
    fn supersede_facts(&self, device_id: &str) {
        if let Some(p) = self.lock().pending.get_mut(device_id) {
            p.peer = None;
            p.tls_version = None;
            p.tls_suite = None;
        }
    }

    pub(crate) fn forget(&self, device_id: &str) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.known.remove(device_id);
    }

    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.known = HashMap::new();
    }

    pub(crate) fn known_len(&self) -> usize {
        self.lock().known.len()
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    fn take_pending(&self) -> Vec<(Box<str>, PendingSighting)> {
        std::mem::take(&mut self.lock().pending).into_iter().collect()
    }

    /// Puts back bookkeeping that could not be written; newer entries win.
    fn restore_pending(&self, rows: Vec<(Box<str>, PendingSighting)>) {
        let mut inner = self.lock();
        for (id, mut older) in rows {
            if let Some(newer) = inner.pending.remove(&id) {
                older.merge(newer);
            }
            inner.pending.insert(id, older);
        }
    }

    /// A device's bookkeeping not yet written.
    pub(crate) fn pending_of(&self, device_id: &str) -> Option<PendingSighting> {
        self.lock().pending.get(device_id).cloned()
    }
}

impl Registry {
    /// Admits a device this process already knows, from memory: `Some` if it presents the
    /// certificate it was last admitted with (its bookkeeping is then queued for
    /// [`Registry::flush_sightings`]); `None` means "run [`Registry::admit`]".
    pub fn admit_known(&self, s: &Sighting<'_>, now_ms: i64) -> Option<Admission> {
        let status = self.directory.admit(s, now_ms)?;
        Some(Admission {
            status,
            created: false,
            certificate_changed: false,
            from_directory: true,
        })
    }

    /// Admits a connecting device: from the directory if possible, else by just-in-time
    /// registration ([`Registry::register_grouped`]), whose answer is remembered.
    pub async fn admit(&self, s: &Sighting<'_>, auto_activate: bool, now_ms: i64) -> Result<Admission> {
        match self.admit_known(s, now_ms) {
            Some(known) => Ok(known),
            None => self.register_and_remember(s, auto_activate, now_ms).await,
        }
    }

    /// The registration half of [`Registry::admit`], for a caller that already asked
    /// [`Registry::admit_known`] (the gateway does, before handing this to its storage thread).
    pub async fn register_and_remember(&self, s: &Sighting<'_>, auto_activate: bool, now_ms: i64) -> Result<Admission> {
        // An outage answers at once: the device retries (CONNACK "server unavailable").
        self.fail_fast()?;
        let epoch = self.directory.epoch();
        // Registrations waiting together commit together (benchmark 2 in docs/BENCHMARKS.md).
        let r = self.register_grouped(s, auto_activate, now_ms).await?;
        self.directory.supersede_facts(s.device_id);
        self.directory.remember(epoch, s, r.device.status);
        Ok(Admission {
            status: r.device.status,
            created: r.created,
            certificate_changed: r.certificate_changed,
            from_directory: false,
        })
    }

    /// Writes the queued bookkeeping of connections admitted from the directory, in bulk:
    /// `last_seen` moves forward only, `connections` adds up, peer and TLS facts are the newest
    /// connection's. Returns how many devices were written. On error nothing is lost: the rows go
    /// back to the queue for the next flush.
    pub async fn flush_sightings(&self) -> Result<usize> {
        let mut rows = self.directory.take_pending();
        // In id order, as `touch_last_seen` writes: on PostgreSQL two bulk updates that lock the
        // same rows in different orders can deadlock.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if rows.is_empty() {
            return Ok(0);
        }
        match self.write_sightings(&rows).await {
            Ok(()) => Ok(rows.len()),
            Err(e) => {
                self.directory.restore_pending(rows);
                Err(e)
            }
        }
    }

    async fn write_sightings(&self, rows: &[(Box<str>, PendingSighting)]) -> Result<()> {
        let mut tx = self.begin_bulk_write().await?;
        for chunk in rows.chunks(SIGHTING_ROWS) {
            let mut q = SqlBuilder::new(self.backend(), "WITH s (id, at, n, peer, v, suite) AS (VALUES ");
            for (i, (id, p)) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(CAST(" } else { ", (CAST(" });
                q.bind(id.to_string()).push(" AS TEXT), CAST(");
                q.bind(p.last_seen_ms).push(" AS BIGINT), CAST(");
                q.bind(p.connections).push(" AS BIGINT), CAST(");
                q.bind(p.peer.clone()).push(" AS TEXT), CAST(");
                q.bind(p.tls_version.clone()).push(" AS TEXT), CAST(");
                q.bind(p.tls_suite.clone()).push(" AS TEXT))");
            }
            q.push(
                ") UPDATE devices SET \
                 last_seen = CASE WHEN devices.last_seen < s.at THEN s.at ELSE devices.last_seen END, \
                 connections = devices.connections + s.n, \
                 last_peer = COALESCE(s.peer, devices.last_peer), \
                 tls_version = COALESCE(s.v, devices.tls_version), \
                 tls_suite = COALESCE(s.suite, devices.tls_suite) \
                 FROM s WHERE devices.id = s.id",
            );
            q.build()?.persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Drops from the directory what changed since trust generation `seen` (see
    /// [`TrustGeneration`]): devices whose status changed, or everything after a CA change, a
    /// change to many devices, or a trust change that committed with an id below `seen`'s
    /// newest. Returns the generation now, read in the same snapshot as the changes. Called by a
    /// gateway that noticed the generation move.
    pub async fn forget_changes_since(&self, seen: TrustGeneration) -> Result<TrustGeneration> {
        // One snapshot for the count and the events, so that one can be checked against the other.
        let mut tx = match self.backend() {
            Backend::Postgres => {
                self.pool()
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            Backend::Sqlite => self.pool().begin().await?,
        };
        let now = trust_generation_on(&mut tx).await?;
        if now == seen {
            tx.rollback().await?;
            return Ok(now);
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(concat!(
            "SELECT kind, device_id FROM events WHERE id > $1 AND kind IN ",
            trust_event_kinds!(),
            " ORDER BY id LIMIT $2"
        ))
        .bind(seen.newest_event)
        .bind(FORGET_ONE_BY_ONE + 1)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        let found = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let counted = now.changes - seen.changes;
        let truncated = found > FORGET_ONE_BY_ONE;
        // Every trust event counted since `seen` is visible now; each one not found past `seen`'s
        // newest id committed late, below it (or the database went back, e.g. to a backup).
        let late = found != counted;
        if late && !truncated {
            tracing::info!(
                counted,
                found,
                "a trust change committed below the newest id seen; forgetting every device"
            );
        }
        if late || truncated || rows.iter().any(|(kind, _)| kind != "device.status") {
            self.directory.forget_all();
            return Ok(now);
        }
        for (_, device) in rows {
            if let Some(device) = device {
                self.directory.forget(&device);
            }
        }
        Ok(now)
    }

    /// Forgets what this process remembers of a device (another node changed it): its next
    /// connection is admitted by a transaction again.
    pub fn forget_device(&self, device_id: &str) {
        self.directory.forget(device_id);
    }

    /// Devices the directory remembers, and devices whose bookkeeping waits (metrics, tests).
    pub fn directory_size(&self) -> (usize, usize) {
        (self.directory.known_len(), self.directory.pending_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting<'a>(id: &'a str, cert: &'a str, peer: &'a str) -> Sighting<'a> {
        Sighting {
            device_id: id,
            ca_id: "ab".repeat(32).leak(),
            cert_der: b"",
            cert_sha256: cert,
            cert_serial: "01",
            cert_not_after_ms: 0,
            peer: Some(peer),
            tls_version: Some("TLSv1_2"),
            tls_suite: None,
        }
    }

    #[test]
    fn digests_parse_only_as_64_hex_digits() {
        assert_eq!(digest(&"0F".repeat(32)), Some([0x0f; 32]));
        assert_eq!(digest(&"0f".repeat(32)), Some([0x0f; 32]));
        assert_eq!(digest(&"0f".repeat(31)), None);
        assert_eq!(digest(&format!("{}zz", "0f".repeat(31))), None);
        assert_eq!(digest("é".repeat(32).as_str()), None);
    }

    #[test]
    fn a_known_device_is_admitted_only_with_its_certificate_and_its_bookkeeping_adds_up() {
        let d = Directory::default();
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        assert_eq!(d.admit(&sighting("dev-1", &a, "p1"), 1), None, "unknown devices miss");
        d.remember(d.epoch(), &sighting("dev-1", &a, "p1"), DeviceStatus::Active);
        assert_eq!(
            d.admit(&sighting("dev-1", &b, "p2"), 2),
            None,
            "another certificate misses"
        );
        assert_eq!(d.admit(&sighting("dev-1", &a, "p3"), 3), Some(DeviceStatus::Active));
        assert_eq!(d.admit(&sighting("dev-1", &a, "p4"), 4), Some(DeviceStatus::Active));
        let p = d.pending_of("dev-1").unwrap();
        assert_eq!((p.connections, p.last_seen_ms, p.peer.as_deref()), (2, 4, Some("p4")));
        // A failed flush puts rows back under what came meanwhile.
        let taken = d.take_pending();
        assert_eq!(d.admit(&sighting("dev-1", &a, "p5"), 5), Some(DeviceStatus::Active));
        d.restore_pending(taken);
        let p = d.pending_of("dev-1").unwrap();
        assert_eq!((p.connections, p.last_seen_ms, p.peer.as_deref()), (3, 5, Some("p5")));
    }

    #[test]
    fn a_registration_that_raced_a_forget_is_not_remembered() {
        let d = Directory::default();
        let a = "11".repeat(32);
        let started = d.epoch();
        d.forget("dev-1"); // a status change committed while the registration ran
        d.remember(started, &sighting("dev-1", &a, "p"), DeviceStatus::Active);
        assert_eq!(d.admit(&sighting("dev-1", &a, "p"), 1), None);
        d.remember(d.epoch(), &sighting("dev-1", &a, "p"), DeviceStatus::Quarantined);
        assert_eq!(d.admit(&sighting("dev-1", &a, "p"), 1), Some(DeviceStatus::Quarantined));
        d.forget_all();
        assert_eq!(d.admit(&sighting("dev-1", &a, "p"), 1), None);
    }
}
