//! Simulated LoRaWAN devices (an STSAFE-A1LR keeps the root keys; here they are plain memory)
//! and a simulated packet forwarder that carries their frames to a network server over the
//! Semtech UDP protocol, as a real gateway does.
//!
//! - [`LorawanDevice`]: OTAA (join-request, join-accept checked and decrypted, session keys
//!   derived) or ABP; data uplinks with the 32-bit counter, FRMPayload encryption and the MIC
//!   (1.0.x, or 1.1 with TxDr/TxCh in B1 and encrypted FOpts). Bad actors come from the same
//!   device: replay a frame, flip a bit, reuse a DevNonce, forge with a wrong key.
//! - [`PacketForwarder`]: an "up" socket for PUSH_DATA (waits for the PUSH_ACK) and a "down"
//!   socket that keeps the downlink path open with PULL_DATA and receives PULL_RESP (answered
//!   with TX_ACK). The datagrams are written here from the protocol text, independently of the
//!   server's decoder.

use base64::Engine as _;
use lrwn::{AES128Key, DevAddr, EUI64, NetID};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// What went wrong on the device or forwarder side.
#[derive(Debug, thiserror::Error)]
pub enum LorawanSimError {
    #[error("frame: {0}")]
    Frame(String),
    #[error("the join-accept's MIC does not verify: not from our join server")]
    JoinAcceptMic,
    #[error("the device has not joined")]
    NotJoined,
    #[error("UDP: {0}")]
    Io(#[from] std::io::Error),
    #[error("no {0} from the server in time")]
    Timeout(&'static str),
}

fn frame(e: impl std::fmt::Display) -> LorawanSimError {
    LorawanSimError::Frame(e.to_string())
}

fn key<E: std::fmt::Display>(r: Result<AES128Key, E>) -> Result<[u8; 16], LorawanSimError> {
    r.map(|k| k.to_bytes()).map_err(frame)
}

/// A device's session, after a join or as provisioned for ABP.
#[derive(Clone)]
pub struct DeviceSession {
    pub dev_addr: [u8; 4],
    pub f_nwk_s_int_key: [u8; 16],
    pub s_nwk_s_int_key: [u8; 16],
    pub nwk_s_enc_key: [u8; 16],
    pub app_s_key: [u8; 16],
    /// The counter the next uplink uses.
    pub fcnt_up: u32,
}

impl std::fmt::Debug for DeviceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSession")
            .field("dev_addr", &hex::encode_upper(self.dev_addr))
            .field("fcnt_up", &self.fcnt_up)
            .finish_non_exhaustive()
    }
}

/// A simulated LoRaWAN end device.
pub struct LorawanDevice {
    pub dev_eui: [u8; 8],
    pub join_eui: [u8; 8],
    /// LoRaWAN 1.1 (else 1.0.x).
    pub v1_1: bool,
    app_key: [u8; 16],
    nwk_key: [u8; 16],
    /// The DevNonce the next join-request uses.
    pub dev_nonce: u16,
    /// DevNonce of the join-request awaiting its accept.
    pending_nonce: Option<u16>,
    pub session: Option<DeviceSession>,
}

impl std::fmt::Debug for LorawanDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LorawanDevice")
            .field("dev_eui", &hex::encode_upper(self.dev_eui))
            .field("v1_1", &self.v1_1)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// How an uplink is sent (the 1.1 MIC covers the data-rate and channel indices).
#[derive(Clone, Copy, Debug)]
pub struct Radio {
    pub freq: f64,
    pub datr: &'static str,
    /// Data-rate index of `datr` (EU868: SF7BW125 is 5).
    pub tx_dr: u8,
    /// Channel index of `freq` in the network's plan (EU868: 868.1 MHz is 0).
    pub tx_ch: u8,
}

impl Default for Radio {
    fn default() -> Self {
        Radio {
            freq: 868.1,
            datr: "SF7BW125",
            tx_dr: 5,
            tx_ch: 0,
        }
    }
}

impl LorawanDevice {
    /// An OTAA device (1.0.x: `nwk_key` is unused and AppKey does everything).
    pub fn otaa(dev_eui: [u8; 8], join_eui: [u8; 8], app_key: [u8; 16], nwk_key: [u8; 16], v1_1: bool) -> Self {
        LorawanDevice {
            dev_eui,
            join_eui,
            v1_1,
            app_key,
            nwk_key: if v1_1 { nwk_key } else { app_key },
            dev_nonce: 0,
            pending_nonce: None,
            session: None,
        }
    }

