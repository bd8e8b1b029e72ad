//! The uplink verifier: a data uplink's bytes and reception in, a verdict out.
//!
//! Sessions live in memory ([`Sessions`], by DevAddr), loaded from the registry on first use and
//! installed directly by this node's joins, so the hot path — header peek, session lookup, MIC,
//! frame counter, decryption — touches no database. The frame counter advances here first (so a
//! replay is refused without a round trip) and in the registry with the stored frame (so another
//! node cannot accept it too: see `registry::UplinkOutcome::Replayed`).
//!
//! Multi-gateway de-duplication: the same frame heard by several gateways arrives once per
//! gateway. Its first copy is verified and accepted; a byte-identical copy of the device's last
//! accepted frame within [`UplinkSettings::dedup_window`] is a further reception of it (nothing
//! to verify: the bytes are those whose MIC passed); after the window the same bytes are a replay.

use registry::{Registry, RegistryError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use verifier::lorawan::{
    LorawanError, MacVersion, SessionKeys, UplinkMicKeys, channel_index, check_fcnt, decrypt_uplink_f_opts,
    decrypt_uplink_payload, eu868_data_rate, peek_uplink, reconstruct_fcnt, verify_uplink,
};

/// How uplinks are judged.
#[derive(Clone, Debug)]
pub struct UplinkSettings {
    /// Largest forward jump of the frame counter accepted (LoRaWAN's MAX_FCNT_GAP: 16,384).
    pub max_fcnt_gap: u32,
    /// How long further receptions of an accepted frame count as duplicates (ChirpStack waits
    /// 200 ms for a frame's copies from other gateways).
    pub dedup_window: Duration,
    /// How long an unknown DevAddr is remembered as unknown (bounds registry look-ups under a
    /// flood of forged addresses).
    pub unknown_ttl: Duration,
    /// The uplink channel plan (MHz), for the LoRaWAN 1.1 MIC's TxCh.
    pub channels: Vec<f64>,
    /// Registry look-ups per second for DevAddrs not in memory (burst the same): a flood of
    /// forged addresses must not turn the receive loop into a database client.
    pub lookups_per_sec: f64,
    /// Most DevAddrs remembered as unknown at once.
    pub max_unknown: usize,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        UplinkSettings {
            max_fcnt_gap: 16_384,
            dedup_window: Duration::from_millis(200),
            unknown_ttl: Duration::from_secs(5),
            channels: verifier::lorawan::EU868_CHANNELS.to_vec(),
            lookups_per_sec: 2_000.0,
            max_unknown: 100_000,
        }
    }
}

/// How a frame was heard: what the MIC of a 1.1 frame depends on, and what is recorded.
#[derive(Clone, Debug)]
pub struct Reception {
    pub gateway: String,
    pub freq: f64,
    pub datr: String,
    pub rssi: Option<i32>,
    pub lsnr: Option<f64>,
    pub tmst: u32,
}

impl Reception {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "gateway": self.gateway, "rssi": self.rssi, "lsnr": self.lsnr,
            "freq": self.freq, "datr": self.datr, "tmst": self.tmst,
        })
    }
}

/// An uplink that passed every check.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub dev_eui: String,
    pub session: i64,
    pub fcnt: u32,
    pub f_port: Option<u8>,
    pub confirmed: bool,
    /// Decrypted FRMPayload.
    pub payload: Vec<u8>,
    /// MAC commands from FOpts (decrypted for 1.1).
    pub f_opts: Vec<u8>,
}

/// The verdict on one reception.
#[derive(Clone, Debug)]
pub enum Verdict {
    Accepted(Accepted),
    /// Another gateway's copy of the frame accepted last for this device.
    Duplicate {
        dev_eui: String,
        session: i64,
        fcnt: u32,
    },
    Rejected(Rejection),
}

/// A refused frame: which check failed, on which device (if the DevAddr named one).
#[derive(Clone, Debug)]
pub struct Rejection {
    pub check: &'static str,
    pub reason: String,
    pub dev_addr: Option<String>,
    pub dev_eui: Option<String>,
}

impl Rejection {
    fn new(e: &LorawanError, dev_addr: Option<[u8; 4]>, dev_eui: Option<&str>) -> Self {
        Rejection {
            check: e.check(),
            reason: e.to_string(),
            dev_addr: dev_addr.map(hex::encode_upper),
            dev_eui: dev_eui.map(str::to_owned),
        }
    }
}

