//! # mqtt-codec — MQTT framing over rumqttd's codec (`rumqttd::protocol`, v4 = 3.1.1 and v5), adapted to the
//! few packets a star-shaped session layer needs, with every field we rely on validated here.
//!
//! rumqttd keeps a publish's QoS, packet id and dup flag crate-private, and several of its
//! writers reach `unreachable!()` for codes of the other protocol version; this module is the
//! one place that knows, so sessions never touch rumqttd types directly.
#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self as p, Protocol};

/// MQTT protocol version of a session (fixed by its CONNECT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Quality of service we speak: 0 and 1 (QoS 2 is refused, as the spec allows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// Why bytes from a peer were not a packet we accept. "Need more bytes" is not an error: see
/// [`Decoder::decode`] returning `Ok(None)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("malformed MQTT packet: {0}")]
    Malformed(String),
    #[error("packet of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported MQTT protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("the first packet must be CONNECT")]
    ExpectedConnect,
    #[error("topic is not valid UTF-8 or contains wildcards/NUL")]
    InvalidTopic,
    #[error("QoS 2 is not supported")]
    QosNotSupported,
    #[error("unexpected {0} packet from a client")]
    Unexpected(&'static str),
}

/// A CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    /// v5 session expiry interval (seconds).
    pub session_expiry_secs: Option<u32>,
}

/// A last will.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
}

/// A PUBLISH from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Qos,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    pub dup: bool,
    pub retain: bool,
}

/// A subscription request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// Requested maximum QoS (2 is granted as 1).
    pub qos: u8,
}

/// What a client may send after CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck { pkid: u16 },
    Subscribe { pkid: u16, filters: Vec<Subscription> },
    Unsubscribe { pkid: u16, filters: Vec<String> },
    PingReq,
    Disconnect,
}

/// CONNACK outcomes we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted,
    UnsupportedVersion,
    ClientIdNotValid,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
}

impl ConnectCode {
    /// The MQTT 3.1.1 return code (also what tests and events report).
    pub fn v311_code(self) -> u8 {
        match self {
            ConnectCode::Accepted => 0,
            ConnectCode::UnsupportedVersion => 1,
            ConnectCode::ClientIdNotValid => 2,
            ConnectCode::ServerUnavailable => 3,
            ConnectCode::BadUsernameOrPassword => 4,
            ConnectCode::NotAuthorized => 5,
        }
    }

    fn to_rumqttd(self, version: Version) -> p::ConnectReturnCode {
        use p::ConnectReturnCode as C;
        match (self, version) {
            (ConnectCode::Accepted, _) => C::Success,
            (ConnectCode::UnsupportedVersion, Version::V311) => C::RefusedProtocolVersion,
            (ConnectCode::UnsupportedVersion, Version::V5) => C::UnsupportedProtocolVersion,
            (ConnectCode::ClientIdNotValid, _) => C::ClientIdentifierNotValid,
            (ConnectCode::ServerUnavailable, Version::V311) => C::ServiceUnavailable,
            (ConnectCode::ServerUnavailable, Version::V5) => C::ServerUnavailable,
            (ConnectCode::BadUsernameOrPassword, _) => C::BadUserNamePassword,
            (ConnectCode::NotAuthorized, _) => C::NotAuthorized,
        }
    }
}

/// Why the server ends a session (v5 DISCONNECT reason; v3.1.1 just closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    Normal,
    ServerShuttingDown,
    SessionTakenOver,
    NotAuthorized,
    KeepAliveTimeout,
}

/// Decodes packets from a byte stream.
#[derive(Debug)]
pub struct Decoder {
    version: Option<Version>,
    max_packet: usize,
}

/// The fixed header's first byte and the header's length, when the whole frame is buffered.
fn frame_header(buf: &[u8]) -> Option<(u8, usize)> {
    let byte1 = *buf.first()?;
    let mut len_len = 0;
    for b in buf.get(1..)?.iter().take(4) {
        len_len += 1;
        if b & 0x80 == 0 {
            return Some((byte1, 1 + len_len));
        }
    }
    None
}

