//! # registry — the fleet database
//!
//! Owns every byte of fleetward's persistent state and every SQL statement. One API over two
//! backends through sqlx's `Any` driver: **SQLite** (a file in the data directory, WAL, the
//! embedded default) and **PostgreSQL** (by URL, for scale and several gateway nodes). The
//! statements are portable (`$N` parameters, `ON CONFLICT`, `RETURNING`); each backend has its
//! own migration set (`migrations/sqlite`, `migrations/postgres`), applied by [`Registry::open`]
//! and by `fleetward migrate`.
//!
//! Rules every module keeps:
//! - times are unix **milliseconds** passed in by the caller (`now_ms`), so tests control time;
//! - races are settled by the database (unique keys + `ON CONFLICT`, conditional `UPDATE`s), never
//!   by read-then-write in the application, so two gateway nodes cannot both win;
//! - LPWAN root and session keys are sealed (AES-256-GCM, bound to their row) before they reach
//!   SQL: see [`Keyring`];
//! - errors are [`RegistryError`]: typed, retryable or not, and free of SQL.

/// The event kinds that change what a handshake or a connection is judged against (CAs, revoked
/// serials, CRLs, device status), as an SQL list: the trust generation counts them (see
/// [`TrustGeneration`]), and the device directory forgets what they name.
macro_rules! trust_event_kinds {
    () => {
        "('ca.registered', 'ca.revoked', 'ca.serial_revoked', 'ca.crl_added', 'device.status')"
    };
}

/// The columns [`telemetry::stored_from_row`] reads a [`StoredMessage`] from, as a `SELECT` list
/// of `telemetry`: every query that returns stored messages names them through this.
macro_rules! stored_message_columns {
    () => {
        "id, device_id, topic, payload, qos, source, received_at"
    };
}

mod attestation;
mod audit;
mod cas;
mod commands;
mod devices;
mod directory;
mod error;
mod events;
mod health;
mod lorawan_uplinks;
mod lpwan;
mod registrar;
mod relay_outbox;
mod seal;
mod settings;
mod sigfox_uplinks;
mod sql;
mod telemetry;
mod tokens;

pub use attestation::{
    ATTESTATION_ACTOR, AppraisalEffect, AttestationPolicy, AttestationRecord, AttestationResult, FirmwareReference,
    OnFailure, RedeemOutcome,
};
pub use audit::{AuditOptions, AuditReport, CHECKS as AUDIT_CHECKS, COUNT_CAP as AUDIT_COUNT_CAP, Finding, Severity};
pub use cas::{CaRecord, CaStatus, NewCa};
pub use commands::PendingCommand;
pub use devices::{
    DeviceFilter, DeviceRecord, DeviceStatus, FleetSummary, Integrity, Page, Registration, Sighting, TrustGeneration,
};
pub use directory::Admission;
pub use error::RegistryError;
pub use events::{Event, EventCount, EventFilter, NewEvent, RATE_KINDS};
pub use health::Probe;
pub use lorawan_uplinks::{LorawanUplink, NewLorawanUplink, StoredUplinks, UplinkOutcome};
pub use lpwan::{
    LorawanDeviceInfo, LorawanRootKeys, LorawanSession, NewAbpDevice, NewLorawanDevice, SESSION_KEYS_LEN,
    SigfoxDeviceKeys, session_number,
};
pub use relay_outbox::RelayOutbox;
pub use seal::{Kek, Keyring};
pub use sigfox_uplinks::{
    MAX_QUEUED_SIGFOX_DOWNLINKS, NewSigfoxUplink, SigfoxDeviceInfo, SigfoxDownlink, SigfoxUplink, StoredSigfoxUplink,
};
pub use telemetry::{Source, StoredMessage, TelemetryMessage};
pub use tokens::{NewToken, Role, TokenInfo};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};
use std::sync::Arc;
use std::time::Duration;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Which database is behind the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(RegistryError::Invalid {
                what: "database URL",
                detail: "use sqlite://PATH or postgres://USER@HOST/DB".into(),
            })
        }
    }
}

