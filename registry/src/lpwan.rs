//! Key custody and replay state for LPWAN devices.
//!
//! Root keys (LoRaWAN AppKey/NwkKey, Sigfox NAK) and LoRaWAN session keys are sealed
//! ([`crate::Keyring`]) and bound to their row and column. Counters (FCntUp, Sigfox sequence
//! numbers) advance by **compare-and-swap**: the verifier computes the new value from the one it
//! read (it owns wrap-around and gap rules), and the registry stores it only if the stored value
//! is still the one read — so of two gateway nodes handling the same frame, exactly one wins.
//! DevNonces are unique per device: a second use of one is a replay.

use crate::seal::Keyring;
use crate::{Registry, RegistryError, Result};
use sqlx::Row;
use zeroize::Zeroizing;

/// A LoRaWAN device's root keys and identity, as provisioned.
#[derive(Clone, Debug)]
pub struct NewLorawanDevice<'a> {
    /// DevEUI, 16 hex characters.
    pub dev_eui: &'a str,
    pub join_eui: &'a str,
    /// `1.0.x` or `1.1`.
    pub mac_version: &'a str,
    pub app_key: &'a [u8; 16],
    /// LoRaWAN 1.1 only.
    pub nwk_key: Option<&'a [u8; 16]>,
}

/// The sealed session-key blob: FNwkSIntKey ‖ SNwkSIntKey ‖ NwkSEncKey ‖ AppSKey (LoRaWAN 1.0.x:
/// the first three are all NwkSKey).
pub const SESSION_KEYS_LEN: usize = 64;

/// An ABP device: provisioned with its session.
#[derive(Clone, Debug)]
pub struct NewAbpDevice<'a> {
    pub dev_eui: &'a str,
    /// DevAddr, 8 hex characters.
    pub dev_addr: &'a str,
    pub mac_version: &'a str,
    /// [`SESSION_KEYS_LEN`] bytes.
    pub session_keys: &'a [u8; SESSION_KEYS_LEN],
    /// The last uplink counter used (`None`: none yet).
    pub f_cnt_up: Option<u32>,
    /// The next downlink counter.
    pub f_cnt_down: u32,
}

/// A LoRaWAN device as listed (no key material).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LorawanDeviceInfo {
    pub dev_eui: String,
    pub join_eui: String,
    pub mac_version: String,
    /// `otaa` or `abp`.
    pub activation: String,
    pub dev_addr: Option<String>,
    pub f_cnt_up: Option<i64>,
    pub n_f_cnt_down: i64,
    pub a_f_cnt_down: i64,
    pub join_nonce: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const LORAWAN_INFO_COLUMNS: &str = "dev_eui, join_eui, mac_version, activation, dev_addr, f_cnt_up, n_f_cnt_down, \
     a_f_cnt_down, join_nonce, created_at, updated_at";

fn lorawan_info(r: &sqlx::any::AnyRow) -> Result<LorawanDeviceInfo> {
    Ok(LorawanDeviceInfo {
        dev_eui: r.try_get("dev_eui")?,
        join_eui: r.try_get("join_eui")?,
        mac_version: r.try_get("mac_version")?,
        activation: r.try_get("activation")?,
        dev_addr: r.try_get("dev_addr")?,
        f_cnt_up: r.try_get("f_cnt_up")?,
        n_f_cnt_down: r.try_get("n_f_cnt_down")?,
        a_f_cnt_down: r.try_get("a_f_cnt_down")?,
        join_nonce: r.try_get("join_nonce")?,
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
    })
}

/// A device's current session, opened (for the uplink path).
pub struct LorawanSession {
    pub dev_eui: String,
    /// DevAddr, 8 hex characters, upper case.
    pub dev_addr: String,
    pub mac_version: String,
    /// [`SESSION_KEYS_LEN`] bytes (zeroized on drop).
    pub session_keys: Zeroizing<Vec<u8>>,
    /// The last accepted uplink counter (`None`: none yet).
    pub f_cnt_up: Option<i64>,
    /// Which session this is: the opening join's JoinNonce + 1; 0 for ABP.
    pub session: i64,
}

