//! A device's side of the wire: rustls client (TLS 1.2 limited to what STM32 + mbedTLS speak,
//! or TLS 1.3) and a small MQTT 3.1.1 client written independently of the server's codec, so
//! each checks the other.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// TLS profile of a simulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsProfile {
    /// What STM32 + STSAFE + mbedTLS run: TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, P-256.
    Stm32Tls12,
    /// TLS 1.3 with rustls defaults.
    Tls13,
}

/// How a client reaches the server.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The CA that signs the server certificate (DER).
    pub server_ca_der: Vec<u8>,
    pub server_name: String,
    pub profile: TlsProfile,
    /// Certificate chain (leaf first) and PKCS#8 key; `None` connects without one.
    pub identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// Bind the client socket to this local address (e.g. 127.0.0.2 to be "another place").
    pub bind: Option<std::net::IpAddr>,
}

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl ClientError {
    /// The server refused our certificate (a TLS alert, during or right after the handshake).
    pub fn is_tls_rejection(&self) -> bool {
        match self {
            ClientError::Tls(_) => true,
            ClientError::Io(e) => {
                let s = e.to_string();
                s.contains("alert") || s.contains("Alert") || s.contains("peer")
            }
            _ => false,
        }
    }

    /// A stable label for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Tls(m) => format!("tls: {m}"),
            ClientError::Io(e) if self.is_tls_rejection() => format!("tls: {e}"),
            ClientError::Io(e) => format!("i/o: {:?}", e.kind()),
            ClientError::Closed => "closed by the server".into(),
            ClientError::Protocol(m) => format!("protocol: {m}"),
            ClientError::Timeout(what) => format!("timed out waiting for {what}"),
        }
    }
}

/// A packet from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPacket {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        pkid: u16,
    },
    PubAck {
        pkid: u16,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    UnsubAck {
        pkid: u16,
    },
    PingResp,
    Disconnect,
}

/// CONNECT options.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub client_id: String,
    pub keep_alive_secs: u16,
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// (topic, payload, qos)
    pub will: Option<(String, Vec<u8>, u8)>,
}

fn tls_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.profile {
        TlsProfile::Stm32Tls12 => {
            provider.cipher_suites =
                vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1];
            &[&rustls::version::TLS12]
        }
        TlsProfile::Tls13 => &[&rustls::version::TLS13],
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(tls.server_ca_der.clone()))
        .map_err(|e| ClientError::Tls(format!("server CA: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain.iter().map(|c| CertificateDer::from(c.clone())).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )
            .map_err(|e| ClientError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    // A device keeps no session tickets: every connection is a full handshake (what the load
    // tests and handshake benchmarks must measure).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A device's TLS settings, parsed once and used for every connection it opens.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    bind: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(tls: &ClientTls) -> Result<Self, ClientError> {
        Ok(Connector {
            config: tls_config(tls)?,
            name: ServerName::try_from(tls.server_name.clone()).map_err(|e| ClientError::Tls(e.to_string()))?,
            bind: tls.bind,
        })
    }

    /// TCP + a full TLS handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Client {
            stream,
            rbuf: BytesMut::with_capacity(1024),
            inbox: VecDeque::new(),
            next_pkid: 1,
        })
    }
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    inbox: VecDeque<ServerPacket>,
    next_pkid: u16,
}

impl Client {
    /// TCP + TLS handshake.
    pub async fn connect(addr: SocketAddr, tls: &ClientTls) -> Result<Client, ClientError> {
        Connector::new(tls)?.connect(addr).await
    }

    /// The negotiated TLS version and suite (e.g. `TLSv1_2`, `TLS13_AES_128_GCM_SHA256`).
    pub fn tls_parameters(&self) -> (String, String) {
        let (_, c) = self.stream.get_ref();
        (
            c.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            c.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
        )
    }

