//! The device's side of attestation: what a simulated secure element and its firmware answer
//! to a challenge. The "secure element" only signs: the key never leaves [`DeviceIdentity`].
//!
//! The evidence is fleetward's signed firmware measurement (`docs/attestation.md`): a
//! COSE_Sign1 (ES256, tagged) over the CBOR map {1: nonce, 2: name, 3: version, 4: SHA-256 of
//! the image, 5: boot counter, 6: signer id, 7: device id}.

use crate::pki::DeviceIdentity;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use ciborium::value::Value;
use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};

/// A firmware image a simulated device runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub name: String,
    pub version: String,
    /// SHA-256 of the image.
    pub digest: [u8; 32],
    /// SHA-256 of the public key that signed the image.
    pub signer_id: [u8; 32],
}

impl Firmware {
    /// An image whose bytes are `image` (only its digest is kept).
    pub fn new(name: &str, version: &str, image: &[u8], signer: &[u8]) -> Self {
        let digest = |b: &[u8]| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        Firmware {
            name: name.into(),
            version: version.into(),
            digest: digest(image),
            signer_id: digest(signer),
        }
    }

    /// The demo fleet's good image.
    pub fn demo() -> Self {
        Firmware::new(
            "sensor-fw",
            "1.4.2",
            b"fleetward demo firmware image 1.4.2",
            b"demo firmware signing key",
        )
    }

    /// The same version, with modified bytes (what an attacker flashed).
    pub fn tampered(&self) -> Self {
        Firmware {
            digest: {
                let mut d = self.digest;
                d[0] ^= 0xff;
                d[31] ^= 0x5a;
                d
            },
            ..self.clone()
        }
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    pub fn signer_id_hex(&self) -> String {
        hex::encode(self.signer_id)
    }
}

/// Why the device could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the device key is not a P-256 PKCS#8 key")]
    Key,
    #[error("signing failed")]
    Sign,
    #[error("COSE encoding failed: {0}")]
    Encode(String),
}

/// The signed measurement answering `nonce`.
pub fn measurement(
    identity: &DeviceIdentity,
    firmware: &Firmware,
    nonce: &[u8],
    boot_counter: u64,
) -> Result<Vec<u8>, AttestError> {
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &identity.key_der).map_err(|_| AttestError::Key)?;
    let claims = Value::Map(vec![
        (Value::Integer(1.into()), Value::Bytes(nonce.to_vec())),
        (Value::Integer(2.into()), Value::Text(firmware.name.clone())),
        (Value::Integer(3.into()), Value::Text(firmware.version.clone())),
        (Value::Integer(4.into()), Value::Bytes(firmware.digest.to_vec())),
        (Value::Integer(5.into()), Value::Integer(boot_counter.into())),
        (Value::Integer(6.into()), Value::Bytes(firmware.signer_id.to_vec())),
        (Value::Integer(7.into()), Value::Text(identity.id.clone())),
    ]);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&claims, &mut payload).map_err(|e| AttestError::Encode(e.to_string()))?;
    let rng = SystemRandom::new();
    let mut failed = false;
    let sign1 = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES256).build())
        .payload(payload)
        .create_signature(b"", |tbs| match key.sign(&rng, tbs) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                failed = true;
                Vec::new()
            }
        })
        .build();
    if failed {
        return Err(AttestError::Sign);
    }
    sign1.to_tagged_vec().map_err(|e| AttestError::Encode(e.to_string()))
}

/// The MQTT evidence payload answering a challenge payload (`{"nonce": hex, …}`).
pub fn answer(identity: &DeviceIdentity, firmware: &Firmware, challenge_payload: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let challenge: serde_json::Value = serde_json::from_slice(challenge_payload).ok()?;
    let nonce_hex = challenge.get("nonce")?.as_str()?;
    let nonce = hex::decode(nonce_hex).ok()?;
    let token = measurement(identity, firmware, &nonce, 1).ok()?;
    Some(
        serde_json::json!({
            "nonce": nonce_hex,
            "format": "measurement",
            "token_b64": base64::engine::general_purpose::STANDARD.encode(token),
        })
        .to_string()
        .into_bytes(),
    )
}