/// A session as the uplink path holds it.
struct Slot {
    dev_eui: String,
    session: i64,
    version: MacVersion,
    keys: SessionKeys,
    last_fcnt: Option<u32>,
    /// The last accepted frame, for de-duplication.
    recent: Option<(u32, Vec<u8>, Instant)>,
}

impl Slot {
    /// A stored session as the uplink path holds it; `None` if its version or keys are unreadable.
    fn from_stored(s: registry::LorawanSession) -> Option<Slot> {
        Some(Slot {
            version: MacVersion::parse(&s.mac_version)?,
            keys: super::session_keys(&s.session_keys)?,
            last_fcnt: s.f_cnt_up.and_then(|f| u32::try_from(f).ok()),
            dev_eui: s.dev_eui,
            session: s.session,
            recent: None,
        })
    }
}

enum Entry {
    Known(Box<Slot>),
    /// No session holds this DevAddr (until then).
    Unknown(Instant),
}

/// The in-memory session table, by DevAddr.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_addr: HashMap<[u8; 4], Entry>,
    /// DevEUI → its DevAddr here, so a new join retires the old session.
    addr_of: HashMap<String, [u8; 4]>,
    /// How many entries of `by_addr` are `Unknown`.
    unknown: usize,
    /// Registry look-up budget: tokens, and when they were last refilled.
    lookup_tokens: f64,
    refilled: Option<Instant>,
    /// Bumped by every install and forget, so a page read by [`Sessions::preload`] before one
    /// of them is read again instead of overwriting what it did.
    changes: u64,
}

impl Table {
    /// Takes a registry look-up token (refilled at `rate` per second, burst `rate`).
    fn take_lookup(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = self
            .refilled
            .map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.lookup_tokens = (self.lookup_tokens + elapsed * rate).min(rate);
        self.refilled = Some(now);
        if self.lookup_tokens >= 1.0 {
            self.lookup_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn insert(&mut self, addr: [u8; 4], entry: Entry) {
        let is_unknown = matches!(entry, Entry::Unknown(_));
        let was_unknown = matches!(self.by_addr.insert(addr, entry), Some(Entry::Unknown(_)));
        self.unknown = self.unknown + usize::from(is_unknown) - usize::from(was_unknown);
    }

    fn remove(&mut self, addr: &[u8; 4]) -> Option<Entry> {
        let e = self.by_addr.remove(addr);
        if matches!(e, Some(Entry::Unknown(_))) {
            self.unknown -= 1;
        }
        e
    }

    /// Drops unknown entries whose time is up.
    fn purge_unknown(&mut self, now: Instant) {
        self.by_addr
            .retain(|_, e| !matches!(e, Entry::Unknown(until) if *until <= now));
        self.unknown = self.by_addr.values().filter(|e| matches!(e, Entry::Unknown(_))).count();
    }
}

/// What the table could say of a DevAddr.
enum Lookup {
    Found,
    Unknown,
    /// Not in memory, and the registry look-up budget is spent.
    Throttled,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(…)")
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::locks::lock(&self.inner)
    }

    /// Installs the session a join just opened (retiring the device's previous one).
    pub fn install(&self, dev_eui: &str, dev_addr: [u8; 4], session: i64, version: MacVersion, keys: SessionKeys) {
        let mut t = self.lock();
        t.changes += 1;
        if let Some(old) = t.addr_of.insert(dev_eui.to_owned(), dev_addr)
            && old != dev_addr
        {
            t.remove(&old);
        }
        t.insert(
            dev_addr,
            Entry::Known(Box::new(Slot {
                dev_eui: dev_eui.to_owned(),
                session,
                version,
                keys,
                last_fcnt: None,
                recent: None,
            })),
        );
    }

    /// Installs the session of an accepted join (from either join transport).
    pub fn install_joined(&self, accepted: &super::join::JoinAccepted) {
        let addr = hex::decode(&accepted.dev_addr)
            .ok()
            .and_then(|b| <[u8; 4]>::try_from(b).ok());
        if let (Some(addr), Some(version)) = (addr, MacVersion::parse(accepted.mac_version)) {
            self.install(
                &accepted.dev_eui,
                addr,
                registry::session_number("otaa", Some(i64::from(accepted.join_nonce))),
                version,
                accepted.session.clone(),
            );
        }
    }

    /// Forgets what is known of a DevAddr (after provisioning changed it): the next uplink
    /// reloads it from the registry.
    pub fn forget(&self, dev_addr: [u8; 4]) {
        let mut t = self.lock();
        t.changes += 1;
        if let Some(Entry::Known(slot)) = t.remove(&dev_addr) {
            t.addr_of.remove(&slot.dev_eui);
        }
    }

    /// Loads every stored session, a page at a time, so that after a start each provisioned
    /// device is served from memory at once rather than through the look-up budget (which exists
    /// for forged addresses, and at 2,000/s would refuse a large fleet's first frames after a
    /// restart as `lookup_throttled`). A device this table already holds (a join or a look-up got
    /// there first) is kept; a page read while a join or provisioning change landed is read
    /// again. Returns how many sessions were loaded.
    pub async fn preload(&self, registry: &Registry) -> Result<usize, RegistryError> {
        const PAGE: i64 = 2_000;
        let mut after: Option<String> = None;
        let mut loaded = 0;
        loop {
            let seen = self.lock().changes;
            let page = registry.lorawan_sessions_page(after.as_deref(), PAGE).await?;
            let Some(last) = page.last().map(|s| s.dev_addr.clone()) else {
                break;
            };
            let full = page.len() as i64 == PAGE;
            let mut t = self.lock();
            if t.changes != seen {
                continue;
            }
            for s in page {
                let Some(addr) = hex::decode(&s.dev_addr).ok().and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                    continue;
                };
                if t.addr_of.contains_key(&s.dev_eui) || matches!(t.by_addr.get(&addr), Some(Entry::Known(_))) {
                    continue;
                }
                if let Some(slot) = Slot::from_stored(s) {
                    t.addr_of.insert(slot.dev_eui.clone(), addr);
                    t.insert(addr, Entry::Known(Box::new(slot)));
                    loaded += 1;
                }
            }
            drop(t);
            after = Some(last);
            if !full {
                break;
            }
        }
        Ok(loaded)
    }

