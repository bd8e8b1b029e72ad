//! What the gateway's benchmark programs share.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub(crate) use fleetward_test_support::bench::{arg, stats};

/// A real server on loopback ports chosen by the system, its data in a temporary directory
/// (kept while the returned guard lives), on `database_url` (empty: SQLite there). `tweak`
/// adjusts the configuration first.
pub(crate) async fn start_server(
    database_url: &str,
    tweak: impl FnOnce(&mut gateway::Config),
) -> (gateway::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway::Config {
        data_dir: dir.path().to_path_buf(),
        database_url: (!database_url.is_empty()).then(|| database_url.to_owned()),
        ..gateway::Config::default()
    };
    config.mqtt.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.lorawan.udp_listen = "127.0.0.1:0".into();
    tweak(&mut config);
    (gateway::start(config).await.unwrap(), dir)
}