impl std::fmt::Debug for LorawanSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LorawanSession")
            .field("dev_eui", &self.dev_eui)
            .field("dev_addr", &self.dev_addr)
            .field("mac_version", &self.mac_version)
            .field("f_cnt_up", &self.f_cnt_up)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Root keys, opened (zeroized on drop).
pub struct LorawanRootKeys {
    pub app_key: Zeroizing<Vec<u8>>,
    pub nwk_key: Option<Zeroizing<Vec<u8>>>,
    pub join_eui: String,
    pub mac_version: String,
}

impl std::fmt::Debug for LorawanRootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LorawanRootKeys")
            .field("join_eui", &self.join_eui)
            .field("mac_version", &self.mac_version)
            .finish_non_exhaustive()
    }
}

/// A Sigfox device's key and replay state, opened (the NAK is zeroized on drop).
pub struct SigfoxDeviceKeys {
    /// `None`: a device served through the Sigfox backend's callbacks only.
    pub nak: Option<Zeroizing<Vec<u8>>>,
    /// The last accepted sequence number (`None`: none yet).
    pub last_seq: Option<i64>,
    pub payload_encrypted: bool,
}

impl std::fmt::Debug for SigfoxDeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigfoxDeviceKeys")
            .field("has_nak", &self.nak.is_some())
            .field("last_seq", &self.last_seq)
            .field("payload_encrypted", &self.payload_encrypted)
            .finish()
    }
}

/// Where sealed secrets live: (table, key column, sealed column).
const SEALED_COLUMNS: &[(&str, &str, &str)] = &[
    ("lorawan_devices", "dev_eui", "app_key"),
    ("lorawan_devices", "dev_eui", "nwk_key"),
    ("lorawan_devices", "dev_eui", "session_keys"),
    ("sigfox_devices", "device_id", "nak"),
];

pub(crate) fn hex_id(what: &'static str, id: &str, bytes: usize) -> Result<String> {
    let ok = id.len() == bytes * 2 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(id.to_ascii_uppercase())
    } else {
        Err(RegistryError::Invalid {
            what,
            detail: format!("expected {} hex characters", bytes * 2),
        })
    }
}

/// A session's number: the opening join's JoinNonce + 1, 0 for ABP (see migration 0006).
pub fn session_number(activation: &str, join_nonce: Option<i64>) -> i64 {
    match (activation, join_nonce) {
        ("otaa", Some(n)) => n + 1,
        _ => 0,
    }
}

fn dev_eui_taken(dev_eui: &str) -> RegistryError {
    RegistryError::Conflict {
        what: "LoRaWAN device",
        detail: format!("DevEUI {dev_eui} exists"),
    }
}

