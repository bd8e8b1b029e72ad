//! Device chain validation: the STSAFE profile, intermediates sent and registered, and one test
//! per way a chain can be wrong — each asserting the exact check and the certificate named.
#![allow(clippy::unwrap_used)]

use fleetward_test_support::{Dn, KeyKind, Spec, TestCa, hex_upper};
use verifier::Timestamp;
use verifier::challenge::DigestMode;
use verifier::x509::{
    ChainError, Crl, IdentityPolicy, IdentitySource, ProvisioningCa, RevocationSource, RevokedSerials, TrustStore,
    certificates_from_pem_or_der,
};

fn now() -> Timestamp {
    Timestamp::from(fleetward_test_support::now())
}

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn store_with(cas: &[&TestCa]) -> TrustStore {
    let mut store = TrustStore::new();
    for ca in cas {
        store.add_ca(ProvisioningCa::from_der(&ca.der).unwrap());
    }
    store
}

const DIE_SERIAL: [u8; 11] = [0x02, 0x09, 0xB0, 0x84, 0x61, 0x59, 0xE4, 0x39, 0x52, 0x01, 0x39];

// --- the STSAFE-A profile -------------------------------------------------------------

#[test]
fn stsafe_profile_device_is_accepted_with_cn_identity() {
    let root = TestCa::stsafe_root("STM STSAFE-A PROD CA 01");
    let device = root.issue_stsafe_device("eval3", &DIE_SERIAL);

    // The fixtures really are the field's shape: v3, the device without any extension,
    // the root with only a critical basicConstraints.
    let dev = x509_fields(&device.der);
    assert_eq!(dev.version, 3);
    assert_eq!(dev.extensions, Vec::<(String, bool)>::new());
    assert_eq!(x509_fields(&root.der).extensions, vec![("2.5.29.19".to_string(), true)]);

    let store = store_with(&[&root]);
    let v = store.verify_device(&device.der, &[], now()).unwrap();
    assert_eq!(v.device_id.as_str(), "eval3-0209B0846159E439520139");
    assert_eq!(
        v.certificate.subject,
        "CN=eval3-0209B0846159E439520139,O=STMicroelectronics,C=FR"
    );
    assert_eq!(v.certificate.serial, hex::encode(DIE_SERIAL));
    assert_eq!(v.certificate.not_after, t("2050-02-09T00:00:00Z"));
    assert_eq!(v.certificate.key, "ECDSA P-256");
    assert!(!v.certificate.is_ca);
    assert_eq!(v.ca.subject, "CN=STM STSAFE-A PROD CA 01,O=STMicroelectronics,C=FR");
    assert!(v.intermediates.is_empty());
    assert_eq!(v.digest_mode, DigestMode::Direct);
    // 30-year validity is fine years into the future too.
    assert!(store.verify_device(&device.der, &[], t("2049-01-01T00:00:00Z")).is_ok());
}

#[test]
fn identity_pattern_strips_the_profile_prefix() {
    let root = TestCa::stsafe_root("STSAFE CA");
    let device = root.issue_stsafe_device("eval3", &DIE_SERIAL);
    let mut store = TrustStore::new();
    let policy = IdentityPolicy::new(IdentitySource::CommonName, Some("eval3-([0-9A-F]+)")).unwrap();
    store.add_ca(ProvisioningCa::from_der(&root.der).unwrap().with_identity(policy));
    let v = store.verify_device(&device.der, &[], now()).unwrap();
    assert_eq!(v.device_id.as_str(), hex_upper(&DIE_SERIAL));

    // A CN the pattern does not fit is refused, naming the device.
    let other = root.issue_stsafe_device("spl2", &DIE_SERIAL);
    let err = store.verify_device(&other.der, &[], now()).unwrap_err();
    assert!(
        matches!(&err, ChainError::IdentityInvalid { subject, reason }
        if subject.contains("spl2-0209") && reason.contains("does not match")),
        "{err:?}"
    );
}

