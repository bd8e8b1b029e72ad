//! LoRaWAN transports. The rules are `verifier::lorawan` (pure); the state is the registry
//! (sealed root and session keys, DevNonces, JoinNonces, frame counters). This module joins them:
//! [`join`] is the join server's logic, shared by the Backend Interfaces HTTP endpoint and the
//! packet-forwarder (UDP) path; [`udp`] is the packet-forwarder listener and [`uplink`] the
//! uplink verifier with its in-memory sessions.

pub mod backend;
pub mod join;
pub mod udp;
pub mod uplink;

use registry::SESSION_KEYS_LEN;
use zeroize::Zeroizing;

/// The registry's session-key blob: FNwkSIntKey ‖ SNwkSIntKey ‖ NwkSEncKey ‖ AppSKey (for
/// LoRaWAN 1.0.x pass NwkSKey three times). The one place that knows the layout.
pub fn session_blob(
    f_nwk_s_int_key: &[u8; 16],
    s_nwk_s_int_key: &[u8; 16],
    nwk_s_enc_key: &[u8; 16],
    app_s_key: &[u8; 16],
) -> Zeroizing<[u8; SESSION_KEYS_LEN]> {
    let mut blob = Zeroizing::new([0u8; SESSION_KEYS_LEN]);
    blob[..16].copy_from_slice(f_nwk_s_int_key);
    blob[16..32].copy_from_slice(s_nwk_s_int_key);
    blob[32..48].copy_from_slice(nwk_s_enc_key);
    blob[48..].copy_from_slice(app_s_key);
    blob
}

/// The keys in a registry session-key blob ([`session_blob`]'s inverse); `None` if it is not
/// [`SESSION_KEYS_LEN`] bytes.
pub fn session_keys(blob: &[u8]) -> Option<verifier::lorawan::SessionKeys> {
    if blob.len() != SESSION_KEYS_LEN {
        return None;
    }
    let k = |i: usize| -> Option<[u8; 16]> { blob.get(i * 16..(i + 1) * 16)?.try_into().ok() };
    Some(verifier::lorawan::SessionKeys {
        f_nwk_s_int_key: k(0)?,
        s_nwk_s_int_key: k(1)?,
        nwk_s_enc_key: k(2)?,
        app_s_key: k(3)?,
    })
}

/// Hex as network servers and operators write it: trimmed, one optional `0x`/`0X` prefix.
pub(crate) fn decode_hex(value: &str) -> Option<Vec<u8>> {
    let v = value.trim();
    let v = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    hex::decode(v).ok()
}
