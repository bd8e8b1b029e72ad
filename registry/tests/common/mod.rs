//! Test databases: every registry test runs on SQLite (a fresh file) and PostgreSQL (a fresh
//! database on the server at `FLEETWARD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, created by the test and dropped after it, even
//! if it panics). PostgreSQL being unreachable fails the test: it is never skipped.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use registry::{Kek, Keyring, Registry};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn admin_url() -> String {
    std::env::var("FLEETWARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub registry: Registry,
    pub url: String,
    /// The SQLite file (for tests that inspect raw bytes on disk).
    pub sqlite_file: Option<PathBuf>,
    pg_database: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub fn keyring() -> Keyring {
    Keyring::new(Kek::from_hex("test-1", &"5e".repeat(32)).unwrap())
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        Self::sqlite_with(keyring()).await
    }

    pub async fn sqlite_with(keys: Keyring) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = Registry::sqlite_url(dir.path());
        let registry = Registry::open(&url, keys).await.expect("open SQLite registry");
        TestDb {
            registry,
            url,
            sqlite_file: Some(dir.path().join("fleetward.db")),
            pg_database: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        Self::postgres_with(keyring()).await
    }

    pub async fn postgres_with(keys: Keyring) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("fw_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let admin = admin_url();
        let (base, _) = admin.rsplit_once('/').expect("postgres URL with a database");
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for these tests (.ci/run starts it): {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{base}/{name}");
        let registry = Registry::open(&url, keys).await.expect("open PostgreSQL registry");
        TestDb {
            registry,
            url,
            sqlite_file: None,
            pg_database: Some(name),
            _dir: None,
        }
    }

    /// Opens a second handle on the same database (another "node", or a restart).
    pub async fn reopen(&self, keys: Keyring) -> Registry {
        Registry::open(&self.url, keys).await.unwrap()
    }
}

impl TestDb {
    /// A scalar from raw SQL on a separate connection (test inspection only).
    pub async fn raw_scalar(&self, sql: &str) -> i64 {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url)
            .await
            .unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    /// Raw SQL on a separate connection (tests simulating writes made outside fleetward).
    pub async fn raw_execute(&self, sql: &str) {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Every byte the database holds: for SQLite the files on disk (database and write-ahead
    /// log), for PostgreSQL a full `pg_dump` of the test database (bytea appears as hex).
    pub fn dump(&self) -> Vec<u8> {
        match &self.sqlite_file {
            Some(file) => {
                let mut bytes = std::fs::read(file).unwrap();
                bytes.extend(std::fs::read(file.with_extension("db-wal")).unwrap_or_default());
                bytes
            }
            None => {
                let out = std::process::Command::new("pg_dump")
                    .args(["--data-only", "--no-owner", &self.url])
                    .output()
                    .expect("pg_dump (postgresql-client) is required for the sealed-key test");
                assert!(
                    out.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_database.take() else { return };
        let admin = admin_url();
        // Async drop is not a thing: a short-lived runtime on its own thread drops the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            })
        })
        .join();
    }
}

/// `both!(case, …)`: for each `async fn case(db: &TestDb)`, a `case::sqlite` and a
/// `case::postgres` test.
#[macro_export]
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    let db = super::common::TestDb::sqlite().await;
                    super::$case(&db).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    let db = super::common::TestDb::postgres().await;
                    super::$case(&db).await;
                }
            }
        )*
    };
}

pub const NOW: i64 = 1_795_000_000_000; // 2026-11-19T…Z, in ms