#[test]
fn identity_from_serial_number_attribute_and_spki_hash() {
    let root = TestCa::root(KeyKind::P256, "OEM CA");
    let device = root.issue_device_with(
        KeyKind::P256,
        &[
            (Dn::CommonName, "thermostat"),
            (Dn::CustomDnType(vec![2, 5, 4, 5]), "SN-000123"),
        ],
        &Spec::default(),
    );
    let mut store = TrustStore::new();
    let serial = IdentityPolicy::new(IdentitySource::SerialNumber, None).unwrap();
    store.add_ca(ProvisioningCa::from_der(&root.der).unwrap().with_identity(serial));
    assert_eq!(
        store.verify_device(&device.der, &[], now()).unwrap().device_id.as_str(),
        "SN-000123"
    );

    // serialNumber policy on a certificate without that attribute.
    let plain = root.issue_device(KeyKind::P256, "no-serial");
    let err = store.verify_device(&plain.der, &[], now()).unwrap_err();
    assert!(
        matches!(&err, ChainError::IdentityInvalid { reason, .. } if reason.contains("serialNumber")),
        "{err:?}"
    );

    let mut store = TrustStore::new();
    let spki = IdentityPolicy::new(IdentitySource::SpkiSha256, None).unwrap();
    store.add_ca(ProvisioningCa::from_der(&root.der).unwrap().with_identity(spki));
    let v = store.verify_device(&device.der, &[], now()).unwrap();
    assert_eq!(v.device_id.as_str().len(), 64);
    assert_eq!(v.device_id.as_str(), v.certificate.spki_sha256);
    // Independent computation of the SPKI hash (rcgen's encoding of the key it generated).
    use rcgen::PublicKeyData;
    use sha2::Digest;
    assert_eq!(
        v.device_id.as_str(),
        hex::encode(sha2::Sha256::digest(device.key.subject_public_key_info()))
    );
}

#[test]
fn identity_with_topic_characters_is_refused() {
    let root = TestCa::root(KeyKind::P256, "OEM CA");
    let store = store_with(&[&root]);
    for bad in ["dev/1", "dev+1", "dev#1", "dev 1"] {
        let device = root.issue_device(KeyKind::P256, bad);
        let err = store.verify_device(&device.der, &[], now()).unwrap_err();
        assert!(matches!(&err, ChainError::IdentityInvalid { .. }), "{bad}: {err:?}");
        assert_eq!(err.check(), "identity_invalid");
    }
    let long = root.issue_device(KeyKind::P256, &"x".repeat(129));
    assert!(matches!(
        store.verify_device(&long.der, &[], now()),
        Err(ChainError::IdentityInvalid { .. })
    ));
}

// --- intermediates ------------------------------------------------------------------

#[test]
fn intermediate_sent_by_device() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory 7", None);
    let device = int.issue_device(KeyKind::P256, "dev-1");
    let store = store_with(&[&root]);
    let v = store.verify_device(&device.der, &[&int.der], now()).unwrap();
    assert_eq!(v.device_id.as_str(), "dev-1");
    assert_eq!(v.intermediates.len(), 1);
    assert_eq!(v.intermediates[0].subject, "CN=Factory 7,O=fleetward test");
    assert_eq!(v.ca.subject, "CN=Root,O=fleetward test");

    // Without the intermediate, the device's issuer is unknown — and the error says which.
    let err = store.verify_device(&device.der, &[], now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnknownIssuer {
            subject: "CN=dev-1".into(),
            issuer: "CN=Factory 7,O=fleetward test".into()
        }
    );
}

#[test]
fn intermediate_registered_as_known_intermediate() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory 7", None);
    let device = int.issue_device(KeyKind::P256, "dev-2");
    let mut store = store_with(&[&root]);
    store.add_intermediate(&int.der).unwrap();
    let v = store.verify_device(&device.der, &[], now()).unwrap();
    assert_eq!(v.intermediates.len(), 1);
    assert_eq!(v.ca.subject, "CN=Root,O=fleetward test");
    // A known intermediate alone is not a trust anchor.
    let mut only_int = TrustStore::new();
    only_int.add_intermediate(&int.der).unwrap();
    assert!(matches!(
        only_int.verify_device(&device.der, &[], now()),
        Err(ChainError::UnknownIssuer { .. })
    ));
}

