//! Sigfox backend callbacks (`POST /sigfox/callback`), and the sequence-number bookkeeping they
//! share with raw frames (`POST /api/v1/sigfox/frames`).
//!
//! The Sigfox cloud verified a callback's message (UL-AUTH) itself; what fleetward checks is
//! that the cloud is the caller and that the stream is whole:
//!
//! 1. the source address, against `[sigfox] callback_allow` (when set) — 403;
//! 2. the shared secret, in the configured header, compared in constant time with each accepted
//!    secret (their SHA-256 digests, so neither length nor content leaks) — 401;
//! 3. the body (JSON or form), [`verifier::sigfox::callback::parse`] — 400;
//! 4. the device: known, or registered on its first callback (`unknown_devices`) — 404;
//! 5. the sequence number, 1 to `max_seq_gap` steps after the last one across the 12-bit
//!    rollover. Skipped numbers are lost messages, reported by a `sigfox.sequence_gap` event.
//!    A number not after the last is either the same message (device, sequence number,
//!    backend `time`) stored already — a retry of the backend (after 1, 2 and 4 minutes) or
//!    another base station's copy, answered as the first time and stored once — or a replay:
//!    409, with an event.
//!
//! Then the message, the new sequence number, the telemetry row and (when the device asked
//! with `ack`) the downlink taken from its queue are committed in one transaction, and only then
//! answered: `{"<device>": {"downlinkData": "<16 hex>"}}` when there is a downlink, else 204.
//! Every refusal is counted (`sigfox_callbacks_rejected`) and recorded as a
//! `sigfox.callback_rejected` event naming the failed check.

use crate::api::ApiError;
use crate::clock::now_ms;
use crate::config::{Config, UnknownSigfoxDevices};
use crate::http::AppState;
use crate::stats::{add, inc};
use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use registry::{NewEvent, NewSigfoxUplink, RegistryError, SigfoxUplink, StoredSigfoxUplink};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use verifier::sigfox::callback::{self, Callback, Encoding};
use verifier::sigfox::{SigfoxError, check_seq};

/// Shortest callback secret accepted from a file (a guessable secret is no authentication).
pub const MIN_SECRET_LEN: usize = 16;

/// How callbacks are authenticated and judged (from `[sigfox]`).
pub struct CallbackSettings {
    header: HeaderName,
    /// SHA-256 of each accepted secret.
    secrets: Vec<[u8; 32]>,
    allow: Vec<IpBlock>,
    unknown: UnknownSigfoxDevices,
    /// See `[sigfox] max_seq_gap`.
    pub max_seq_gap: u16,
    /// Where the secrets were read from (shown to the operator; never the secrets themselves).
    pub secret_file: PathBuf,
}

impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("header", &self.header)
            .field("secrets", &self.secrets.len())
            .field("allow", &self.allow)
            .field("unknown", &self.unknown)
            .field("max_seq_gap", &self.max_seq_gap)
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

impl CallbackSettings {
    /// Reads `[sigfox]`, and the secret file (generated in the data directory when none is
    /// configured).
    pub fn load(config: &Config) -> anyhow::Result<CallbackSettings> {
        let s = &config.sigfox;
        let secret_file = match &s.callback_secret_file {
            Some(path) => path.clone(),
            None => {
                let path = config.data_dir.join("sigfox-callback.secret");
                if !path.exists() {
                    let mut key = [0u8; 32];
                    aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness for a secret"))?;
                    let text = format!("{}\n", hex::encode(key));
                    crate::secret_file::write(&path, text.as_bytes(), crate::secret_file::Existing::Refuse)?;
                }
                path
            }
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&secret_file)
                .with_context(|| format!("cannot read sigfox.callback_secret_file {}", secret_file.display()))?,
        );
        let mut secrets = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            anyhow::ensure!(
                line.len() >= MIN_SECRET_LEN,
                "{} line {}: a callback secret needs at least {MIN_SECRET_LEN} characters",
                secret_file.display(),
                n + 1
            );
            secrets.push(Sha256::digest(line.as_bytes()).into());
        }
        anyhow::ensure!(
            !secrets.is_empty(),
            "{} holds no callback secret (one per line)",
            secret_file.display()
        );
        let allow = s
            .callback_allow
            .iter()
            .map(|b| IpBlock::parse(b).with_context(|| format!("sigfox.callback_allow `{b}` is not a CIDR block")))
            .collect::<anyhow::Result<_>>()?;
        Ok(CallbackSettings {
            header: HeaderName::from_bytes(s.callback_header.as_bytes())
                .with_context(|| format!("sigfox.callback_header `{}`", s.callback_header))?,
            secrets,
            allow,
            unknown: s.unknown_devices,
            max_seq_gap: s.max_seq_gap,
            secret_file,
        })
    }

    /// The header callbacks carry the secret in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether `presented` is one of the secrets: every digest is compared, in constant time.
    fn secret_matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        for secret in &self.secrets {
            found |= secret.ct_eq(&digest);
        }
        found.into()
    }

    fn source_allowed(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|b| b.contains(ip))
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(s: &str) -> Option<IpBlock> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpBlock { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What judging a message against its device's sequence number came to.
pub(crate) enum Judged {
    /// Stored (with its telemetry and any downlink taken), `lost` numbers skipped before it.
    Stored { stored: StoredSigfoxUplink, lost: u16 },
    /// The same message (device, number, backend time) was stored already.
    StoredBefore(SigfoxUplink),
    /// Not after the last accepted number: a replay.
    Behind(SigfoxError),
}

/// A message to judge and store.
pub(crate) struct Message<'a> {
    pub device_id: &'a str,
    pub seq_number: u16,
    pub payload: &'a [u8],
    /// `frame` or `callback`.
    pub source: &'a str,
    /// The backend's `time` (callbacks).
    pub sigfox_time: Option<i64>,
    pub take_downlink: bool,
    pub max_seq_gap: u16,
}

