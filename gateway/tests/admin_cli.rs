//! `fleetward migrate` and `fleetward keys generate|rotate` end to end (real binary, real SQLite
//! database on disk; the registry's own tests cover PostgreSQL).
#![allow(clippy::unwrap_used)]

use registry::{Kek, Keyring, Registry};
use std::process::{Command, Output};

fn fleetward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetward"))
        .args(args)
        .env_remove("FLEETWARD_DATABASE_URL")
        .env_remove("FLEETWARD_KEK")
        .env_remove("FLEETWARD_KEK_FILE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn migrate_from_empty_then_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let o = fleetward(&["migrate", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    // Every migration file of the SQLite set is applied.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../registry/migrations/sqlite"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count();
    assert!(migrations >= 4);
    assert!(
        stdout(&o).contains(&format!("{migrations} migration(s) applied")),
        "{}",
        stdout(&o)
    );
    assert!(data.join("fleetward.db").exists());
    let o = fleetward(&["migrate", "--data-dir", d]);
    assert!(stdout(&o).contains("0 migration(s) applied"), "{}", stdout(&o));
}

#[test]
fn generate_then_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let d = data.to_str().unwrap();

    // A device's NAK sealed under the old KEK.
    let old_hex = "31".repeat(32);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = Registry::open(
            &Registry::sqlite_url(&data),
            Keyring::new(Kek::from_hex("2025-01", &old_hex).unwrap()),
        )
        .await
        .unwrap();
        r.insert_sigfox_device("0042ABCD", Some(&[9; 16]), 0).await.unwrap();
        r.close().await;
    });

    // A new KEK line, put first in the key file; the old one stays listed for the rotation.
    let o = fleetward(&["keys", "generate", "--id", "2026-11"]);
    assert_eq!(o.status.code(), Some(0));
    let line = stdout(&o).trim().to_owned();
    let (id, new_hex) = line.split_once(' ').unwrap();
    assert_eq!((id, new_hex.len()), ("2026-11", 64));
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, format!("# current first\n{line}\n2025-01 {old_hex}\n")).unwrap();

    let o = fleetward(&[
        "keys",
        "rotate",
        "--data-dir",
        d,
        "--kek-file",
        kek_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("re-sealed 1 secret(s) under KEK `2026-11`"),
        "{}",
        stdout(&o)
    );

    // The new KEK alone opens it now.
    rt.block_on(async {
        let r = Registry::open(
            &Registry::sqlite_url(&data),
            Keyring::new(Kek::from_hex("2026-11", new_hex).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(&r.sigfox_device("0042ABCD").await.unwrap().nak.unwrap()[..], &[9; 16]);
    });
}

#[test]
fn rotate_without_keys_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = fleetward(&["keys", "rotate", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--kek-file"));
}