#[test]
fn intermediate_registered_as_provisioning_ca_takes_its_policy() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory 7", None);
    let device = int.issue_device(KeyKind::P256, "line7-dev-3");
    let mut store = store_with(&[&root]);
    let policy = IdentityPolicy::new(IdentitySource::CommonName, Some("line7-(?P<id>.+)")).unwrap();
    store.add_ca(
        ProvisioningCa::from_der(&int.der)
            .unwrap()
            .with_identity(policy)
            .with_digest_mode(DigestMode::Sha256),
    );
    // Even when the device sends the intermediate too, the nearest registered CA wins.
    for presented in [vec![], vec![&int.der[..]]] {
        let v = store.verify_device(&device.der, &presented, now()).unwrap();
        assert_eq!(v.ca.subject, "CN=Factory 7,O=fleetward test");
        assert_eq!(v.device_id.as_str(), "dev-3");
        assert_eq!(v.digest_mode, DigestMode::Sha256);
        assert!(v.intermediates.is_empty());
    }
}

#[test]
fn chains_of_depth_one_to_four() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let store = store_with(&[&root]);
    let mut cas = vec![root];
    for depth in 1..=4usize {
        let issuer = cas.last().unwrap();
        let device = issuer.issue_device(KeyKind::P256, &format!("depth-{depth}"));
        let sent: Vec<&[u8]> = cas[1..].iter().rev().map(|c| &c.der[..]).collect();
        let v = store
            .verify_device(&device.der, &sent, now())
            .unwrap_or_else(|e| panic!("depth {depth}: {e}"));
        assert_eq!(v.intermediates.len(), depth - 1);
        // Sent in any order: path building does not care.
        let shuffled: Vec<&[u8]> = sent.iter().rev().copied().collect();
        assert!(store.verify_device(&device.der, &shuffled, now()).is_ok());
        let next = cas
            .last()
            .unwrap()
            .intermediate(KeyKind::P256, &format!("Sub {depth}"), None);
        cas.push(next);
    }
}

#[test]
fn too_many_presented_intermediates() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let store = store_with(&[&root]);
    let junk: Vec<&[u8]> = vec![&root.der[..]; 9];
    assert!(matches!(
        store.verify_device(&device.der, &junk, now()),
        Err(ChainError::PathTooComplex { .. })
    ));
}

// --- key algorithms -------------------------------------------------------------------

#[test]
fn p384_rsa_and_ed25519_cas() {
    for (kind, key) in [
        (KeyKind::P384, "ECDSA P-384"),
        (KeyKind::Rsa2048, "RSA 2048"),
        (KeyKind::Rsa3072, "RSA 3072"),
        (KeyKind::Ed25519, "Ed25519"),
    ] {
        let root = TestCa::root(kind, "Operator Root");
        let int = root.intermediate(KeyKind::P384, "Operator Issuing", None);
        let device = int.issue_device(KeyKind::P256, "dev-x");
        let store = store_with(&[&root]);
        let v = store
            .verify_device(&device.der, &[&int.der], now())
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(v.ca.key, key);
        assert_eq!(v.intermediates[0].key, "ECDSA P-384");
    }
    // A P-384 device key too.
    let root = TestCa::root(KeyKind::P384, "P-384 root");
    let device = root.issue_device(KeyKind::P384, "dev-384");
    assert_eq!(
        store_with(&[&root])
            .verify_device(&device.der, &[], now())
            .unwrap()
            .certificate
            .key,
        "ECDSA P-384"
    );
}

// --- validity -------------------------------------------------------------------------