/// Judges `m` against the device's last sequence number (`last`, as read) and stores it if it
/// comes after it. The store advances the number by compare-and-swap: a request that raced this
/// one and moved it first makes this one read the new number and judge again. `detail(lost)` is
/// what is kept with the message. Lost messages are counted and reported; the telemetry is
/// published after the commit.
pub(crate) async fn store_in_sequence(
    state: &AppState,
    m: &Message<'_>,
    mut last: Option<i64>,
    detail: impl Fn(u16) -> serde_json::Value,
) -> Result<Judged, ApiError> {
    let topic = format!("devices/{}/telemetry", m.device_id);
    for _ in 0..4 {
        let lost = match check_seq(last.map(|l| l as u16), m.seq_number, m.max_seq_gap) {
            Ok(lost) => lost,
            Err(e) => return Ok(Judged::Behind(e)),
        };
        let detail = detail(lost);
        // Committed and fanned out under the hub's store turn (backends see ids in order).
        let turn = state.hub.store_turn().await;
        let stored = state
            .registry
            .store_sigfox_uplink(
                &NewSigfoxUplink {
                    device_id: m.device_id,
                    seq_number: m.seq_number,
                    payload: m.payload,
                    source: m.source,
                    detail: &detail,
                    topic: Some(&topic),
                    sigfox_time: m.sigfox_time,
                    take_downlink: m.take_downlink,
                },
                last,
                now_ms(),
            )
            .await?;
        let Some(stored) = stored else {
            drop(turn);
            if let Some(time) = m.sigfox_time
                && let Some(before) = state
                    .registry
                    .sigfox_uplink_by_message(m.device_id, m.seq_number, time)
                    .await?
            {
                return Ok(Judged::StoredBefore(before));
            }
            last = state.registry.sigfox_device_info(m.device_id).await?.last_seq;
            continue;
        };
        if let Some(message) = &stored.telemetry {
            state.hub.fan_out(&[Arc::new(message.clone())]);
        }
        drop(turn);
        if lost > 0 {
            add(&state.stats.sigfox_messages_lost, u64::from(lost));
            state.events.emit(
                NewEvent::new("sigfox.sequence_gap", "sigfox")
                    .device(m.device_id)
                    .reason(format!(
                        "{lost} messages missing before sequence number {}",
                        m.seq_number
                    ))
                    .detail(
                        serde_json::json!({ "lost": lost, "seq_number": m.seq_number, "last": last,
                        "source": m.source }),
                    ),
            );
        }
        return Ok(Judged::Stored { stored, lost });
    }
    Err(ApiError::from(RegistryError::Unavailable {
        detail: "the device's sequence number kept moving".into(),
    }))
}

