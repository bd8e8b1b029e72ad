//! CA registration: proof of possession through a verification certificate, CA checks and
//! key quality.
#![allow(clippy::unwrap_used)]

use fleetward_test_support::{
    KeyKind, P192_CA_PEM, RSA1024_CA_PEM, Spec, TestCa, ca_with_off_curve_point, now as test_now,
};
use verifier::Timestamp;
use verifier::x509::{
    KeyError, PublicKeyKind, RegistrationCode, RegistrationError, certificates_from_pem_or_der, check_ca_certificate,
    check_ca_registration,
};

fn now() -> Timestamp {
    Timestamp::from(test_now())
}

fn code() -> RegistrationCode {
    RegistrationCode::from_random([0x5a; 20])
}

#[test]
fn proof_of_possession_accepts_the_owner() {
    for (ca, key) in [
        (TestCa::stsafe_root("STSAFE CA"), PublicKeyKind::EcdsaP256),
        (TestCa::root(KeyKind::P384, "P-384 root"), PublicKeyKind::EcdsaP384),
        (
            TestCa::root(KeyKind::Rsa2048, "RSA root"),
            PublicKeyKind::Rsa { bits: 2048 },
        ),
        (TestCa::root(KeyKind::Ed25519, "Ed root"), PublicKeyKind::Ed25519),
    ] {
        let proof = ca.verification_certificate(code().as_str());
        let reg = check_ca_registration(&ca.der, &proof, &code(), now()).unwrap();
        assert_eq!(reg.key, key);
        assert!(reg.self_signed);
    }
    // An intermediate can be registered too (it is not self-signed).
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory", Some(0));
    let reg = check_ca_registration(&int.der, &int.verification_certificate(code().as_str()), &code(), now()).unwrap();
    assert!(!reg.self_signed);
    assert_eq!(reg.path_len, Some(0));
}

#[test]
fn code_must_match() {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let proof = ca.verification_certificate("0000000000000000000000000000000000000000");
    assert_eq!(
        check_ca_registration(&ca.der, &proof, &code(), now()),
        Err(RegistrationError::CodeMismatch)
    );
    assert_eq!(RegistrationError::CodeMismatch.check(), "code_mismatch");
    // The code never shows in Debug output.
    assert!(!format!("{:?}", code()).contains(code().as_str()));
}

#[test]
fn proof_signed_by_another_key_is_refused() {
    let ca = TestCa::root(KeyKind::P256, "Acme Root");
    let thief = TestCa::root(KeyKind::P256, "Acme Root"); // same name, not the key
    let proof = thief.verification_certificate(code().as_str());
    let err = check_ca_registration(&ca.der, &proof, &code(), now()).unwrap_err();
    assert!(
        matches!(&err, RegistrationError::VerificationBadSignature { ca, .. } if ca == "CN=Acme Root,O=fleetward test"),
        "{err:?}"
    );

    let other = TestCa::root(KeyKind::P256, "Other Root");
    let err = check_ca_registration(
        &ca.der,
        &other.verification_certificate(code().as_str()),
        &code(),
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, RegistrationError::VerificationNotIssuedByCa { .. }),
        "{err:?}"
    );
}

#[test]
fn must_be_a_ca() {
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "not-a-ca");
    assert_eq!(
        check_ca_certificate(&device.der, now()),
        Err(RegistrationError::NotACa {
            subject: "CN=not-a-ca".into()
        })
    );
}

#[test]
fn must_be_currently_valid() {
    let spec = Spec {
        not_before: "2010-01-01T00:00:00Z".into(),
        not_after: "2020-01-01T00:00:00Z".into(),
        ..Spec::default()
    };
    let old = TestCa::root_with(KeyKind::P256, "Old Root", None, &spec);
    let err = check_ca_certificate(&old.der, now()).unwrap_err();
    assert!(matches!(err, RegistrationError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("2020-01-01T00:00:00Z"));
    let spec = Spec {
        not_before: "2030-01-01T00:00:00Z".into(),
        not_after: "2040-01-01T00:00:00Z".into(),
        ..Spec::default()
    };
    let future = TestCa::root_with(KeyKind::P256, "Future Root", None, &spec);
    assert!(matches!(
        check_ca_certificate(&future.der, now()),
        Err(RegistrationError::NotYetValid { .. })
    ));
}

#[test]
fn weak_rsa_key_is_refused() {
    let der = certificates_from_pem_or_der(RSA1024_CA_PEM.as_bytes())
        .unwrap()
        .remove(0);
    let err = check_ca_certificate(&der, now()).unwrap_err();
    assert_eq!(
        err,
        RegistrationError::WeakKey {
            subject: "CN=weak RSA-1024 CA,O=fleetward test".into(),
            problem: KeyError::RsaTooSmall { bits: 1024, min: 2048 },
        }
    );
}

#[test]
fn unsupported_curve_is_refused() {
    let der = certificates_from_pem_or_der(P192_CA_PEM.as_bytes()).unwrap().remove(0);
    let err = check_ca_certificate(&der, now()).unwrap_err();
    assert!(
        matches!(&err, RegistrationError::WeakKey { problem: KeyError::UnsupportedCurve { curve }, .. } if curve.starts_with("P-192")),
        "{err:?}"
    );
}

#[test]
fn off_curve_point_is_refused_before_any_signature_check() {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let der = ca_with_off_curve_point(&ca);
    let err = check_ca_certificate(&der, now()).unwrap_err();
    assert!(
        matches!(
            err,
            RegistrationError::WeakKey {
                problem: KeyError::InvalidPoint { curve: "P-256" },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn self_signature_must_verify() {
    let ca = TestCa::root(KeyKind::P256, "Root");
    let mut der = ca.der.clone();
    let last = der.len() - 1;
    der[last] ^= 0x01; // damage the signature's last byte
    let err = check_ca_certificate(&der, now()).unwrap_err();
    assert!(matches!(err, RegistrationError::BadSelfSignature { .. }), "{err:?}");
}

#[test]
fn garbage_is_malformed() {
    let ca = TestCa::root(KeyKind::P256, "Root");
    assert!(matches!(
        check_ca_certificate(b"junk", now()),
        Err(RegistrationError::Malformed {
            what: "CA certificate",
            ..
        })
    ));
    assert!(matches!(
        check_ca_registration(&ca.der, b"junk", &code(), now()),
        Err(RegistrationError::Malformed {
            what: "verification certificate",
            ..
        })
    ));
}

#[test]
fn ca_key_usage_must_allow_certificate_signing() {
    use rcgen::KeyUsagePurpose;
    let spec = Spec {
        ca_key_usages: Some(vec![KeyUsagePurpose::DigitalSignature]),
        ..Spec::default()
    };
    let ca = TestCa::root_with(KeyKind::P256, "Signing-only", None, &spec);
    assert_eq!(
        check_ca_certificate(&ca.der, now()),
        Err(RegistrationError::CannotSignCertificates {
            subject: "CN=Signing-only,O=fleetward test".into()
        })
    );
}