#[test]
fn expired_and_not_yet_valid_device() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        not_before: "2020-01-01T00:00:00Z".into(),
        not_after: "2025-01-01T00:00:00Z".into(),
        ..Spec::default()
    };
    let old = root.issue_device_with(KeyKind::P256, &[(Dn::CommonName, "old")], &spec);
    let store = store_with(&[&root]);
    assert_eq!(
        store.verify_device(&old.der, &[], now()).unwrap_err(),
        ChainError::Expired {
            subject: "CN=old".into(),
            not_after: t("2025-01-01T00:00:00Z"),
            now: now()
        }
    );
    let spec = Spec {
        not_before: "2027-01-01T00:00:00Z".into(),
        not_after: "2030-01-01T00:00:00Z".into(),
        ..Spec::default()
    };
    let early = root.issue_device_with(KeyKind::P256, &[(Dn::CommonName, "early")], &spec);
    assert_eq!(
        store.verify_device(&early.der, &[], now()).unwrap_err(),
        ChainError::NotYetValid {
            subject: "CN=early".into(),
            not_before: t("2027-01-01T00:00:00Z"),
            now: now()
        }
    );
}

#[test]
fn expired_intermediate_is_named() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        not_before: "2020-01-01T00:00:00Z".into(),
        not_after: "2026-06-30T00:00:00Z".into(),
        ..Spec::default()
    };
    let int = root.intermediate_with(KeyKind::P256, "Old Factory", None, &spec);
    let device = int.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::Expired {
            subject: "CN=Old Factory,O=fleetward test".into(),
            not_after: t("2026-06-30T00:00:00Z"),
            now: now()
        }
    );
    assert!(err.to_string().contains("Old Factory") && err.to_string().contains("2026-06-30"));
}

// --- issuer and signature ---------------------------------------------------------------

#[test]
fn foreign_ca_is_unknown_issuer() {
    let ours = TestCa::root(KeyKind::P256, "Ours");
    let theirs = TestCa::root(KeyKind::P256, "Theirs");
    let device = theirs.issue_device(KeyKind::P256, "intruder");
    assert_eq!(
        store_with(&[&ours]).verify_device(&device.der, &[], now()).unwrap_err(),
        ChainError::UnknownIssuer {
            subject: "CN=intruder".into(),
            issuer: "CN=Theirs,O=fleetward test".into()
        }
    );
}

#[test]
fn same_name_different_key_is_bad_signature() {
    let ours = TestCa::root(KeyKind::P256, "Acme Devices");
    let impostor = TestCa::root(KeyKind::P256, "Acme Devices");
    let device = impostor.issue_device(KeyKind::P256, "fake");
    let err = store_with(&[&ours]).verify_device(&device.der, &[], now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::BadSignature {
            subject: "CN=fake".into(),
            issuer: "CN=Acme Devices,O=fleetward test".into()
        }
    );
}

#[test]
fn tampered_certificate_is_bad_signature() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev-aaaa");
    let mut der = device.der.clone();
    let at = fleetward_test_support::find(&der, b"dev-aaaa").unwrap();
    der[at + 4] = b'b'; // "dev-baaa": the subject no longer matches what was signed
    let err = store_with(&[&root]).verify_device(&der, &[], now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::BadSignature {
            subject: "CN=dev-baaa".into(),
            issuer: "CN=Root,O=fleetward test".into()
        }
    );
}

#[test]
fn bad_signature_on_the_intermediate_is_named() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let impostor = TestCa::root(KeyKind::P256, "Root");
    let int = impostor.intermediate(KeyKind::P256, "Rogue Factory", None);
    let device = int.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::BadSignature {
            subject: "CN=Rogue Factory,O=fleetward test".into(),
            issuer: "CN=Root,O=fleetward test".into()
        }
    );
}

// --- basicConstraints, pathLen, critical extensions -------------------------------------

#[test]
fn ca_certificate_presented_as_device() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory", None);
    let err = store_with(&[&root]).verify_device(&int.der, &[], now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::CaUsedAsLeaf {
            subject: "CN=Factory,O=fleetward test".into()
        }
    );
}