    /// Sessions held (known DevAddrs).
    pub fn len(&self) -> usize {
        self.lock()
            .by_addr
            .values()
            .filter(|e| matches!(e, Entry::Known(_)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// DevAddrs remembered as unknown (bounded by [`UplinkSettings::max_unknown`]).
    pub fn remembered_unknown(&self) -> usize {
        self.lock().unknown
    }

    /// Loads a DevAddr's session from the registry if the table has no fresh answer for it.
    async fn ensure_loaded(&self, registry: &Registry, dev_addr: [u8; 4], settings: &UplinkSettings) -> Lookup {
        let now = crate::clock::monotonic();
        {
            let mut t = self.lock();
            match t.by_addr.get(&dev_addr) {
                Some(Entry::Known(_)) => return Lookup::Found,
                Some(Entry::Unknown(until)) if *until > now => return Lookup::Unknown,
                _ => {}
            }
            if !t.take_lookup(settings.lookups_per_sec, now) {
                return Lookup::Throttled;
            }
        }
        let entry = match registry.lorawan_session(&hex::encode(dev_addr)).await {
            Ok(s) => match Slot::from_stored(s) {
                Some(slot) => Entry::Known(Box::new(slot)),
                None => {
                    tracing::warn!(dev_addr = %hex::encode_upper(dev_addr), "stored LoRaWAN session is unreadable");
                    Entry::Unknown(now + settings.unknown_ttl)
                }
            },
            Err(RegistryError::NotFound { .. }) => Entry::Unknown(now + settings.unknown_ttl),
            Err(e) => {
                // Not cached: the next frame asks again.
                tracing::warn!(error = %e, "LoRaWAN session lookup failed");
                return Lookup::Unknown;
            }
        };
        let mut t = self.lock();
        // A join may have installed it meanwhile: that one is newer.
        if matches!(t.by_addr.get(&dev_addr), Some(Entry::Known(_))) {
            return Lookup::Found;
        }
        match entry {
            Entry::Known(slot) => {
                t.addr_of.insert(slot.dev_eui.clone(), dev_addr);
                t.insert(dev_addr, Entry::Known(slot));
                Lookup::Found
            }
            unknown => {
                if t.unknown >= settings.max_unknown {
                    t.purge_unknown(now);
                }
                // Still full of fresh unknowns (a flood): answer without remembering.
                if t.unknown < settings.max_unknown {
                    t.insert(dev_addr, unknown);
                }
                Lookup::Unknown
            }
        }
    }

    /// Judges one reception of a data uplink.
    pub async fn verify(&self, registry: &Registry, settings: &UplinkSettings, phy: &[u8], rx: &Reception) -> Verdict {
        let header = match peek_uplink(phy) {
            Ok(h) => h,
            Err(e) => return Verdict::Rejected(Rejection::new(&e, None, None)),
        };
        let lookup = self.ensure_loaded(registry, header.dev_addr, settings).await;
        let mut t = self.lock();
        let Some(Entry::Known(slot)) = t.by_addr.get_mut(&header.dev_addr) else {
            let addr = hex::encode_upper(header.dev_addr);
            let (check, reason) = match lookup {
                Lookup::Throttled => (
                    "lookup_throttled",
                    format!(
                        "DevAddr {addr} is not in memory and registry look-ups are over their budget \
                         (a flood of unknown addresses?)"
                    ),
                ),
                Lookup::Found | Lookup::Unknown => ("unknown_dev_addr", format!("no session holds DevAddr {addr}")),
            };
            return Verdict::Rejected(Rejection {
                check,
                reason,
                dev_addr: Some(addr),
                dev_eui: None,
            });
        };
        judge(slot, settings, phy, header.dev_addr, header.fcnt16, rx)
    }
}

fn mic_keys<'k>(slot: &'k Slot, settings: &UplinkSettings, rx: &Reception) -> UplinkMicKeys<'k> {
    if slot.version.is_1_1() {
        UplinkMicKeys::V1_1 {
            f_nwk_s_int_key: &slot.keys.f_nwk_s_int_key,
            s_nwk_s_int_key: &slot.keys.s_nwk_s_int_key,
            // fleetward sends no confirmed downlinks, so an ACK acknowledges none of ours.
            conf_fcnt: 0,
            tx_dr: eu868_data_rate(&rx.datr).unwrap_or(0),
            tx_ch: channel_index(&settings.channels, rx.freq).unwrap_or(0),
        }
    } else {
        UplinkMicKeys::V1_0 {
            nwk_s_key: &slot.keys.f_nwk_s_int_key,
        }
    }
}

fn judge(
    slot: &mut Slot,
    settings: &UplinkSettings,
    phy: &[u8],
    dev_addr: [u8; 4],
    fcnt16: u16,
    rx: &Reception,
) -> Verdict {
    let reject =
        |e: &LorawanError, slot: &Slot| Verdict::Rejected(Rejection::new(e, Some(dev_addr), Some(&slot.dev_eui)));
    if let Some((fcnt, bytes, at)) = &slot.recent
        && (*fcnt & 0xffff) as u16 == fcnt16
        && bytes.as_slice() == phy
        && crate::clock::monotonic().saturating_duration_since(*at) < settings.dedup_window
    {
        return Verdict::Duplicate {
            dev_eui: slot.dev_eui.clone(),
            session: slot.session,
            fcnt: *fcnt,
        };
    }
    let fcnt = reconstruct_fcnt(slot.last_fcnt, fcnt16);
    let keys = mic_keys(slot, settings, rx);
    let uplink = match verify_uplink(phy, fcnt, keys) {
        Ok(u) => u,
        Err(e) => {
            // A frame whose counter is not above the last: if its MIC verifies with the counter it
            // was sent with, it is a genuine frame sent again — say so, not "bad MIC".
            if let (LorawanError::MicMismatch, Some(last)) = (&e, slot.last_fcnt) {
                let same_epoch = (last & 0xffff_0000) | u32::from(fcnt16);
                if same_epoch <= last && verify_uplink(phy, same_epoch, keys).is_ok() {
                    return reject(&LorawanError::FCntReplay { last, got: same_epoch }, slot);
                }
            }
            return reject(&e, slot);
        }
    };
    if let Err(e) = check_fcnt(slot.last_fcnt, fcnt, settings.max_fcnt_gap) {
        return reject(&e, slot);
    }
    // FPort 0 carries MAC commands under the network key; others application data.
    let payload = match uplink.f_port {
        None => Ok(Vec::new()),
        Some(0) => decrypt_uplink_payload(&slot.keys.nwk_s_enc_key, &uplink),
        Some(_) => decrypt_uplink_payload(&slot.keys.app_s_key, &uplink),
    };
    let f_opts = if slot.version.is_1_1() {
        decrypt_uplink_f_opts(&slot.keys.nwk_s_enc_key, &uplink)
    } else {
        Ok(uplink.f_opts.clone())
    };
    let (payload, f_opts) = match (payload, f_opts) {
        (Ok(p), Ok(f)) => (p, f),
        (Err(e), _) | (_, Err(e)) => return reject(&e, slot),
    };
    slot.last_fcnt = Some(fcnt);
    slot.recent = Some((fcnt, phy.to_vec(), crate::clock::monotonic()));
    Verdict::Accepted(Accepted {
        dev_eui: slot.dev_eui.clone(),
        session: slot.session,
        fcnt,
        f_port: uplink.f_port,
        confirmed: uplink.confirmed,
        payload,
        f_opts,
    })
}