/// The fleet database. Cheap to clone (a pool handle and the keyring).
#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    /// Where write transactions run: on SQLite one connection of its own (see
    /// [`Registry::connect_with`]), on PostgreSQL the same pool.
    writer: AnyPool,
    /// SQLite: the telemetry indexer's reads, on one connection with a small page cache (see
    /// [`Registry::index_telemetry`]). `None` on PostgreSQL.
    index_reader: Option<AnyPool>,
    backend: Backend,
    keys: Option<Arc<Keyring>>,
    /// SQLite has one writer at a time; its busy handler polls with growing sleeps, so a
    /// steady writer (the telemetry batcher) can starve others for seconds (measured: a JITR
    /// waited 1.46 s behind a 32k msg/s flood). Writers of this process queue here instead,
    /// first come first served. `None` on PostgreSQL (row locks, no single writer).
    write_queue: Option<Arc<WriteQueue>>,
    /// Known devices, for reconnections without a transaction (see [`directory`]).
    directory: Arc<directory::Directory>,
    /// Registrations waiting to be committed together (see [`registrar`]).
    registrar: Arc<registrar::Registrar>,
    /// The URL it was opened with (for [`health::Probe`]'s own connection).
    url: Arc<str>,
    /// Whether the database answers (see [`health`]).
    health: Arc<health::Health>,
    /// The JetStream outbox this process stamps on the telemetry it stores (0: none; see
    /// [`relay_outbox`]).
    relay_outbox: Arc<std::sync::atomic::AtomicI64>,
}

/// SQLite writers of this process, first come first served — except that bulk writes (the
/// telemetry batcher) step aside while an interactive write (a device's registration, an
/// operator's action) is waiting, so a connect never waits behind a stream of batches.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    lock: Arc<tokio::sync::Mutex<()>>,
    interactive_waiting: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// How often the background checkpoint copies the SQLite WAL into the database.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL frames into the database file, concurrently with writers and readers
/// (`PASSIVE` takes neither the write lock nor this process's write turn), until the pool
/// closes. A write-heavy half second leaves a few MiB to copy; an idle one costs one statement.
/// When the last connection closes, SQLite checkpoints what is left.
async fn checkpointer(pool: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

/// Most ids one pass of the telemetry indexer covers. A thousand devices flooding share a leaf
/// write by the few dozen rows at this size; the pass is written in parts, so it holds the write
/// lock only a part at a time.
const INDEX_CHUNK: u32 = 65_536;
/// How long the telemetry indexer rests once caught up (the longest an unindexed tail waits).
const INDEX_EVERY: Duration = Duration::from_millis(250);

impl Registry {
    /// Keeps SQLite's per-device telemetry index close behind the table (see
    /// [`Registry::index_telemetry`]) until the registry closes: what a server runs beside its
    /// telemetry writers, after [`Registry::migrate`]. Returns at once on PostgreSQL.
    pub async fn keep_telemetry_indexed(self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        loop {
            if self.pool.is_closed() {
                return;
            }
            match self.index_telemetry(INDEX_CHUNK).await {
                Ok(moved) if moved >= u64::from(INDEX_CHUNK) => tokio::task::yield_now().await,
                Ok(_) => tokio::time::sleep(INDEX_EVERY).await,
                Err(e) => {
                    if self.pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "indexing telemetry failed; retrying");
                    tokio::time::sleep(INDEX_EVERY).await;
                }
            }
        }
    }
}

/// Page cache of each reading SQLite connection, 64 MiB: index pages of a busy telemetry table
/// stay hot.
const READER_CACHE: &str = "PRAGMA cache_size = -65536";
/// Page cache of the telemetry indexer's reading connection. A pass reads tens of thousands of
/// fresh rows once; on a connection of its own they neither grow nor evict the readers' 64 MiB
/// caches that serve the API. A pass's sort (~50 bytes per id, ~3 MiB) fits within this size,
/// which SQLite lets a sort keep in memory.
const INDEX_READER_CACHE: &str = "PRAGMA cache_size = -8192";
/// Page cache of the writing connection. Its cache is never dropped (no other connection writes),
/// so it fills with every page written since start; at 64 MiB the process grew by 21 MiB over
/// 9,000 brand-new devices (the load test's connect cycles allow 16). The pages a write touches
/// again and again (b-tree interiors, the right edge of the time indexes) fit in far less: 8 MiB.
const WRITER_CACHE: &str = "PRAGMA cache_size = -8192";

