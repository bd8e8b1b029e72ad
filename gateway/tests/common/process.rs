//! `fleetward serve` as a child process (for what only a real process shows: two nodes, kill -9,
//! backup and restore), and fresh PostgreSQL databases.

use fleetward_test_support::TestDevice;
use sim_devices::client::{Client, ClientError, ClientTls, TlsProfile};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A fresh PostgreSQL database; dropped by [`Database::drop_now`].
pub struct Database {
    admin: String,
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn create(prefix: &str) -> Database {
        let admin = std::env::var("FLEETWARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("{prefix}_{}", std::process::id());
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test (.ci/run starts it): {e}"));
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Database { admin, name, url }
    }

    /// A number from SQL run on the server's admin database (not this one).
    pub async fn admin_scalar(&self, sql: &str) -> i64 {
        scalar(&self.admin, sql).await
    }

    pub async fn drop_now(&self) {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.admin)
            .await
            .unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await;
    }
}

/// A number from SQL run on its own connection to the database at `url` (SQLite or PostgreSQL).
pub async fn scalar(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The DER of the server CA that a `fleetward serve` on the data directory `data` generated
/// (`data/tls/server-ca.pem`), for its devices to trust.
pub fn server_ca_der(data: &Path) -> Vec<u8> {
    let pem = std::fs::read(data.join("tls/server-ca.pem")).unwrap();
    verifier::x509::certificates_from_pem_or_der(&pem).unwrap()[0].to_vec()
}

/// Every item of a paginated API list (`GET base+path`, 1,000 per page, following
/// `next_cursor`), with `token`.
pub async fn get_all(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Vec<serde_json::Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{base}{path}{sep}limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body: serde_json::Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        items.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// `fleetward serve` on the data directory `data`, trusting the provisioning CA in `ca` (PEM),
/// on SQLite, or on the PostgreSQL database at `db`.
pub fn serve_trusting(data: &Path, db: Option<&str>, ca: &Path) -> ServeProcess {
    let mut args = vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--trust-ca".into(),
        ca.display().to_string(),
    ];
    if let Some(url) = db {
        args.extend(["--database-url".into(), url.to_owned()]);
    }
    ServeProcess::start("fleetward serve", &args)
}

/// `device`'s TLS 1.2 (the STM32 profile), trusting the server CA `server_ca_der`.
pub fn device_tls(server_ca_der: &[u8], device: &TestDevice) -> ClientTls {
    ClientTls {
        server_ca_der: server_ca_der.to_vec(),
        server_name: "localhost".into(),
        profile: TlsProfile::Stm32Tls12,
        identity: Some((vec![device.der.clone()], device.key.serialize_der())),
        bind: None,
    }
}

/// A device's session at `addr`: mTLS with `tls`, then MQTT CONNECT as `id` (clean session,
/// keep-alive 30 s). The client and the CONNACK's return code.
pub async fn mqtt_session(addr: SocketAddr, tls: &ClientTls, id: &str) -> Result<(Client, u8), ClientError> {
    let mut c = Client::connect(addr, tls).await?;
    let (_, code) = c.mqtt_connect(&super::options(id)).await?;
    Ok((c, code))
}

/// A `fleetward serve` child process on loopback port 0; killed (SIGKILL) when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub mqtt: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// The first start against a fresh database prints an admin token.
    pub token: Option<String>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// `fleetward serve` with `args` after the loopback listeners; returns once it serves.
    pub fn start(label: &str, args: &[String]) -> ServeProcess {
        Self::start_logging_to(label, args, None, "warn")
    }

    /// The same, with the server's stderr (its logs, filtered by `rust_log`) written to `stderr`
    /// instead of the test's.
    pub fn start_logging_to(
        label: &str,
        args: &[String],
        stderr: Option<&std::path::Path>,
        rust_log: &str,
    ) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward"));
        cmd.arg("serve")
            .args(["--mqtt-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--lorawan-udp-listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(match stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            });
        for var in [
            "FLEETWARD_CONFIG",
            "FLEETWARD_DATABASE_URL",
            "FLEETWARD_NATS_URL",
            "FLEETWARD_TOKEN",
            "FLEETWARD_DATA_DIR",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("fleetward serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let (mut mqtt, mut http, mut token) = (None, None, None);
            let mut token_next = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let t = line.trim();
                if let Some(a) = t.strip_prefix("MQTT/TLS") {
                    mqtt = Some(a.trim().to_owned());
                } else if let Some(a) = t.strip_prefix("HTTP") {
                    http = Some(a.trim().to_owned());
                } else if token_next {
                    token = Some(t.to_owned());
                    token_next = false;
                } else if t.starts_with("first start: an admin API token") {
                    token_next = true;
                } else if t.starts_with("stop with Ctrl-C") {
                    let _ = tx.send((mqtt.take(), http.take(), token.take()));
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let (mqtt, http, token) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{label} did not start within 60 s"));
        ServeProcess {
            child,
            mqtt: mqtt.expect("MQTT address printed").parse().unwrap(),
            http: http.expect("HTTP address printed"),
            token,
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, a free loopback
/// port), so that stopping it disturbs no other test. As root, it runs as the `postgres` user.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    pub url: String,
}

impl PrivatePostgres {
    fn bin_dir() -> std::path::PathBuf {
        let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (.ci/run installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions.pop().expect("a PostgreSQL version with pg_ctl")
    }

    fn as_owner(&self, program: &str) -> Command {
        as_postgres(&self.bin.join(program))
    }

    pub fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        let bin = Self::bin_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the private PostgreSQL directory");
        }
        let pg = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bin,
            port,
        };
        let out = pg
            .as_owner("initdb")
            .args([
                "-D",
                pg.data().to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.start_again();
        pg
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .as_owner("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "-l",
            ])
            .arg(self.dir.path().join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (`immediate`: as if it crashed; clients see their connections
    /// drop).
    pub fn stop(&self) {
        let out = self
            .as_owner("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn as_postgres(program: &std::path::Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}