/// `POST /sigfox/callback`.
pub(crate) async fn callback(State(state): State<AppState>, request: Request) -> Response {
    match handle_callback(&state, request).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn handle_callback(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let settings = &state.sigfox;
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let refuse = |status: StatusCode, check: &str, reason: String, cb: Option<&Callback>| {
        inc(&state.stats.sigfox_callbacks_rejected);
        state.stats.rejected(check);
        let mut event = NewEvent::new("sigfox.callback_rejected", "sigfox-callback")
            .reason(reason.clone())
            .detail(serde_json::json!({ "check": check, "peer": peer.map(|p| p.to_string()),
                "device_id": cb.map(|c| &c.device_id), "seq_number": cb.map(|c| c.seq_number),
                "time": cb.map(|c| c.time) }));
        if let Some(cb) = cb {
            event = event.device(&cb.device_id);
        }
        state.events.emit(event);
        let code = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            _ => "bad_request",
        };
        ApiError::new(status, code, reason).with_check(check)
    };

    if let Some(ip) = peer
        && !settings.source_allowed(ip)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            format!("{ip} is not in sigfox.callback_allow"),
            None,
        ));
    }
    let Some(presented) = request.headers().get(settings.header()) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "secret_missing",
            format!("missing the callback secret (header {})", settings.header()),
            None,
        ));
    };
    if !settings.secret_matches(presented.as_bytes()) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "secret_mismatch",
            format!("the {} header holds no accepted callback secret", settings.header()),
            None,
        ));
    }
    let encoding = match request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t)
            if t.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded") =>
        {
            Encoding::Form
        }
        _ => Encoding::Json,
    };
    let body = match axum::body::to_bytes(request.into_body(), callback::MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "body_too_large",
                format!("a callback body is at most {} bytes", callback::MAX_BODY),
                None,
            ));
        }
    };
    let cb = match callback::parse(encoding, &body) {
        Ok(cb) => cb,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.check(), e.to_string(), None)),
    };
    // The request's span (an uplink through the Sigfox cloud) names the device.
    tracing::Span::current().record("device", cb.device_id.as_str());

    let (last, payload_encrypted) = match state.registry.sigfox_device_info(&cb.device_id).await {
        Ok(info) => (info.last_seq, info.payload_encrypted),
        Err(RegistryError::NotFound { .. }) if settings.unknown == UnknownSigfoxDevices::Register => {
            if state
                .registry
                .register_sigfox_device_from_callback(&cb.device_id, now_ms())
                .await?
            {
                state.events.emit(
                    NewEvent::new("sigfox.device_added", "sigfox-callback")
                        .device(&cb.device_id)
                        .reason("first heard of in a Sigfox backend callback (no NAK held)")
                        .detail(
                            serde_json::json!({ "device_id": cb.device_id, "registered_via": "callback",
                            "device_type_id": cb.device_type_id }),
                        ),
                );
            }
            let info = state.registry.sigfox_device_info(&cb.device_id).await?;
            (info.last_seq, info.payload_encrypted)
        }
        Err(RegistryError::NotFound { .. }) => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "unknown_device",
                format!(
                    "Sigfox device {} is not provisioned (sigfox.unknown_devices = \"refuse\")",
                    cb.device_id
                ),
                Some(&cb),
            ));
        }
        Err(e) => return Err(e.into()),
    };

    let message = Message {
        device_id: &cb.device_id,
        seq_number: cb.seq_number,
        payload: &cb.data,
        source: "callback",
        sigfox_time: Some(cb.time),
        take_downlink: cb.ack,
        max_seq_gap: settings.max_seq_gap,
    };
    let detail = |lost: u16| {
        serde_json::json!({ "time": cb.time, "lost": lost, "ack": cb.ack, "duplicate": cb.duplicate,
            "station": cb.station, "rssi": cb.rssi, "snr": cb.snr, "avg_snr": cb.avg_snr,
            "lat": cb.lat, "lng": cb.lng, "device_type_id": cb.device_type_id,
            "payload_encrypted": payload_encrypted })
    };
    match store_in_sequence(state, &message, last, detail).await? {
        Judged::Stored { stored, .. } => {
            inc(&state.stats.sigfox_callbacks_accepted);
            if stored.downlink.is_some() {
                inc(&state.stats.sigfox_downlinks_sent);
            }
            Ok(answer(&cb, stored.downlink.as_deref()))
        }
        Judged::StoredBefore(before) => {
            inc(&state.stats.sigfox_callbacks_duplicate);
            Ok(answer(&cb, before.downlink.as_deref()))
        }
        Judged::Behind(e) => {
            // Behind the last number: a retry of a message stored earlier (answered as the first
            // time), or a replay. Looked up only here, off the common path.
            match state
                .registry
                .sigfox_uplink_by_message(&cb.device_id, cb.seq_number, cb.time)
                .await?
            {
                Some(before) => {
                    inc(&state.stats.sigfox_callbacks_duplicate);
                    Ok(answer(&cb, before.downlink.as_deref()))
                }
                None => Err(refuse(StatusCode::CONFLICT, e.check(), e.to_string(), Some(&cb))),
            }
        }
    }
}

/// The downlink answer (when the device asked and one was taken for its message), else 204.
fn answer(cb: &Callback, downlink: Option<&[u8]>) -> Response {
    match downlink {
        Some(data) if cb.ack => {
            let mut body = serde_json::Map::new();
            body.insert(
                cb.device.clone(),
                serde_json::json!({ "downlinkData": hex::encode(data) }),
            );
            (StatusCode::OK, axum::Json(serde_json::Value::Object(body))).into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks() {
        let b = IpBlock::parse("185.110.97.0/24").unwrap();
        assert!(b.contains("185.110.97.12".parse().unwrap()));
        assert!(!b.contains("185.110.98.12".parse().unwrap()));
        assert!(b.contains("::ffff:185.110.97.1".parse().unwrap()), "IPv4-mapped peers");
        assert!(!b.contains("2001:db8::1".parse().unwrap()));
        let one = IpBlock::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpBlock::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::5".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nowhere", "10.0.0.0/", "::/129", ""] {
            assert_eq!(IpBlock::parse(bad), None, "{bad}");
        }
    }
}
