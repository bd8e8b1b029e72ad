//! Keys sealed at rest: LoRaWAN root/session keys and Sigfox NAKs never reach SQL in clear.
//!
//! Each secret is encrypted with AES-256-GCM under a key-encryption key (KEK) from the
//! operator's config. The sealed blob names its KEK (`kid`), so KEKs can be rotated
//! ([`crate::Registry::rotate_keys`] re-seals everything under the current one), and the
//! associated data binds it to its place (`table/row/column`): a sealed AppKey copied onto
//! another device's row, or into another column, does not open.
//!
//! Blob layout: `"FWS1" | kid length (1 byte) | kid | 12-byte nonce | ciphertext ‖ 16-byte tag`.

use crate::{RegistryError, Result};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"FWS1";

/// A key-encryption key: 32 bytes and an id that is stored with everything it seals.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({}, <redacted>)", self.id)
    }
}

impl Kek {
    /// `id`: 1–64 printable ASCII characters (e.g. `2026-11`); `key`: 32 bytes of key material.
    pub fn new(id: &str, key: &[u8; 32]) -> Result<Self> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RegistryError::Invalid {
                what: "KEK id",
                detail: "1-64 printable ASCII characters".into(),
            });
        }
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| RegistryError::Invalid {
            what: "KEK",
            detail: "not an AES-256 key".into(),
        })?;
        Ok(Kek {
            id: id.to_owned(),
            key: LessSafeKey::new(key),
        })
    }

    /// From 64 hex characters (what a key file or `FLEETWARD_KEK` holds).
    pub fn from_hex(id: &str, hex_key: &str) -> Result<Self> {
        let bytes = Zeroizing::new(hex::decode(hex_key.trim()).map_err(|_| RegistryError::Invalid {
            what: "KEK",
            detail: "expected 64 hex characters".into(),
        })?);
        let key: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| RegistryError::Invalid {
            what: "KEK",
            detail: "expected 32 bytes (64 hex characters)".into(),
        })?;
        Self::new(id, key)
    }

    /// A fresh random KEK (first start, tests).
    pub fn generate(id: &str) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| RegistryError::Sealing {
                detail: "no system randomness".into(),
            })?;
        Self::new(id, &key)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The current KEK (seals) and previous ones (still open what they sealed, until rotation).
#[derive(Debug)]
pub struct Keyring {
    current: Kek,
    previous: Vec<Kek>,
    rng: SystemRandom,
}

impl Keyring {
    pub fn new(current: Kek) -> Self {
        Keyring {
            current,
            previous: Vec::new(),
            rng: SystemRandom::new(),
        }
    }

    /// Keeps `kek` for opening what it sealed before a rotation.
    pub fn with_previous(mut self, kek: Kek) -> Self {
        self.previous.push(kek);
        self
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// The associated data binding a secret to `table/row/column`.
    pub(crate) fn aad(table: &str, row: &str, column: &str) -> String {
        format!("fleetward/{table}/{row}/{column}")
    }

    pub(crate) fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| RegistryError::Sealing {
            detail: "no system randomness".into(),
        })?;
        let mut out = Vec::with_capacity(5 + self.current.id.len() + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(self.current.id.len() as u8);
        out.extend_from_slice(self.current.id.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .map_err(|_| RegistryError::Sealing {
                detail: "encryption failed".into(),
            })?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The KEK id a blob was sealed under.
    pub(crate) fn kid_of(sealed: &[u8]) -> Result<&str> {
        let bad = || RegistryError::Sealing {
            detail: "not a fleetward sealed blob".into(),
        };
        if sealed.len() < 5 || &sealed[..4] != MAGIC {
            return Err(bad());
        }
        let n = usize::from(sealed[4]);
        let kid = sealed.get(5..5 + n).ok_or_else(bad)?;
        std::str::from_utf8(kid).map_err(|_| bad())
    }

    pub(crate) fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let kid = Self::kid_of(sealed)?;
        let kek = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == kid)
            .ok_or_else(|| RegistryError::Sealing {
                detail: format!("sealed under KEK `{kid}`, which is not configured"),
            })?;
        let start = 5 + kid.len();
        let nonce: [u8; NONCE_LEN] = sealed
            .get(start..start + NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| RegistryError::Sealing {
                detail: "truncated sealed blob".into(),
            })?;
        let mut body = Zeroizing::new(sealed[start + NONCE_LEN..].to_vec());
        let len = kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .map_err(|_| RegistryError::Sealing {
                detail: "authentication failed (wrong KEK, wrong row, or tampered)".into(),
            })?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: &str) -> Keyring {
        Keyring::new(Kek::generate(id).unwrap())
    }

    #[test]
    fn round_trip_and_binding() {
        let k = ring("k1");
        let sealed = k.seal("fleetward/sigfox_devices/ABC/nak", b"sixteen byte key").unwrap();
        assert_eq!(Keyring::kid_of(&sealed).unwrap(), "k1");
        assert_eq!(
            &k.open("fleetward/sigfox_devices/ABC/nak", &sealed).unwrap()[..],
            b"sixteen byte key"
        );
        // Moved to another row or column: refused.
        assert!(k.open("fleetward/sigfox_devices/ABD/nak", &sealed).is_err());
        assert!(k.open("fleetward/sigfox_devices/ABC/other", &sealed).is_err());
        // Tampered: refused.
        let mut t = sealed.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(k.open("fleetward/sigfox_devices/ABC/nak", &t).is_err());
        // The plaintext is not in the blob.
        assert!(!sealed.windows(16).any(|w| w == b"sixteen byte key"));
    }

    #[test]
    fn previous_keys_open_until_rotation() {
        let old = Kek::from_hex("old", &"11".repeat(32)).unwrap();
        let sealed = Keyring::new(old).seal("a", b"secret").unwrap();
        let rotated =
            Keyring::new(Kek::generate("new").unwrap()).with_previous(Kek::from_hex("old", &"11".repeat(32)).unwrap());
        assert_eq!(&rotated.open("a", &sealed).unwrap()[..], b"secret");
        let err = ring("other").open("a", &sealed).unwrap_err();
        assert!(err.to_string().contains("`old`"), "{err}");
    }

    #[test]
    fn kek_validation() {
        assert!(Kek::from_hex("k", "00").is_err());
        assert!(Kek::from_hex("", &"00".repeat(32)).is_err());
        assert!(format!("{:?}", Kek::from_hex("k", &"ab".repeat(32)).unwrap()).contains("redacted"));
    }
}