    /// An ABP device with its session.
    pub fn abp(dev_eui: [u8; 8], session: DeviceSession, v1_1: bool) -> Self {
        LorawanDevice {
            dev_eui,
            join_eui: [0; 8],
            v1_1,
            app_key: [0; 16],
            nwk_key: [0; 16],
            dev_nonce: 0,
            pending_nonce: None,
            session: Some(session),
        }
    }

    /// A join-request with the next DevNonce (MIC with NwkKey in 1.1, AppKey in 1.0.x).
    pub fn join_request(&mut self) -> Result<Vec<u8>, LorawanSimError> {
        let nonce = self.dev_nonce;
        self.dev_nonce = self.dev_nonce.wrapping_add(1);
        self.join_request_with_nonce(nonce)
    }

    /// A join-request with a chosen DevNonce (a reused one is how a replay looks).
    pub fn join_request_with_nonce(&mut self, dev_nonce: u16) -> Result<Vec<u8>, LorawanSimError> {
        let mut phy = lrwn::PhyPayload {
            mhdr: lrwn::MHDR {
                f_type: lrwn::FType::JoinRequest,
                major: lrwn::Major::LoRaWANR1,
            },
            payload: lrwn::Payload::JoinRequest(lrwn::JoinRequestPayload {
                join_eui: EUI64::from_be_bytes(self.join_eui),
                dev_eui: EUI64::from_be_bytes(self.dev_eui),
                dev_nonce,
            }),
            mic: None,
        };
        phy.set_join_request_mic(&AES128Key::from_bytes(self.nwk_key))
            .map_err(frame)?;
        self.pending_nonce = Some(dev_nonce);
        phy.to_vec().map_err(frame)
    }

    /// Takes a join-accept: decrypts it, checks its MIC (a forged accept is refused), derives
    /// the session keys. Returns the DevAddr.
    pub fn accept(&mut self, join_accept: &[u8]) -> Result<[u8; 4], LorawanSimError> {
        let dev_nonce = self.pending_nonce.ok_or(LorawanSimError::NotJoined)?;
        let mut phy = lrwn::PhyPayload::from_slice(join_accept).map_err(frame)?;
        let nwk_key = AES128Key::from_bytes(self.nwk_key);
        phy.decrypt_join_accept_payload(&nwk_key).map_err(frame)?;
        let lrwn::Payload::JoinAccept(ja) = &phy.payload else {
            return Err(frame("not a join-accept"));
        };
        let join_eui = EUI64::from_be_bytes(self.join_eui);
        let opt_neg = ja.dl_settings.opt_neg;
        let mic_key = if opt_neg {
            lrwn::keys::get_js_int_key(&EUI64::from_be_bytes(self.dev_eui), &nwk_key).map_err(frame)?
        } else {
            AES128Key::from_bytes(self.app_key)
        };
        if !phy
            .validate_join_accept_mic(lrwn::JoinType::Join, &join_eui, dev_nonce, &mic_key)
            .map_err(frame)?
        {
            return Err(LorawanSimError::JoinAcceptMic);
        }
        let (jn, net_id): (u32, NetID) = (ja.join_nonce, ja.home_netid);
        let app_key = AES128Key::from_bytes(self.app_key);
        let f_nwk = key(lrwn::keys::get_f_nwk_s_int_key(
            opt_neg, &nwk_key, &net_id, &join_eui, jn, dev_nonce,
        ))?;
        let (s_nwk, nwk_enc) = if opt_neg {
            (
                key(lrwn::keys::get_s_nwk_s_int_key(
                    true, &nwk_key, &net_id, &join_eui, jn, dev_nonce,
                ))?,
                key(lrwn::keys::get_nwk_s_enc_key(
                    true, &nwk_key, &net_id, &join_eui, jn, dev_nonce,
                ))?,
            )
        } else {
            (f_nwk, f_nwk)
        };
        let app_s = key(lrwn::keys::get_app_s_key(
            opt_neg, &app_key, &net_id, &join_eui, jn, dev_nonce,
        ))?;
        let dev_addr = ja.devaddr.to_be_bytes();
        self.pending_nonce = None;
        self.session = Some(DeviceSession {
            dev_addr,
            f_nwk_s_int_key: f_nwk,
            s_nwk_s_int_key: s_nwk,
            nwk_s_enc_key: nwk_enc,
            app_s_key: app_s,
            fcnt_up: 0,
        });
        Ok(dev_addr)
    }

    /// The next data uplink (unconfirmed), encrypted and MIC'd; the counter advances.
    pub fn uplink(&mut self, f_port: u8, payload: &[u8]) -> Result<Vec<u8>, LorawanSimError> {
        self.uplink_with(f_port, payload, &[], false, Radio::default())
    }