impl Decoder {
    pub fn new(max_packet: usize) -> Self {
        Decoder {
            version: None,
            max_packet,
        }
    }

    /// The session's version, once CONNECT was decoded.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Decodes the next packet from `buf`, consuming its bytes. `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.version.is_none() && buf[0] >> 4 != 1 {
            return Err(CodecError::ExpectedConnect);
        }
        // What rumqttd keeps private: QoS bits, dup, and the packet id (right after the topic).
        let mut publish_meta = None;
        let header = match rumqttd::protocol::v4::check(buf.iter(), self.max_packet) {
            Ok(h) => h,
            Err(p::Error::InsufficientBytes(_)) => return Ok(None),
            Err(p::Error::PayloadSizeLimitExceeded(size)) => {
                return Err(CodecError::TooLarge {
                    size,
                    limit: self.max_packet,
                });
            }
            Err(e) => return Err(CodecError::Malformed(e.to_string())),
        };
        let version = match self.version {
            Some(v) => v,
            None => match self.peek_connect_level(buf)? {
                None => return Ok(None),
                Some(4) => Version::V311,
                Some(5) => Version::V5,
                Some(other) => return Err(CodecError::UnsupportedVersion(other)),
            },
        };
        // Only packets a client may send reach rumqttd: its v5 reader hits `unreachable!()`
        // on CONNACK and UNSUBACK (found by the `mqtt` fuzz target).
        match header.byte1 >> 4 {
            1 | 3..=8 | 10 | 12 | 14 => {}
            2 => return Err(CodecError::Unexpected("CONNACK")),
            9 => return Err(CodecError::Unexpected("SUBACK")),
            11 => return Err(CodecError::Unexpected("UNSUBACK")),
            13 => return Err(CodecError::Unexpected("PINGRESP")),
            15 => return Err(CodecError::Unexpected("AUTH")),
            _ => return Err(CodecError::Malformed("reserved packet type 0".into())),
        }
        if header.byte1 >> 4 == 3 {
            let qos = (header.byte1 >> 1) & 0b11;
            let dup = header.byte1 & 0b1000 != 0;
            let at = header.fixed_header_len;
            let frame = &buf[..header.frame_length()];
            let topic_len = frame
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                .ok_or_else(|| CodecError::Malformed("publish too short".into()))?;
            let pkid = if qos > 0 {
                frame
                    .get(at + 2 + topic_len..at + 4 + topic_len)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or_else(|| CodecError::Malformed("publish without packet id".into()))?
            } else {
                0
            };
            publish_meta = Some((qos, dup, pkid));
        }
        let packet = match version {
            Version::V311 => p::v4::V4.read_mut(buf, self.max_packet),
            Version::V5 => p::v5::V5.read_mut(buf, self.max_packet),
        }
        .map_err(|e| match e {
            p::Error::InvalidProtocolLevel(l) => CodecError::UnsupportedVersion(l),
            p::Error::InvalidQoS(2..) => CodecError::QosNotSupported,
            other => CodecError::Malformed(other.to_string()),
        })?;
        let incoming = match packet {
            p::Packet::Connect(c, props, will, _will_props, login) => {
                if self.version.is_some() {
                    return Err(CodecError::Unexpected("second CONNECT"));
                }
                self.version = Some(version);
                let will = match will {
                    None => None,
                    Some(w) => Some(Will {
                        topic: topic_string(&w.topic)?,
                        payload: w.message,
                        qos: match w.qos {
                            p::QoS::AtMostOnce => Qos::AtMostOnce,
                            p::QoS::AtLeastOnce => Qos::AtLeastOnce,
                            p::QoS::ExactlyOnce => return Err(CodecError::QosNotSupported),
                        },
                        retain: w.retain,
                    }),
                };
                Incoming::Connect(Box::new(Connect {
                    version,
                    client_id: c.client_id,
                    clean_session: c.clean_session,
                    keep_alive_secs: c.keep_alive,
                    username: login.as_ref().map(|l| l.username.clone()).filter(|u| !u.is_empty()),
                    password: login.map(|l| l.password).filter(|p| !p.is_empty()),
                    will,
                    session_expiry_secs: props.and_then(|p| p.session_expiry_interval),
                }))
            }
            _ if self.version.is_none() => return Err(CodecError::ExpectedConnect),
            p::Packet::Publish(publish, _) => {
                let (qos, dup, pkid) = publish_meta.ok_or_else(|| CodecError::Malformed("publish header".into()))?;
                let qos = match qos {
                    0 => Qos::AtMostOnce,
                    1 => Qos::AtLeastOnce,
                    _ => return Err(CodecError::QosNotSupported),
                };
                Incoming::Publish(Publish {
                    topic: topic_string(&publish.topic)?,
                    payload: publish.payload,
                    qos,
                    pkid,
                    dup,
                    retain: publish.retain,
                })
            }
            p::Packet::PubAck(ack, _) => Incoming::PubAck { pkid: ack.pkid },
            p::Packet::Subscribe(s, _) => Incoming::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| Subscription {
                        filter: f.path,
                        qos: f.qos as u8,
                    })
                    .collect(),
            },
            p::Packet::Unsubscribe(u, _) => Incoming::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters,
            },
            p::Packet::PingReq(_) => Incoming::PingReq,
            p::Packet::Disconnect(..) => Incoming::Disconnect,
            p::Packet::PubRec(..) | p::Packet::PubRel(..) | p::Packet::PubComp(..) => {
                return Err(CodecError::QosNotSupported);
            }
            p::Packet::ConnAck(..) => return Err(CodecError::Unexpected("CONNACK")),
            p::Packet::SubAck(..) => return Err(CodecError::Unexpected("SUBACK")),
            p::Packet::UnsubAck(..) => return Err(CodecError::Unexpected("UNSUBACK")),
            p::Packet::PingResp(..) => return Err(CodecError::Unexpected("PINGRESP")),
        };
        Ok(Some(incoming))
    }

    /// The protocol level byte of a CONNECT, once buffered (`None`: need more bytes).
    fn peek_connect_level(&self, buf: &[u8]) -> Result<Option<u8>, CodecError> {
        let Some((_, header_len)) = frame_header(buf) else {
            if buf.len() >= 5 {
                return Err(CodecError::Malformed("remaining length".into()));
            }
            return Ok(None);
        };
        let Some(name_len) = buf.get(header_len..header_len + 2) else {
            return Ok(None);
        };
        let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
        if name_len > 6 {
            return Err(CodecError::Malformed("protocol name".into()));
        }
        let at = header_len + 2 + name_len;
        Ok(buf.get(at).copied())
    }
}

