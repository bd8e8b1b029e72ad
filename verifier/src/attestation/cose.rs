//! COSE_Sign1 (RFC 9052) with ECDSA (RFC 9053): structure, algorithm, signature.

use super::{AttestationError, MAX_TOKEN_LEN};
use crate::challenge::{CoseHash, Curve, DeviceKey};
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable, iana};

/// COSE_Sign1's CBOR tag (18) as the first byte of a tagged item.
const TAG_18: u8 = 0xd2;

/// Parses a COSE_Sign1 (tagged or untagged), checks its algorithm against the key, verifies
/// its signature with `key` (empty external AAD), and returns the payload.
pub(crate) fn verify_sign1(token: &[u8], key: &DeviceKey) -> Result<Vec<u8>, AttestationError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AttestationError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let parsed = if token.first() == Some(&TAG_18) {
        CoseSign1::from_tagged_slice(token)
    } else {
        CoseSign1::from_slice(token)
    };
    let sign1 = parsed.map_err(|e| AttestationError::MalformedToken { detail: e.to_string() })?;
    let alg = sign1.protected.header.alg.clone();
    let hash = match (&alg, key.curve()) {
        (Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)), Curve::P256) => CoseHash::Sha256,
        (Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)), Curve::P384) => CoseHash::Sha384,
        (other, curve) => {
            return Err(AttestationError::UnsupportedAlgorithm {
                alg: match other {
                    None => "(none in the protected header)".into(),
                    Some(coset::Algorithm::Assigned(a)) => format!("{a:?}"),
                    Some(coset::Algorithm::PrivateUse(i)) => i.to_string(),
                    Some(coset::Algorithm::Text(t)) => format!("{t:?}"),
                },
                curve,
            });
        }
    };
    if sign1.payload.is_none() {
        return Err(AttestationError::MissingPayload);
    }
    sign1
        .verify_signature(b"", |signature, tbs| key.verify_message_raw(tbs, signature, hash))
        .map_err(|e| AttestationError::bad_signature(&e))?;
    Ok(sign1.payload.unwrap_or_default())
}