    /// A data uplink with MAC commands in FOpts (encrypted in 1.1), confirmed or not, as sent
    /// on `radio`.
    pub fn uplink_with(
        &mut self,
        f_port: u8,
        payload: &[u8],
        f_opts: &[u8],
        confirmed: bool,
        radio: Radio,
    ) -> Result<Vec<u8>, LorawanSimError> {
        let v1_1 = self.v1_1;
        let s = self.session.as_mut().ok_or(LorawanSimError::NotJoined)?;
        let fcnt = s.fcnt_up;
        s.fcnt_up = s.fcnt_up.wrapping_add(1);
        let dev_addr = DevAddr::from_be_bytes(s.dev_addr);
        let frm = lrwn::encrypt_frm_payload(
            &AES128Key::from_bytes(if f_port == 0 { s.nwk_s_enc_key } else { s.app_s_key }),
            true,
            &dev_addr,
            fcnt,
            payload,
        )
        .map_err(frame)?;
        let f_opts = if v1_1 && !f_opts.is_empty() {
            lrwn::encrypt_f_opts(
                &AES128Key::from_bytes(s.nwk_s_enc_key),
                false,
                true,
                &dev_addr,
                fcnt,
                f_opts,
            )
            .map_err(frame)?
        } else {
            f_opts.to_vec()
        };
        let mut phy = lrwn::PhyPayload {
            mhdr: lrwn::MHDR {
                f_type: if confirmed {
                    lrwn::FType::ConfirmedDataUp
                } else {
                    lrwn::FType::UnconfirmedDataUp
                },
                major: lrwn::Major::LoRaWANR1,
            },
            payload: lrwn::Payload::MACPayload(lrwn::MACPayload {
                fhdr: lrwn::FHDR {
                    devaddr: dev_addr,
                    f_ctrl: lrwn::FCtrl::default(),
                    f_cnt: fcnt,
                    f_opts: lrwn::MACCommandSet::new(if f_opts.is_empty() {
                        Vec::new()
                    } else {
                        vec![lrwn::MACCommand::Raw(f_opts)]
                    }),
                },
                f_port: Some(f_port),
                frm_payload: Some(lrwn::FRMPayload::Raw(frm)),
            }),
            mic: None,
        };
        let version = if v1_1 {
            lrwn::MACVersion::LoRaWAN1_1
        } else {
            lrwn::MACVersion::LoRaWAN1_0
        };
        phy.set_uplink_data_mic(
            version,
            0,
            radio.tx_dr,
            radio.tx_ch,
            &AES128Key::from_bytes(s.f_nwk_s_int_key),
            &AES128Key::from_bytes(s.s_nwk_s_int_key),
        )
        .map_err(frame)?;
        let mut bytes = phy.to_vec().map_err(frame)?;
        // lrwn writes the low 16 bits of the counter on air.
        bytes[6..8].copy_from_slice(&(fcnt as u16).to_le_bytes());
        Ok(bytes)
    }
}

/// One reception as a gateway reports it in `rxpk`.
#[derive(Clone, Debug)]
pub struct Rx {
    pub radio: Radio,
    pub tmst: u32,
    pub rssi: i32,
    pub lsnr: f64,
}

impl Default for Rx {
    fn default() -> Self {
        Rx {
            radio: Radio::default(),
            tmst: 1_000_000,
            rssi: -57,
            lsnr: 9.5,
        }
    }
}

/// The `rxpk` object for one frame (PROTOCOL.TXT §4).
pub fn rxpk(phy: &[u8], rx: &Rx) -> serde_json::Value {
    serde_json::json!({
        "tmst": rx.tmst, "chan": rx.radio.tx_ch, "rfch": 0, "freq": rx.radio.freq, "stat": 1,
        "modu": "LORA", "datr": rx.radio.datr, "codr": "4/5", "rssi": rx.rssi, "lsnr": rx.lsnr,
        "size": phy.len(), "data": base64::engine::general_purpose::STANDARD.encode(phy),
    })
}

/// A downlink the server asked the gateway to transmit (PULL_RESP).
#[derive(Clone, Debug)]
pub struct Downlink {
    pub token: u16,
    /// The PHYPayload to transmit.
    pub phy: Vec<u8>,
    /// The whole `txpk` object.
    pub txpk: serde_json::Value,
}