fn topic_string(raw: &Bytes) -> Result<String, CodecError> {
    let s = std::str::from_utf8(raw).map_err(|_| CodecError::InvalidTopic)?;
    if s.is_empty() || s.contains(['\0', '+', '#']) {
        return Err(CodecError::InvalidTopic);
    }
    Ok(s.to_owned())
}

/// Encodes packets for one session.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    pub version: Version,
}

impl Encoder {
    pub fn connack(&self, code: ConnectCode, session_present: bool, out: &mut BytesMut) {
        let props = match self.version {
            Version::V311 => None,
            // Tell v5 clients what we do not do, so they do not try.
            Version::V5 if code == ConnectCode::Accepted => Some(p::ConnAckProperties {
                max_qos: Some(1),
                retain_available: Some(0),
                shared_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                ..Default::default()
            }),
            Version::V5 => None,
        };
        let packet = p::Packet::ConnAck(
            p::ConnAck {
                session_present: session_present && code == ConnectCode::Accepted,
                code: code.to_rumqttd(self.version),
            },
            props,
        );
        self.write(packet, out);
    }

    /// A PUBLISH to the peer (`pkid` 0 for QoS 0).
    pub fn publish(&self, topic: &str, payload: &[u8], qos: Qos, pkid: u16, dup: bool, out: &mut BytesMut) {
        // rumqttd's public constructor for a publish with QoS and packet id is its own
        // MQTT-independent serialization: header byte, packet id, topic length, topic, payload.
        let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
        raw.extend_from_slice(&[0x30 | ((qos as u8) << 1) | (u8::from(dup) << 3)]);
        raw.extend_from_slice(&pkid.to_be_bytes());
        let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
        raw.extend_from_slice(&topic_len.to_be_bytes());
        raw.extend_from_slice(&topic.as_bytes()[..usize::from(topic_len)]);
        raw.extend_from_slice(payload);
        let publish = p::Publish::deserialize(raw.freeze());
        let props = match self.version {
            Version::V311 => None,
            Version::V5 => Some(p::PublishProperties::default()),
        };
        self.write(p::Packet::Publish(publish, props), out);
    }