/// A SQLite pool of `max` connections, each set up as the registry needs.
async fn sqlite_pool(options: AnyPoolOptions, url: &str, max: u32, cache_size: &'static str) -> Result<AnyPool> {
    let pool = options
        .max_connections(max)
        // A local file: no connection goes stale, and the check cost a round trip to the
        // driver's thread per transaction.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // WAL: readers never block the writer. synchronous=FULL: a commit survives power
                // loss, not only a crash (QoS 1 acks wait for it).
                for pragma in [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",
                    "PRAGMA busy_timeout = 5000",
                    // Checkpoints run in the background (`checkpointer`), never inside a commit:
                    // SQLite's automatic checkpoint made every sixth telemetry commit take ~20 ms
                    // instead of ~1 ms under a QoS 1 flood (the WAL stays above the threshold
                    // while the consumer reads), and a registration waited behind it.
                    "PRAGMA wal_autocheckpoint = 0",
                    // The WAL file shrinks back to this after it restarts.
                    "PRAGMA journal_size_limit = 67108864",
                    "PRAGMA foreign_keys = ON",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                sqlx::query(cache_size).execute(&mut *conn).await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// A write transaction (and, on SQLite, this process's turn to write).
pub(crate) struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Commits a transaction that wrote `events` trust events, counting them in `trust_state`
    /// as its last statement (see [`TrustGeneration`]): the count's row lock orders these
    /// commits, and is held only for the COMMIT that follows, so it never waits on another.
    pub(crate) async fn commit_trust_changes(mut self, events: u64) -> Result<()> {
        sqlx::query("UPDATE trust_state SET changes = changes + $1 WHERE id = 1")
            .bind(i64::try_from(events).unwrap_or(i64::MAX))
            .execute(&mut *self.tx)
            .await?;
        self.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How many connections one process keeps to the database server. SQLite always uses 8 for
/// reads and single-statement writes, and one more for write transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize {
    /// Pooled PostgreSQL connections (the health probe opens one more of its own). Nodes ×
    /// (this + 1) must stay under the server's `max_connections`.
    pub postgres_max_connections: u32,
}

impl PoolSize {
    /// The smallest pool accepted: the background writers (group commit, the device
    /// directory, the trust poll) each hold a connection at times while requests use the rest.
    pub const MIN: u32 = 4;
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize {
            postgres_max_connections: 16,
        }
    }
}

impl Registry {
    /// The SQLite URL for a data directory (`DIR/fleetward.db`, created if missing).
    pub fn sqlite_url(dir: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", dir.join("fleetward.db").display())
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str, keys: Keyring) -> Result<Self> {
        Self::open_with(url, keys, PoolSize::default()).await
    }

    /// [`Registry::open`] with a chosen PostgreSQL pool size.
    pub async fn open_with(url: &str, keys: Keyring, pool: PoolSize) -> Result<Self> {
        let registry = Self::connect_with(url, Some(keys), pool).await?;
        registry.migrate().await?;
        Ok(registry)
    }

    /// Connects without migrating. Without a keyring, everything works except sealed-key
    /// custody (LPWAN keys), which then fails with [`RegistryError::Sealing`].
    pub async fn connect(url: &str, keys: Option<Keyring>) -> Result<Self> {
        Self::connect_with(url, keys, PoolSize::default()).await
    }

    /// [`Registry::connect`] with a chosen PostgreSQL pool size.
    pub async fn connect_with(url: &str, keys: Option<Keyring>, pool: PoolSize) -> Result<Self> {
        install_default_drivers();
        let backend = Backend::of(url)?;
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let (pool, writer, index_reader) = match backend {
            Backend::Sqlite => {
                // Every write transaction runs on one connection of its own (SQLite has one
                // writer at a time anyway). In WAL mode a connection drops its whole page cache
                // when another connection wrote since its last transaction: with writes spread
                // over the pool, each registration re-read ~40 pages (strace: 38 pwrite, 39 pread
                // per commit). On its own connection the writer's cache stays warm: +8–12 %
                // QoS 1 telemetry per server CPU-second (1,000 devices, three runs each).
                let writer = sqlite_pool(options.clone(), url, 1, WRITER_CACHE).await?;
                let index_reader = sqlite_pool(options.clone(), url, 1, INDEX_READER_CACHE).await?;
                (
                    sqlite_pool(options, url, 8, READER_CACHE).await?,
                    writer,
                    Some(index_reader),
                )
            }
            Backend::Postgres => {
                let pool = options
                    .max_connections(pool.postgres_max_connections.max(PoolSize::MIN))
                    .connect(url)
                    .await?;
                (pool.clone(), pool, None)
            }
        };
        if backend == Backend::Sqlite {
            tokio::spawn(checkpointer(pool.clone()));
        }
        Ok(Registry {
            pool,
            writer,
            index_reader,
            backend,
            keys: keys.map(Arc::new),
            write_queue: (backend == Backend::Sqlite).then(|| Arc::new(WriteQueue::default())),
            directory: Arc::default(),
            registrar: Arc::default(),
            url: Arc::from(url),
            health: Arc::default(),
            relay_outbox: Arc::default(),
        })
    }

    /// Applies pending migrations; returns how many were applied.
    pub async fn migrate(&self) -> Result<usize> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // A fresh database has no migrations table yet: nothing applied (and nothing to log).
        let before = if self.has_migrations_table().await? {
            self.applied_migrations().await?
        } else {
            0
        };
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => RegistryError::from(e),
            other => {
                tracing::error!(error = %other, "migration failed");
                RegistryError::Database { code: None }
            }
        })?;
        Ok(self.applied_migrations().await?.saturating_sub(before))
    }

    async fn has_migrations_table(&self) -> Result<bool> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' \
                                  AND table_schema = current_schema()"
            }
        };
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    async fn applied_migrations(&self) -> Result<usize> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A round trip to the database (readiness probes).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        // On PostgreSQL the writer is the same pool.
        if self.backend == Backend::Sqlite {
            self.writer.close().await;
        }
        if let Some(index_reader) = &self.index_reader {
            index_reader.close().await;
        }
    }

    /// A transaction that will write. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so concurrent writers queue on `busy_timeout` instead of failing to upgrade a read lock.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx> {
        let turn = self.write_turn().await;
        self.begin_with_turn(turn).await
    }

    /// A write transaction for bulk work (telemetry batches): yields to interactive writers.
    pub(crate) async fn begin_bulk_write(&self) -> Result<WriteTx> {
        let turn = match &self.write_queue {
            Some(q) => {
                use std::sync::atomic::Ordering;
                loop {
                    let idle = q.idle.notified();
                    tokio::pin!(idle);
                    idle.as_mut().enable();
                    if q.interactive_waiting.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    idle.await;
                }
                Some(q.lock.clone().lock_owned().await)
            }
            None => None,
        };
        self.begin_with_turn(turn).await
    }

    async fn begin_with_turn(&self, turn: Option<tokio::sync::OwnedMutexGuard<()>>) -> Result<WriteTx> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// This process's turn to write (SQLite); hold it across a single-statement write.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        use std::sync::atomic::Ordering;
        let q = self.write_queue.as_ref()?;
        // Counted while waiting, also if this future is dropped before its turn comes.
        struct Waiting<'a>(&'a WriteQueue);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.0.interactive_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.0.idle.notify_waiters();
                }
            }
        }
        q.interactive_waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(q);
        let turn = q.lock.clone().lock_owned().await;
        drop(waiting);
        Some(turn)
    }

    /// An interactive write (not the telemetry batcher) waits for this process's SQLite write
    /// turn. Always `false` on PostgreSQL.
    pub(crate) fn interactive_write_waiting(&self) -> bool {
        self.write_queue
            .as_ref()
            .is_some_and(|q| q.interactive_waiting.load(std::sync::atomic::Ordering::Acquire) > 0)
    }

    /// The connection pool now: (open connections, idle among them, most it may open).
    pub fn pool_stats(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (self.pool.size(), idle, self.pool.options().get_max_connections())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn keys(&self) -> Result<&Keyring> {
        self.keys.as_deref().ok_or_else(|| RegistryError::Sealing {
            detail: "no key-encryption key configured (--kek-file or FLEETWARD_KEK)".into(),
        })
    }
}
