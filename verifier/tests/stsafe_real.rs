//! A real STSAFE-A110: ST's production root, an evaluation device certificate and one
//! challenge/answer pair computed by the chip (examples/stsafe-a110/README.md says where from
//! and how the bytes are authenticated). The decisive known answer for the STSAFE profile and
//! for the `direct` digest mode.
#![allow(clippy::unwrap_used)]

use verifier::Timestamp;
use verifier::challenge::{DeviceKey, DigestMode, SignatureFormat};
use verifier::x509::{
    ChainError, IdentityPolicy, IdentitySource, ProvisioningCa, PublicKeyKind, TrustStore,
    certificates_from_pem_or_der, check_ca_certificate,
};

const CHALLENGE: &str = "591A3568FDFCCF1B3550BA79E9D17276349EBFC6590DA66E6A1D5825FDC321EE";
const ANSWER: &str = "4E1E5AA11E8F62AEC287ABECAAF5B8FE512141AD2C6D251B59CFC3251596488F\
                      75447BB9A838FB30B1C95E7C092860968C19B4746529F90384E0CD0C1AB14164";

fn load(file: &str) -> Vec<u8> {
    let path = format!("{}/../examples/stsafe-a110/{file}", env!("CARGO_MANIFEST_DIR"));
    certificates_from_pem_or_der(&std::fs::read(path).unwrap())
        .unwrap()
        .remove(0)
        .as_ref()
        .to_vec()
}

fn root() -> Vec<u8> {
    load("stm-stsafe-a-prod-ca-01.pem")
}

fn device() -> Vec<u8> {
    load("eval3-0209B0846159E439520139.pem")
}

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

#[test]
fn real_device_chains_to_st_production_ca() {
    let mut store = TrustStore::new();
    store.add_ca(ProvisioningCa::from_der(&root()).unwrap());
    let v = store.verify_device(&device(), &[], t("2026-11-23T12:00:00Z")).unwrap();
    assert_eq!(v.device_id.as_str(), "eval3-0209B0846159E439520139");
    assert_eq!(v.certificate.serial, "0209b0846159e439520139");
    assert_eq!(v.certificate.not_after, t("2051-03-05T00:00:00Z"));
    assert_eq!(v.ca.subject, "CN=STM STSAFE-A PROD CA 01,O=STMicroelectronics nv,C=NL");
    assert_eq!(v.ca.not_after, t("2048-07-27T00:00:00Z"));

    // Thirty years on, the device certificate has expired — and the error says when.
    assert_eq!(
        store
            .verify_device(&device(), &[], t("2051-03-06T00:00:00Z"))
            .unwrap_err(),
        ChainError::Expired {
            subject: "CN=eval3-0209B0846159E439520139,O=STMicroelectronics,C=FR".into(),
            not_after: t("2051-03-05T00:00:00Z"),
            now: t("2051-03-06T00:00:00Z"),
        }
    );
    assert!(matches!(
        store.verify_device(&device(), &[], t("2021-03-04T00:00:00Z")),
        Err(ChainError::NotYetValid { .. })
    ));
}

#[test]
fn real_device_identity_without_profile_prefix() {
    let mut store = TrustStore::new();
    let policy = IdentityPolicy::new(IdentitySource::CommonName, Some("eval3-(?P<id>[0-9A-F]{22})")).unwrap();
    store.add_ca(ProvisioningCa::from_der(&root()).unwrap().with_identity(policy));
    let v = store.verify_device(&device(), &[], t("2026-11-23T12:00:00Z")).unwrap();
    assert_eq!(v.device_id.as_str(), "0209B0846159E439520139");
}

#[test]
fn real_device_refused_by_another_ca() {
    let other = fleetward_test_support::TestCa::stsafe_root("STM STSAFE-A PROD CA 02");
    let mut store = TrustStore::new();
    store.add_ca(ProvisioningCa::from_der(&other.der).unwrap());
    assert!(matches!(
        store.verify_device(&device(), &[], t("2026-11-23T12:00:00Z")),
        Err(ChainError::UnknownIssuer { .. })
    ));
}

#[test]
fn st_production_ca_passes_registration_checks() {
    let reg = check_ca_certificate(&root(), t("2026-11-23T12:00:00Z")).unwrap();
    assert_eq!(reg.key, PublicKeyKind::EcdsaP256);
    assert!(reg.self_signed);
    assert_eq!(reg.path_len, None);
}

const CHALLENGE_2: &str = "817A48E616B74BF4BE4C319B857C07C03CDD2DFB8417DCDA715FC9E09F923079";
const ANSWER_2: &str = "80A9C5ED16903E1D7BEABB1092B30DE2234ACDF7BA07C0599895D0992A502D9A\
                        2A830D9DC6CAECCC5FCEAD2B9DC0EE3C05C2B1C17BD55C1972EB24A7D442D172";

#[test]
fn second_real_chip_and_cross_device_answers() {
    let second = load("eval3-020930C56159E439520139.pem");
    let mut store = TrustStore::new();
    store.add_ca(ProvisioningCa::from_der(&root()).unwrap());
    let v = store.verify_device(&second, &[], t("2026-11-23T12:00:00Z")).unwrap();
    assert_eq!(v.device_id.as_str(), "eval3-020930C56159E439520139");

    let key1 = DeviceKey::from_certificate_der(&device()).unwrap();
    let key2 = DeviceKey::from_certificate_der(&second).unwrap();
    let (c1, a1) = (hex::decode(CHALLENGE).unwrap(), hex::decode(ANSWER).unwrap());
    let (c2, a2) = (hex::decode(CHALLENGE_2).unwrap(), hex::decode(ANSWER_2).unwrap());
    assert!(
        key2.verify_challenge(&c2, &a2, SignatureFormat::Raw, DigestMode::Direct)
            .is_ok()
    );
    // One chip's answer never authenticates the other chip.
    assert!(
        key1.verify_challenge(&c2, &a2, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );
    assert!(
        key2.verify_challenge(&c1, &a1, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );
    // Nor answers a different challenge.
    assert!(
        key2.verify_challenge(&c1, &a2, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );
}

#[test]
fn real_chip_answer_verifies_in_direct_mode_only() {
    let key = DeviceKey::from_certificate_der(&device()).unwrap();
    let challenge = hex::decode(CHALLENGE).unwrap();
    let answer = hex::decode(ANSWER).unwrap();
    // STSELib hands the 32-byte challenge to the SE as the digest: `direct`.
    assert_eq!(
        key.verify_challenge(&challenge, &answer, SignatureFormat::Raw, DigestMode::Direct),
        Ok(SignatureFormat::Raw)
    );
    assert_eq!(
        key.verify_challenge(&challenge, &answer, SignatureFormat::Auto, DigestMode::Direct),
        Ok(SignatureFormat::Raw)
    );
    // The same bytes as DER.
    let der = p256::ecdsa::Signature::from_slice(&answer).unwrap().to_der();
    assert!(
        key.verify_challenge(&challenge, der.as_bytes(), SignatureFormat::Der, DigestMode::Direct)
            .is_ok()
    );
    // Not a SHA-256-of-challenge signature; not valid for any other challenge.
    assert!(
        key.verify_challenge(&challenge, &answer, SignatureFormat::Raw, DigestMode::Sha256)
            .is_err()
    );
    let mut other = challenge.clone();
    other[31] ^= 1;
    assert!(
        key.verify_challenge(&other, &answer, SignatureFormat::Raw, DigestMode::Direct)
            .is_err()
    );
}