    pub fn puback(&self, pkid: u16, out: &mut BytesMut) {
        let ack = p::PubAck {
            pkid,
            reason: p::PubAckReason::Success,
        };
        self.write(p::Packet::PubAck(ack, None), out);
    }

    /// SUBACK: `granted[i]` is the QoS granted to filter i, or `None` for a refusal.
    pub fn suback(&self, pkid: u16, granted: &[Option<Qos>], out: &mut BytesMut) {
        let return_codes = granted
            .iter()
            .map(|g| match g {
                Some(Qos::AtMostOnce) => p::SubscribeReasonCode::QoS0,
                Some(Qos::AtLeastOnce) => p::SubscribeReasonCode::QoS1,
                None => match self.version {
                    Version::V311 => p::SubscribeReasonCode::Unspecified,
                    Version::V5 => p::SubscribeReasonCode::NotAuthorized,
                },
            })
            .collect();
        self.write(p::Packet::SubAck(p::SubAck { pkid, return_codes }, None), out);
    }

    pub fn unsuback(&self, pkid: u16, count: usize, out: &mut BytesMut) {
        let reasons = match self.version {
            Version::V311 => Vec::new(),
            Version::V5 => vec![p::UnsubAckReason::Success; count],
        };
        self.write(p::Packet::UnsubAck(p::UnsubAck { pkid, reasons }, None), out);
    }

    pub fn pingresp(&self, out: &mut BytesMut) {
        self.write(p::Packet::PingResp(p::PingResp), out);
    }

    /// A server DISCONNECT (MQTT 5 only; 3.1.1 has none, the server just closes).
    pub fn disconnect(&self, reason: DisconnectReason, out: &mut BytesMut) {
        if self.version == Version::V311 {
            return;
        }
        use p::DisconnectReasonCode as R;
        let reason_code = match reason {
            DisconnectReason::Normal => R::NormalDisconnection,
            DisconnectReason::ServerShuttingDown => R::ServerShuttingDown,
            DisconnectReason::SessionTakenOver => R::SessionTakenOver,
            DisconnectReason::NotAuthorized => R::NotAuthorized,
            DisconnectReason::KeepAliveTimeout => R::KeepAliveTimeout,
        };
        self.write(p::Packet::Disconnect(p::Disconnect { reason_code }, None), out);
    }

    fn write(&self, packet: p::Packet, out: &mut BytesMut) {
        let result = match self.version {
            Version::V311 => p::v4::V4.write(packet, out),
            Version::V5 => p::v5::V5.write(packet, out),
        };
        if let Err(e) = result {
            // Only reachable with a packet we built wrongly (e.g. a topic over 64 KiB).
            tracing::error!(error = %e, "could not encode an MQTT packet");
        }
    }
}