/// A simulated gateway's packet forwarder (protocol version 2).
#[derive(Debug)]
pub struct PacketForwarder {
    pub eui: [u8; 8],
    up: UdpSocket,
    down: UdpSocket,
    server: SocketAddr,
    token: u16,
    pub timeout: Duration,
}

impl PacketForwarder {
    /// Opens the two sockets and the downlink path (PULL_DATA, answered by PULL_ACK).
    pub async fn connect(server: SocketAddr, eui: [u8; 8]) -> Result<Self, LorawanSimError> {
        let up = UdpSocket::bind("127.0.0.1:0").await?;
        let down = UdpSocket::bind("127.0.0.1:0").await?;
        let mut fwd = PacketForwarder {
            eui,
            up,
            down,
            server,
            token: u16::from_be_bytes([eui[6], eui[7]]),
            timeout: Duration::from_secs(5),
        };
        fwd.pull().await?;
        Ok(fwd)
    }

    fn next_token(&mut self) -> u16 {
        self.token = self.token.wrapping_add(1);
        self.token
    }

    fn header(&mut self, id: u8) -> (u16, Vec<u8>) {
        let token = self.next_token();
        let mut d = vec![2, (token >> 8) as u8, token as u8, id];
        d.extend_from_slice(&self.eui);
        (token, d)
    }

    /// PULL_DATA keep-alive; waits for its PULL_ACK.
    pub async fn pull(&mut self) -> Result<(), LorawanSimError> {
        let (token, d) = self.header(0x02);
        self.down.send_to(&d, self.server).await?;
        let mut buf = [0u8; 2048];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, self.down.recv(&mut buf))
                .await
                .map_err(|_| LorawanSimError::Timeout("PULL_ACK"))??;
            if n >= 4 && buf[3] == 0x04 && u16::from_be_bytes([buf[1], buf[2]]) == token {
                return Ok(());
            }
        }
    }

    /// The PUSH_DATA datagram for `frames` (and its token).
    pub fn push_datagram(&mut self, frames: &[(Vec<u8>, Rx)]) -> (u16, Vec<u8>) {
        let (token, mut d) = self.header(0x00);
        let rxpk: Vec<serde_json::Value> = frames.iter().map(|(phy, rx)| rxpk(phy, rx)).collect();
        d.extend_from_slice(serde_json::json!({ "rxpk": rxpk }).to_string().as_bytes());
        (token, d)
    }

    /// Sends frames in one PUSH_DATA and waits for its PUSH_ACK (which a server sends on
    /// receipt: it says the datagram arrived, not what became of its frames).
    pub async fn push(&mut self, frames: &[(Vec<u8>, Rx)]) -> Result<(), LorawanSimError> {
        let (token, d) = self.push_datagram(frames);
        self.up.send_to(&d, self.server).await?;
        self.wait_push_ack(token).await
    }

    /// Waits for the PUSH_ACK of `token`.
    pub async fn wait_push_ack(&self, token: u16) -> Result<(), LorawanSimError> {
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, self.up.recv(&mut buf))
                .await
                .map_err(|_| LorawanSimError::Timeout("PUSH_ACK"))??;
            if n >= 4 && buf[3] == 0x01 && u16::from_be_bytes([buf[1], buf[2]]) == token {
                return Ok(());
            }
        }
    }

    /// Sends any bytes from the "up" socket (hostile datagrams, raw captures).
    pub async fn send_raw(&self, datagram: &[u8]) -> Result<(), LorawanSimError> {
        self.up.send_to(datagram, self.server).await?;
        Ok(())
    }

    /// Waits for a PULL_RESP on the downlink socket and answers it with TX_ACK.
    pub async fn downlink(&mut self, within: Duration) -> Result<Downlink, LorawanSimError> {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = tokio::time::timeout_at(deadline, self.down.recv(&mut buf))
                .await
                .map_err(|_| LorawanSimError::Timeout("PULL_RESP"))??;
            if n < 4 || buf[3] != 0x03 {
                continue;
            }
            let token = u16::from_be_bytes([buf[1], buf[2]]);
            let v: serde_json::Value = serde_json::from_slice(&buf[4..n]).map_err(frame)?;
            let txpk = v.get("txpk").cloned().ok_or_else(|| frame("PULL_RESP without txpk"))?;
            let phy = base64::engine::general_purpose::STANDARD
                .decode(txpk["data"].as_str().unwrap_or_default())
                .map_err(frame)?;
            let mut ack = vec![2, buf[1], buf[2], 0x05];
            ack.extend_from_slice(&self.eui);
            ack.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
            self.down.send_to(&ack, self.server).await?;
            return Ok(Downlink { token, phy, txpk });
        }
    }
}