#[test]
fn device_certificate_used_as_ca() {
    let root = TestCa::stsafe_root("STSAFE CA");
    let device = root.issue_stsafe_device("eval3", &DIE_SERIAL);
    // A cloned device key minting "sub-devices".
    let minted = device.issue_as_if_ca("minted-by-a-device");
    let err = store_with(&[&root])
        .verify_device(&minted.der, &[&device.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::LeafUsedAsCa {
            subject: "CN=eval3-0209B0846159E439520139,O=STMicroelectronics,C=FR".into()
        }
    );
    assert_eq!(err.check(), "leaf_used_as_ca");
}

#[test]
fn path_len_violations() {
    // Root allows no intermediate below it.
    let root = TestCa::root_with(KeyKind::P256, "Strict Root", Some(0), &Spec::default());
    let int = root.intermediate(KeyKind::P256, "Factory", None);
    let device = int.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::PathLenExceeded {
            subject: "CN=Strict Root,O=fleetward test".into(),
            path_len: 0
        }
    );
    // The same root may issue devices directly.
    let direct = root.issue_device(KeyKind::P256, "direct");
    assert!(store_with(&[&root]).verify_device(&direct.der, &[], now()).is_ok());

    // An intermediate with pathLen 0 under which another CA was issued.
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Issuing", Some(0));
    let sub = int.intermediate(KeyKind::P256, "Sub", None);
    let device = sub.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der, &sub.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::PathLenExceeded {
            subject: "CN=Issuing,O=fleetward test".into(),
            path_len: 0
        }
    );
}

#[test]
fn unknown_critical_extension() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        unknown_critical_extension: true,
        ..Spec::default()
    };
    let device = root.issue_device_with(KeyKind::P256, &[(Dn::CommonName, "odd")], &spec);
    let err = store_with(&[&root]).verify_device(&device.der, &[], now()).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnsupportedCriticalExtension {
            subject: "CN=odd".into(),
            oid: "1.3.6.1.4.1.55555.1".into()
        }
    );

    let int = root.intermediate_with(KeyKind::P256, "Odd Factory", None, &spec);
    let device = int.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der], now())
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::UnsupportedCriticalExtension {
            subject: "CN=Odd Factory,O=fleetward test".into(),
            oid: "1.3.6.1.4.1.55555.1".into()
        }
    );
}

// --- revocation ----------------------------------------------------------------------

#[test]
fn revoked_device_by_serial_list() {
    let root = TestCa::stsafe_root("STSAFE CA");
    let device = root.issue_stsafe_device("eval3", &DIE_SERIAL);
    let mut serials = RevokedSerials::new();
    serials.insert_hex("02:09:B0:84:61:59:E4:39:52:01:39").unwrap();
    let mut store = TrustStore::new();
    store.add_ca(
        ProvisioningCa::from_der(&root.der)
            .unwrap()
            .with_revoked_serials(serials),
    );
    assert_eq!(
        store.verify_device(&device.der, &[], now()).unwrap_err(),
        ChainError::Revoked {
            subject: "CN=eval3-0209B0846159E439520139,O=STMicroelectronics,C=FR".into(),
            serial: "0209b0846159e439520139".into(),
            via: RevocationSource::SerialList,
        }
    );
    // Another device of the same CA is unaffected.
    let other = root.issue_stsafe_device("eval3", &[0x02, 0x09, 0x01]);
    assert!(store.verify_device(&other.der, &[], now()).is_ok());
}

#[test]
fn revoked_intermediate_by_serial_list() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        serial: Some(vec![0x77, 0x01]),
        ..Spec::default()
    };
    let int = root.intermediate_with(KeyKind::P256, "Compromised Factory", None, &spec);
    let device = int.issue_device(KeyKind::P256, "dev");
    let mut serials = RevokedSerials::new();
    serials.insert(&[0x77, 0x01]);
    let mut store = TrustStore::new();
    store.add_ca(
        ProvisioningCa::from_der(&root.der)
            .unwrap()
            .with_revoked_serials(serials),
    );
    let err = store.verify_device(&device.der, &[&int.der], now()).unwrap_err();
    assert!(
        matches!(&err, ChainError::Revoked { subject, via: RevocationSource::SerialList, .. }
        if subject.contains("Compromised Factory")),
        "{err:?}"
    );
}