    /// Whether the TLS session was resumed (devices here never resume: see [`Connector`]).
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends CONNECT and returns the CONNACK return code (0 = accepted).
    pub async fn mqtt_connect(&mut self, o: &ConnectOptions) -> Result<(bool, u8), ClientError> {
        let mut body = BytesMut::new();
        put_str(&mut body, "MQTT");
        body.put_u8(4);
        let mut flags = 0u8;
        if o.clean_session {
            flags |= 0x02;
        }
        if let Some((_, _, qos)) = &o.will {
            flags |= 0x04 | (qos << 3);
        }
        if o.username.is_some() {
            flags |= 0x80;
        }
        if o.password.is_some() {
            flags |= 0x40;
        }
        body.put_u8(flags);
        body.put_u16(o.keep_alive_secs);
        put_str(&mut body, &o.client_id);
        if let Some((topic, payload, _)) = &o.will {
            put_str(&mut body, topic);
            body.put_u16(u16::try_from(payload.len()).unwrap_or(u16::MAX));
            body.extend_from_slice(payload);
        }
        if let Some(u) = &o.username {
            put_str(&mut body, u);
        }
        if let Some(p) = &o.password {
            put_str(&mut body, p);
        }
        self.send(0x10, &body).await?;
        match self.next_packet(Duration::from_secs(10), "CONNACK").await? {
            ServerPacket::ConnAck { session_present, code } => Ok((session_present, code)),
            other => Err(ClientError::Protocol(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// Publishes; QoS 1 waits for the PUBACK (other packets meanwhile are kept for `recv`).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<(), ClientError> {
        let pkid = self.publish_nowait(topic, payload, qos).await?;
        if qos == 0 {
            return Ok(());
        }
        self.wait_puback(pkid, Duration::from_secs(30)).await
    }

    /// Sends a PUBLISH without waiting; returns its packet id (0 for QoS 0).
    pub async fn publish_nowait(&mut self, topic: &str, payload: &[u8], qos: u8) -> Result<u16, ClientError> {
        let mut body = BytesMut::with_capacity(4 + topic.len() + payload.len());
        put_str(&mut body, topic);
        let pkid = if qos > 0 { self.pkid() } else { 0 };
        if qos > 0 {
            body.put_u16(pkid);
        }
        body.extend_from_slice(payload);
        self.send(0x30 | (qos << 1), &body).await?;
        Ok(pkid)
    }

    /// Waits for the PUBACK of `pkid`.
    pub async fn wait_puback(&mut self, pkid: u16, timeout: Duration) -> Result<(), ClientError> {
        if let Some(i) = self.inbox.iter().position(|p| *p == ServerPacket::PubAck { pkid }) {
            self.inbox.remove(i);
            return Ok(());
        }
        loop {
            match self.read_packet(timeout, "PUBACK").await? {
                ServerPacket::PubAck { pkid: got } if got == pkid => return Ok(()),
                ServerPacket::Disconnect => return Err(ClientError::Closed),
                other => self.inbox.push_back(other),
            }
        }
    }

    /// Subscribes; returns the SUBACK return codes (0x80 = refused).
    pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Result<Vec<u8>, ClientError> {
        let pkid = self.pkid();
        let mut body = BytesMut::new();
        body.put_u16(pkid);
        for (f, q) in filters {
            put_str(&mut body, f);
            body.put_u8(*q);
        }
        self.send(0x82, &body).await?;
        loop {
            match self.read_packet(Duration::from_secs(10), "SUBACK").await? {
                ServerPacket::SubAck { pkid: got, codes } if got == pkid => return Ok(codes),
                other => self.inbox.push_back(other),
            }
        }
    }

    pub async fn puback(&mut self, pkid: u16) -> Result<(), ClientError> {
        self.send(0x40, &pkid.to_be_bytes()).await
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(0xC0, &[]).await?;
        loop {
            match self.read_packet(Duration::from_secs(10), "PINGRESP").await? {
                ServerPacket::PingResp => return Ok(()),
                other => self.inbox.push_back(other),
            }
        }
    }

    /// The next packet from the server (kept ones first).
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerPacket, ClientError> {
        self.next_packet(timeout, "a packet").await
    }

    /// The next packet from the server, however long it takes: for loops that have their own
    /// timers (a timeout here would arm one more timer per packet).
    pub async fn recv_untimed(&mut self) -> Result<ServerPacket, ClientError> {
        if let Some(p) = self.inbox.pop_front() {
            return Ok(p);
        }
        self.read_one().await
    }

    /// Sends DISCONNECT and closes.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.send(0xE0, &[]).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Drops the connection without DISCONNECT (an abnormal end: the will is published).
    pub fn drop_abruptly(self) {}

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        p
    }

    async fn send(&mut self, header: u8, body: &[u8]) -> Result<(), ClientError> {
        let mut frame = BytesMut::with_capacity(5 + body.len());
        frame.put_u8(header);
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            frame.put_u8(b);
            if len == 0 {
                break;
            }
        }
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn next_packet(&mut self, timeout: Duration, what: &'static str) -> Result<ServerPacket, ClientError> {
        if let Some(p) = self.inbox.pop_front() {
            return Ok(p);
        }
        self.read_packet(timeout, what).await
    }

    async fn read_packet(&mut self, timeout: Duration, what: &'static str) -> Result<ServerPacket, ClientError> {
        tokio::time::timeout(timeout, self.read_one())
            .await
            .map_err(|_| ClientError::Timeout(what))?
    }

    /// The next packet off the wire (cancel-safe: bytes read stay in `rbuf`).
    async fn read_one(&mut self) -> Result<ServerPacket, ClientError> {
        loop {
            if let Some(p) = decode(&mut self.rbuf)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    buf.extend_from_slice(s.as_bytes());
}

fn decode(buf: &mut BytesMut) -> Result<Option<ServerPacket>, ClientError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(b) = buf.get(header) else { return Ok(None) };
        len |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(ClientError::Protocol("remaining length".into()));
        }
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let byte1 = buf[0];
    buf.advance(header);
    let mut body = buf.split_to(len).freeze();
    let short = || ClientError::Protocol("short packet".into());
    Ok(Some(match byte1 >> 4 {
        2 => {
            if body.len() < 2 {
                return Err(short());
            }
            ServerPacket::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        3 => {
            let qos = (byte1 >> 1) & 3;
            if body.len() < 2 {
                return Err(short());
            }
            let tlen = usize::from(body.get_u16());
            if body.len() < tlen {
                return Err(short());
            }
            let topic =
                String::from_utf8(body.split_to(tlen).to_vec()).map_err(|_| ClientError::Protocol("topic".into()))?;
            let pkid = if qos > 0 {
                if body.len() < 2 {
                    return Err(short());
                }
                body.get_u16()
            } else {
                0
            };
            ServerPacket::Publish {
                topic,
                payload: body,
                qos,
                pkid,
            }
        }
        4 => {
            if body.len() < 2 {
                return Err(short());
            }
            ServerPacket::PubAck { pkid: body.get_u16() }
        }
        9 => {
            if body.len() < 2 {
                return Err(short());
            }
            let pkid = body.get_u16();
            ServerPacket::SubAck {
                pkid,
                codes: body.to_vec(),
            }
        }
        11 => {
            if body.len() < 2 {
                return Err(short());
            }
            ServerPacket::UnsubAck { pkid: body.get_u16() }
        }
        13 => ServerPacket::PingResp,
        14 => ServerPacket::Disconnect,
        t => return Err(ClientError::Protocol(format!("unexpected packet type {t}"))),
    }))
}