impl Registry {
    /// Provisions a LoRaWAN device's root keys (sealed). `Conflict` if the DevEUI exists.
    pub async fn insert_lorawan_device(&self, d: &NewLorawanDevice<'_>, now_ms: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", d.dev_eui, 8)?;
        let join_eui = hex_id("JoinEUI", d.join_eui, 8)?;
        let keys = self.keys()?;
        let app_key = keys.seal(&Keyring::aad("lorawan_devices", &dev_eui, "app_key"), d.app_key)?;
        let nwk_key = d
            .nwk_key
            .map(|k| keys.seal(&Keyring::aad("lorawan_devices", &dev_eui, "nwk_key"), k))
            .transpose()?;
        let n = sqlx::query(
            "INSERT INTO lorawan_devices (dev_eui, join_eui, mac_version, app_key, nwk_key, n_f_cnt_down, a_f_cnt_down, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $6) ON CONFLICT (dev_eui) DO NOTHING",
        )
        .bind(&dev_eui)
        .bind(&join_eui)
        .bind(d.mac_version)
        .bind(app_key)
        .bind(nwk_key)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(dev_eui_taken(&dev_eui));
        }
        Ok(())
    }

    /// Opens a LoRaWAN device's root keys (for the join server).
    pub async fn lorawan_root_keys(&self, dev_eui: &str) -> Result<LorawanRootKeys> {
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let row = sqlx::query("SELECT join_eui, mac_version, app_key, nwk_key FROM lorawan_devices WHERE dev_eui = $1")
            .bind(&dev_eui)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| RegistryError::not_found("LoRaWAN device", &dev_eui))?;
        let keys = self.keys()?;
        let app_key: Vec<u8> = row.try_get("app_key")?;
        let nwk_key: Option<Vec<u8>> = row.try_get("nwk_key")?;
        Ok(LorawanRootKeys {
            app_key: keys.open(&Keyring::aad("lorawan_devices", &dev_eui, "app_key"), &app_key)?,
            nwk_key: nwk_key
                .map(|k| keys.open(&Keyring::aad("lorawan_devices", &dev_eui, "nwk_key"), &k))
                .transpose()?,
            join_eui: row.try_get("join_eui")?,
            mac_version: row.try_get("mac_version")?,
        })
    }

    /// Records a DevNonce; `false` if this device already used it (a replayed join).
    pub async fn record_dev_nonce(&self, dev_eui: &str, dev_nonce: u16, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let n = sqlx::query(
            "INSERT INTO lorawan_dev_nonces (dev_eui, dev_nonce, used_at) VALUES ($1, $2, $3) \
             ON CONFLICT (dev_eui, dev_nonce) DO NOTHING",
        )
        .bind(&dev_eui)
        .bind(i64::from(dev_nonce))
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Takes the next JoinNonce for a device atomically (0 first; concurrent joins get distinct
    /// values): the join server never sends one twice.
    pub async fn next_join_nonce(&self, dev_eui: &str, now_ms: i64) -> Result<u32> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let next: Option<i64> = sqlx::query_scalar(
            "UPDATE lorawan_devices SET join_nonce = COALESCE(join_nonce, -1) + 1, updated_at = $2 \
             WHERE dev_eui = $1 RETURNING join_nonce",
        )
        .bind(&dev_eui)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        let next = next.ok_or_else(|| RegistryError::not_found("LoRaWAN device", &dev_eui))?;
        u32::try_from(next)
            .ok()
            .filter(|n| *n <= 0x00ff_ffff)
            .ok_or_else(|| RegistryError::Invalid {
                what: "JoinNonce",
                detail: "the 24-bit JoinNonce space is exhausted; the device needs new root keys".into(),
            })
    }

    /// LoRaWAN 1.1: accepts `dev_nonce` only if it is above the last one (one conditional
    /// UPDATE: of concurrent joins with the same DevNonce, one wins). `false`: a replay.
    pub async fn advance_dev_nonce(&self, dev_eui: &str, dev_nonce: u16, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let n = sqlx::query(
            "UPDATE lorawan_devices SET last_dev_nonce = $2, updated_at = $3 \
             WHERE dev_eui = $1 AND (last_dev_nonce IS NULL OR last_dev_nonce < $2)",
        )
        .bind(&dev_eui)
        .bind(i64::from(dev_nonce))
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stores a new session (after a join): DevAddr and the sealed session-key blob; counters
    /// restart. `Conflict` if another device holds that DevAddr.
    pub async fn set_lorawan_session(
        &self,
        dev_eui: &str,
        dev_addr: &str,
        session_keys: &[u8],
        now_ms: i64,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let dev_addr = hex_id("DevAddr", dev_addr, 4)?;
        let sealed = self
            .keys()?
            .seal(&Keyring::aad("lorawan_devices", &dev_eui, "session_keys"), session_keys)?;
        let n = sqlx::query(
            "UPDATE lorawan_devices SET dev_addr = $2, session_keys = $3, f_cnt_up = NULL, n_f_cnt_down = 0, \
             a_f_cnt_down = 0, updated_at = $4 WHERE dev_eui = $1",
        )
        .bind(&dev_eui)
        .bind(&dev_addr)
        .bind(sealed)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("LoRaWAN device", &dev_eui));
        }
        Ok(())
    }

    /// The current session of the device holding `dev_addr`: (DevEUI, opened session keys,
    /// last FCntUp).
    pub async fn lorawan_session_by_addr(&self, dev_addr: &str) -> Result<(String, Zeroizing<Vec<u8>>, Option<i64>)> {
        let s = self.lorawan_session(dev_addr).await?;
        Ok((s.dev_eui, s.session_keys, s.f_cnt_up))
    }

    /// The session of the device holding `dev_addr`, with its MAC version (what the uplink path
    /// needs to check a frame's MIC). `NotFound` if no device holds it or it has not joined.
    pub async fn lorawan_session(&self, dev_addr: &str) -> Result<LorawanSession> {
        let dev_addr = hex_id("DevAddr", dev_addr, 4)?;
        let row = sqlx::query(
            "SELECT dev_eui, mac_version, activation, join_nonce, session_keys, f_cnt_up FROM lorawan_devices \
             WHERE dev_addr = $1",
        )
        .bind(&dev_addr)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| RegistryError::not_found("LoRaWAN session", &dev_addr))?;
        let dev_eui: String = row.try_get("dev_eui")?;
        let sealed: Option<Vec<u8>> = row.try_get("session_keys")?;
        let sealed = sealed.ok_or_else(|| RegistryError::not_found("LoRaWAN session", &dev_addr))?;
        let session_keys = self
            .keys()?
            .open(&Keyring::aad("lorawan_devices", &dev_eui, "session_keys"), &sealed)?;
        Ok(LorawanSession {
            dev_eui,
            dev_addr,
            mac_version: row.try_get("mac_version")?,
            session_keys,
            f_cnt_up: row.try_get("f_cnt_up")?,
            session: session_number(&row.try_get::<String, _>("activation")?, row.try_get("join_nonce")?),
        })
    }

    /// The sessions of devices that hold a DevAddr, `limit` at a time in DevAddr order after
    /// `after` (for loading the uplink path's session table at start). A row whose sealed keys do
    /// not open fails the page, as [`Registry::lorawan_session`] would fail for it.
    pub async fn lorawan_sessions_page(&self, after: Option<&str>, limit: i64) -> Result<Vec<LorawanSession>> {
        let after = match after {
            Some(a) => hex_id("DevAddr", a, 4)?,
            None => String::new(),
        };
        let rows = sqlx::query(
            "SELECT dev_eui, dev_addr, mac_version, activation, join_nonce, session_keys, f_cnt_up \
             FROM lorawan_devices WHERE dev_addr > $1 AND session_keys IS NOT NULL ORDER BY dev_addr LIMIT $2",
        )
        .bind(&after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let keys = self.keys()?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let dev_eui: String = row.try_get("dev_eui")?;
            let sealed: Vec<u8> = row.try_get("session_keys")?;
            let session_keys = keys.open(&Keyring::aad("lorawan_devices", &dev_eui, "session_keys"), &sealed)?;
            sessions.push(LorawanSession {
                dev_eui,
                dev_addr: row.try_get("dev_addr")?,
                mac_version: row.try_get("mac_version")?,
                session_keys,
                f_cnt_up: row.try_get("f_cnt_up")?,
                session: session_number(&row.try_get::<String, _>("activation")?, row.try_get("join_nonce")?),
            });
        }
        Ok(sessions)
    }

    /// Advances FCntUp from `expected` (what the caller read; `None` = no uplink yet) to `new`.
    /// `false` if the stored value is no longer `expected` (another node accepted a frame).
    pub async fn cas_lorawan_f_cnt_up(
        &self,
        dev_eui: &str,
        expected: Option<i64>,
        new: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        self.cas_counter(
            "lorawan_devices",
            "dev_eui",
            &dev_eui,
            "f_cnt_up",
            expected,
            new,
            now_ms,
        )
        .await
    }

    /// Takes the next downlink frame counter (`network`: NFCntDown, else AFCntDown) atomically:
    /// concurrent callers get distinct values, so no downlink counter is ever used twice.
    pub async fn next_lorawan_f_cnt_down(&self, dev_eui: &str, network: bool, now_ms: i64) -> Result<i64> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let column = if network { "n_f_cnt_down" } else { "a_f_cnt_down" };
        // Returns the value before the increment: the counter to use for this frame.
        let next: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE lorawan_devices SET {column} = {column} + 1, updated_at = $2 WHERE dev_eui = $1 RETURNING {column} - 1"
        )))
        .bind(&dev_eui)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        next.ok_or_else(|| RegistryError::not_found("LoRaWAN device", &dev_eui))
    }

    /// Provisions an ABP LoRaWAN device: DevAddr and session keys (sealed), counters as given.
    /// It has no root keys (a sealed empty AppKey) and never joins. `Conflict` if the DevEUI or
    /// the DevAddr is taken.
    pub async fn insert_lorawan_abp(&self, d: &NewAbpDevice<'_>, now_ms: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let dev_eui = hex_id("DevEUI", d.dev_eui, 8)?;
        let dev_addr = hex_id("DevAddr", d.dev_addr, 4)?;
        let keys = self.keys()?;
        let app_key = keys.seal(&Keyring::aad("lorawan_devices", &dev_eui, "app_key"), &[])?;
        let session = keys.seal(
            &Keyring::aad("lorawan_devices", &dev_eui, "session_keys"),
            d.session_keys,
        )?;
        let n = sqlx::query(
            "INSERT INTO lorawan_devices (dev_eui, join_eui, mac_version, app_key, dev_addr, session_keys, f_cnt_up, \
             n_f_cnt_down, a_f_cnt_down, created_at, updated_at, activation) \
             VALUES ($1, '0000000000000000', $2, $3, $4, $5, $6, $7, $7, $8, $8, 'abp') ON CONFLICT (dev_eui) DO NOTHING",
        )
        .bind(&dev_eui)
        .bind(d.mac_version)
        .bind(app_key)
        .bind(&dev_addr)
        .bind(session)
        .bind(d.f_cnt_up.map(i64::from))
        .bind(i64::from(d.f_cnt_down))
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(dev_eui_taken(&dev_eui));
        }
        Ok(())
    }

    /// LoRaWAN devices by DevEUI, after `after` (keyset paging). No key material.
    pub async fn lorawan_devices(&self, after: Option<&str>, limit: u32) -> Result<Vec<LorawanDeviceInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LORAWAN_INFO_COLUMNS} FROM lorawan_devices WHERE dev_eui > $1 ORDER BY dev_eui LIMIT $2"
        )))
        .bind(after.unwrap_or("").to_ascii_uppercase())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(lorawan_info).collect()
    }

    /// One LoRaWAN device (no key material).
    pub async fn lorawan_device(&self, dev_eui: &str) -> Result<LorawanDeviceInfo> {
        let dev_eui = hex_id("DevEUI", dev_eui, 8)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LORAWAN_INFO_COLUMNS} FROM lorawan_devices WHERE dev_eui = $1"
        )))
        .bind(&dev_eui)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| RegistryError::not_found("LoRaWAN device", &dev_eui))?;
        lorawan_info(&row)
    }

    /// Provisions a Sigfox device, with its NAK (sealed) or without one (a device heard of only
    /// through the Sigfox backend's callbacks). `Conflict` if the device exists.
    pub async fn insert_sigfox_device(&self, device_id: &str, nak: Option<&[u8; 16]>, now_ms: i64) -> Result<()> {
        self.insert_sigfox_device_with(device_id, nak, false, now_ms).await
    }

    /// [`Registry::insert_sigfox_device`], saying whether the device encrypts its payloads.
    pub async fn insert_sigfox_device_with(
        &self,
        device_id: &str,
        nak: Option<&[u8; 16]>,
        payload_encrypted: bool,
        now_ms: i64,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let sealed = match nak {
            Some(nak) => Some(self.keys()?.seal(&Keyring::aad("sigfox_devices", &id, "nak"), nak)?),
            None => None,
        };
        let n = sqlx::query(
            "INSERT INTO sigfox_devices (device_id, nak, registered_via, payload_encrypted, created_at, updated_at) \
             VALUES ($1, $2, 'api', $3, $4, $4) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(&id)
        .bind(sealed)
        .bind(i64::from(payload_encrypted))
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(RegistryError::Conflict {
                what: "Sigfox device",
                detail: format!("{id} exists"),
            });
        }
        Ok(())
    }

    /// Registers a device first heard of in a Sigfox backend callback (no NAK). `false` if it
    /// existed already (registered by a concurrent callback, say): nothing changes then.
    pub async fn register_sigfox_device_from_callback(&self, device_id: &str, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let n = sqlx::query(
            "INSERT INTO sigfox_devices (device_id, nak, registered_via, created_at, updated_at) \
             VALUES ($1, NULL, 'callback', $2, $2) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(&id)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// A Sigfox device's NAK (opened; `None` for a callback-only device), last accepted
    /// sequence number and payload-encryption flag: what judging one of its frames needs.
    pub async fn sigfox_device(&self, device_id: &str) -> Result<SigfoxDeviceKeys> {
        let id = hex_id("Sigfox device id", device_id, 4)?;
        let row = sqlx::query("SELECT nak, last_seq, payload_encrypted FROM sigfox_devices WHERE device_id = $1")
            .bind(&id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| RegistryError::not_found("Sigfox device", &id))?;
        let sealed: Option<Vec<u8>> = row.try_get("nak")?;
        let nak = match sealed {
            Some(sealed) => Some(
                self.keys()?
                    .open(&Keyring::aad("sigfox_devices", &id, "nak"), &sealed)?,
            ),
            None => None,
        };
        Ok(SigfoxDeviceKeys {
            nak,
            last_seq: row.try_get("last_seq")?,
            payload_encrypted: row.try_get::<i64, _>("payload_encrypted")? != 0,
        })
    }

    /// Advances a Sigfox device's sequence number by compare-and-swap (see the module docs).
    pub async fn cas_sigfox_seq(&self, device_id: &str, expected: Option<i64>, new: i64, now_ms: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let id = hex_id("Sigfox device id", device_id, 4)?;
        self.cas_counter("sigfox_devices", "device_id", &id, "last_seq", expected, new, now_ms)
            .await
    }

    /// `UPDATE table SET counter = new WHERE key = id AND counter IS expected` (NULL-safe, written
    /// portably): true if this caller moved the counter.
    #[allow(clippy::too_many_arguments)]
    async fn cas_counter(
        &self,
        table: &'static str,
        key_column: &'static str,
        id: &str,
        counter: &'static str,
        expected: Option<i64>,
        new: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {counter} = $2, updated_at = $4 WHERE {key_column} = $1 \
             AND ({counter} = $3 OR ({counter} IS NULL AND $3 IS NULL))"
        )))
        .bind(id)
        .bind(new)
        .bind(expected)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Re-seals every secret not sealed under the current KEK (previous KEKs must be in the
    /// keyring). Each row is swapped only if it still holds the blob read. Returns how many
    /// secrets were re-sealed.
    pub async fn rotate_keys(&self) -> Result<u64> {
        let _turn = self.write_turn().await;
        let keys = self.keys()?;
        let mut resealed = 0;
        for (table, id_col, col) in SEALED_COLUMNS {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {id_col} AS id, {col} AS blob FROM {table} WHERE {col} IS NOT NULL"
            )))
            .fetch_all(self.pool())
            .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let blob: Vec<u8> = row.try_get("blob")?;
                if Keyring::kid_of(&blob)? == keys.current_id() {
                    continue;
                }
                let aad = Keyring::aad(table, &id, col);
                let plain = keys.open(&aad, &blob)?;
                let fresh = keys.seal(&aad, &plain)?;
                resealed += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {col} = $1 WHERE {id_col} = $2 AND {col} = $3"
                )))
                .bind(fresh)
                .bind(&id)
                .bind(blob)
                .execute(self.pool())
                .await?
                .rows_affected();
            }
        }
        Ok(resealed)
    }
}