#[test]
fn revoked_device_and_intermediate_by_crl() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate_with(
        KeyKind::P256,
        "Factory",
        None,
        &Spec {
            serial: Some(vec![0x42]),
            ..Spec::default()
        },
    );
    let spec = Spec {
        serial: Some(vec![0x10, 0x01]),
        ..Spec::default()
    };
    let device = int.issue_device_with(KeyKind::P256, &[(Dn::CommonName, "dev-crl")], &spec);
    let good = int.issue_device_with(
        KeyKind::P256,
        &[(Dn::CommonName, "dev-ok")],
        &Spec {
            serial: Some(vec![0x10, 0x02]),
            ..Spec::default()
        },
    );

    // The intermediate's CRL lists the device.
    let mut store = store_with(&[&root]);
    store.add_crl(Crl::from_der(&int.crl(&[&[0x10, 0x01]], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")).unwrap());
    assert_eq!(
        store.verify_device(&device.der, &[&int.der], now()).unwrap_err(),
        ChainError::Revoked {
            subject: "CN=dev-crl".into(),
            serial: "1001".into(),
            via: RevocationSource::Crl
        }
    );
    assert!(store.verify_device(&good.der, &[&int.der], now()).is_ok());

    // The root's CRL lists the intermediate: every device under it falls.
    let mut store = store_with(&[&root]);
    store.add_crl(Crl::from_der(&root.crl(&[&[0x42]], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")).unwrap());
    assert_eq!(
        store.verify_device(&good.der, &[&int.der], now()).unwrap_err(),
        ChainError::Revoked {
            subject: "CN=Factory,O=fleetward test".into(),
            serial: "42".into(),
            via: RevocationSource::Crl
        }
    );
}

#[test]
fn stale_crl_fails_closed() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let mut store = store_with(&[&root]);
    let crl = Crl::from_der(&root.crl(&[], "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")).unwrap();
    assert_eq!(crl.info().next_update, t("2026-02-01T00:00:00Z"));
    store.add_crl(crl);
    assert_eq!(
        store.verify_device(&device.der, &[], now()).unwrap_err(),
        ChainError::CrlExpired {
            issuer: "CN=Root,O=fleetward test".into(),
            next_update: t("2026-02-01T00:00:00Z"),
            now: now()
        }
    );
}

#[test]
fn crl_signed_by_another_key_is_rejected() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let impostor = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let forged = Crl::from_der(&impostor.crl(&[], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")).unwrap();
    assert!(forged.check_issued_by(&root.der).is_err());
    assert!(forged.check_issued_by(&impostor.der).is_ok());
    let mut store = store_with(&[&root]);
    store.add_crl(forged);
    assert_eq!(
        store.verify_device(&device.der, &[], now()).unwrap_err(),
        ChainError::CrlBadSignature {
            issuer: "CN=Root,O=fleetward test".into()
        }
    );
}

#[test]
fn revoked_ca_is_named() {
    let root = TestCa::root(KeyKind::P256, "Retired Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let mut store = store_with(&[&root]);
    assert!(store.verify_device(&device.der, &[], now()).is_ok());
    store.distrust_ca(&root.der).unwrap();
    assert_eq!(store.cas().len(), 0);
    assert_eq!(
        store.verify_device(&device.der, &[], now()).unwrap_err(),
        ChainError::CaRevoked {
            subject: "CN=dev".into(),
            ca: "CN=Retired Root,O=fleetward test".into()
        }
    );
}

// --- store management and inputs -----------------------------------------------------

#[test]
fn ca_added_and_removed_at_run_time() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let mut store = TrustStore::new();
    assert!(store.verify_device(&device.der, &[], now()).is_err());
    let ca = ProvisioningCa::from_der(&root.der).unwrap();
    let fp = ca.fingerprint().to_owned();
    store.add_ca(ca);
    store.add_ca(ProvisioningCa::from_der(&root.der).unwrap()); // re-adding replaces
    assert_eq!(store.cas().len(), 1);
    assert!(store.verify_device(&device.der, &[], now()).is_ok());
    assert!(store.remove_ca(&fp));
    assert!(matches!(
        store.verify_device(&device.der, &[], now()),
        Err(ChainError::UnknownIssuer { .. })
    ));
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let store = store_with(&[&root]);
    for bad in [&b""[..], b"\x30\x03\x02\x01\x01", &device.der[..device.der.len() - 1]] {
        let err = store.verify_device(bad, &[], now()).unwrap_err();
        assert!(
            matches!(&err, ChainError::Malformed { what, .. } if what == "device certificate"),
            "{err:?}"
        );
    }
    let err = store.verify_device(&device.der, &[b"junk"], now()).unwrap_err();
    assert!(
        matches!(&err, ChainError::Malformed { what, .. } if what.starts_with("intermediate certificate #1")),
        "{err:?}"
    );
    assert!(ProvisioningCa::from_der(b"nope").is_err());
}

#[test]
fn pem_and_der_inputs() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory", None);
    let device = int.issue_device(KeyKind::P256, "dev");
    let bundle = format!("{}{}", device.pem(), int.pem());
    let certs = certificates_from_pem_or_der(bundle.as_bytes()).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0].as_ref(), &device.der[..]);
    let der = certificates_from_pem_or_der(&device.der).unwrap();
    assert_eq!(der[0].as_ref(), &device.der[..]);
    assert!(certificates_from_pem_or_der(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
}

#[test]
fn errors_serialize_with_check_tag() {
    let err = ChainError::Expired {
        subject: "CN=x".into(),
        not_after: t("2025-01-01T00:00:00Z"),
        now: now(),
    };
    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json["check"], "expired");
    assert_eq!(json["not_after"], "2025-01-01T00:00:00Z");
    assert_eq!(json["now"], "2026-11-23T12:00:00Z");
    assert_eq!(err.check(), "expired");
}

// --- helpers ---------------------------------------------------------------------------

struct Fields {
    version: u8,
    extensions: Vec<(String, bool)>,
}

/// Reads version and extensions with x509-cert directly (independent of the verifier).
fn x509_fields(der: &[u8]) -> Fields {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    let tbs = cert.tbs_certificate();
    Fields {
        version: tbs.version() as u8 + 1,
        extensions: tbs
            .extensions()
            .map(|exts| exts.iter().map(|e| (e.extn_id.to_string(), e.critical)).collect())
            .unwrap_or_default(),
    }
}

#[test]
fn intermediate_without_key_cert_sign_cannot_issue() {
    // RFC 5280 §4.2.1.3: a CA key whose keyUsage lacks keyCertSign must not sign certificates.
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        ca_key_usages: Some(vec![rcgen::KeyUsagePurpose::DigitalSignature]),
        ..Spec::default()
    };
    let int = root.intermediate_with(KeyKind::P256, "Signing-only Factory", None, &spec);
    let device = int.issue_device(KeyKind::P256, "dev");
    let err = store_with(&[&root])
        .verify_device(&device.der, &[&int.der], now())
        .unwrap_err();
    assert_eq!(err.check(), "issuer_cannot_sign_certificates", "{err:?}");
    assert!(err.to_string().contains("Signing-only Factory"), "{err}");
}

#[test]
fn crl_without_next_update_is_refused() {
    // rcgen, OpenSSL and pyca all insist on nextUpdate, so build a v2 CRL by hand: issuer =
    // the CA's subject, thisUpdate only, signed with the CA key (ECDSA-SHA256).
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let root = TestCa::root(KeyKind::P256, "Root");
    let issuer = {
        use der::{Decode, Encode};
        let cert = x509_cert::Certificate::from_der(&root.der).unwrap();
        cert.tbs_certificate().subject().to_der().unwrap()
    };
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }
    let alg = tlv(0x30, &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
    let tbs = tlv(
        0x30,
        &[&[0x02, 0x01, 0x01][..], &alg, &issuer, &tlv(0x17, b"261101000000Z")].concat(),
    );
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(&root.key.serialize_der()).unwrap();
    let sig: p256::ecdsa::DerSignature = key.sign(&tbs);
    let bits = [&[0u8][..], sig.as_bytes()].concat();
    let crl = tlv(0x30, &[tbs, alg, tlv(0x03, &bits)].concat());
    assert_eq!(
        Crl::from_der(&crl).unwrap_err(),
        verifier::x509::CrlError::NoNextUpdate {
            issuer: "CN=Root,O=fleetward test".into()
        }
    );
}

#[test]
fn shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TrustStore>();
    send_sync::<verifier::challenge::DeviceKey>();
    send_sync::<ChainError>();
}
