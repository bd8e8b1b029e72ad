//! A real server on loopback port 0 with a temporary data directory, and real TLS clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

pub mod process;

use fleetward_test_support::{TestCa, TestDevice};
use gateway::{Config, Running};
use registry::{Event, EventFilter};
use sim_devices::client::{Client, ClientError, ClientTls, ConnectOptions, TlsProfile};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub struct Server {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub server_ca_der: Vec<u8>,
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.mqtt.listen = "127.0.0.1:0".into();
    c.http.listen = "127.0.0.1:0".into();
    c.lorawan.udp_listen = "127.0.0.1:0".into();
    c
}

/// Starts a server trusting `cas` (written as PEM files and passed like `--trust-ca`).
pub async fn start(cas: &[&TestCa]) -> Server {
    start_with(cas, |_| {}).await
}

pub async fn start_with(cas: &[&TestCa], tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    for (i, ca) in cas.iter().enumerate() {
        let path = dir.path().join(format!("ca-{i}.pem"));
        std::fs::write(&path, ca.pem()).unwrap();
        c.trust_ca.push(path);
    }
    tweak(&mut c);
    let running = gateway::start(c).await.expect("server starts");
    let pem = std::fs::read(running.server_ca.as_ref().unwrap()).unwrap();
    let server_ca_der = verifier::x509::certificates_from_pem_or_der(&pem).unwrap()[0].to_vec();
    Server {
        running,
        dir,
        server_ca_der,
    }
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.running.mqtt_addr
    }

    pub fn tls(&self, device: Option<&TestDevice>, profile: TlsProfile) -> ClientTls {
        ClientTls {
            server_ca_der: self.server_ca_der.clone(),
            server_name: "localhost".into(),
            profile,
            identity: device.map(|d| (vec![d.der.clone()], d.key.serialize_der())),
            bind: None,
        }
    }

    /// TLS + CONNECT with `client_id`; the CONNACK code, or the client error.
    pub async fn connect(
        &self,
        device: &TestDevice,
        client_id: &str,
        profile: TlsProfile,
    ) -> Result<(Client, u8), ClientError> {
        let mut c = Client::connect(self.addr(), &self.tls(Some(device), profile)).await?;
        let (_, code) = c.mqtt_connect(&options(client_id)).await?;
        Ok((c, code))
    }

    pub fn server_ca_path(&self) -> PathBuf {
        self.running.server_ca.clone().unwrap()
    }

    /// Waits (bounded) for an event of `kind` matching `pred`.
    pub async fn wait_event(&self, kind: &str, pred: impl Fn(&Event) -> bool) -> Event {
        for _ in 0..100 {
            let events = self
                .running
                .registry
                .events(
                    &EventFilter {
                        kind: Some(kind.into()),
                        ..Default::default()
                    },
                    1000,
                )
                .await
                .unwrap();
            if let Some(e) = events.into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no `{kind}` event arrived");
    }

    /// Calls the HTTP API with the first-start admin token: the status and the JSON body (null
    /// when there is none).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let token = self.running.initial_admin_token.as_ref().unwrap();
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.running.http_addr))
            .bearer_auth(token.as_str());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        reqwest::get(format!("http://{}/metrics", self.running.http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn count_events(&self, kind: &str) -> usize {
        self.running
            .registry
            .events(
                &EventFilter {
                    kind: Some(kind.into()),
                    ..Default::default()
                },
                10_000,
            )
            .await
            .unwrap()
            .len()
    }
}

pub fn options(client_id: &str) -> ConnectOptions {
    ConnectOptions {
        client_id: client_id.into(),
        keep_alive_secs: 30,
        clean_session: true,
        ..Default::default()
    }
}

/// The value of one series (its name with labels, exactly as exposed) in a `/metrics` text.
pub fn series_value<T: std::str::FromStr>(metrics: &str, series: &str) -> Option<T> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn check_of(e: &Event) -> Option<String> {
    e.detail.as_ref()?.get("check")?.as_str().map(str::to_owned)
}

/// The device id fleetward derives from a test device's CN.
pub fn id_of(device: &TestDevice) -> String {
    verifier::x509::describe_certificate(&device.der)
        .unwrap()
        .subject
        .split(',')
        .find_map(|rdn| rdn.strip_prefix("CN="))
        .unwrap()
        .to_owned()
}
