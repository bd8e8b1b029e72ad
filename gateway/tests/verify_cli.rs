//! `fleetward verify …` end to end: the real binary, files on disk, exit codes, human and JSON
//! output — with certificates and signatures from rcgen *and* from OpenSSL, an independent
//! implementation of both X.509 and ECDSA.
#![allow(clippy::unwrap_used)]

use fleetward_test_support::{KeyKind, Spec, TestCa, pem_encode};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AT: &str = "2026-11-23T12:00:00Z";

fn fleetward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetward"))
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn chain_valid_stsafe_device_human_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::stsafe_root("STM STSAFE-A PROD CA 01");
    let device = root.issue_stsafe_device(
        "eval3",
        &[0x02, 0x09, 0xB0, 0x84, 0x61, 0x59, 0xE4, 0x39, 0x52, 0x01, 0x39],
    );
    let ca = write(dir.path(), "ca.pem", root.pem());
    let dev_der = write(dir.path(), "device.der", &device.der); // DER input too

    let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, &dev_der]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("VALID  device `eval3-0209B0846159E439520139`"),
        "{}",
        stdout(&o)
    );

    let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, "--json", &dev_der]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["device_id"], "eval3-0209B0846159E439520139");
    assert_eq!(v["identity_source"], "common_name");
    assert_eq!(v["certificate"]["serial"], "0209b0846159e439520139");
    assert_eq!(
        v["ca"]["subject"],
        "CN=STM STSAFE-A PROD CA 01,O=STMicroelectronics,C=FR"
    );
    assert_eq!(v["digest_mode"], "direct");
    assert_eq!(v["checked_at"], AT);

    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        &ca,
        "--at",
        AT,
        "--cn-pattern",
        "eval3-(.+)",
        &dev_der,
    ]);
    assert!(stdout(&o).contains("`0209B0846159E439520139`"), "{}", stdout(&o));
}

#[test]
fn chain_refusals_exit_one_and_name_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::root(KeyKind::P256, "Root");
    let int = root.intermediate(KeyKind::P256, "Factory", None);
    let device = int.issue_device(KeyKind::P256, "dev-7");
    let ca = write(dir.path(), "ca.pem", root.pem());
    let int_pem = write(dir.path(), "int.pem", int.pem());
    let dev = write(dir.path(), "dev.pem", device.pem());

    // Intermediate missing: unknown issuer, named.
    let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, &dev]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("REFUSED  [unknown_issuer]") && stdout(&o).contains("CN=Factory"),
        "{}",
        stdout(&o)
    );

    // Given with --intermediate, or in the device file after the leaf: valid.
    assert_eq!(
        fleetward(&[
            "verify",
            "chain",
            "--ca",
            &ca,
            "--intermediate",
            &int_pem,
            "--at",
            AT,
            &dev
        ])
        .status
        .code(),
        Some(0)
    );
    let bundle = write(dir.path(), "bundle.pem", format!("{}{}", device.pem(), int.pem()));
    assert_eq!(
        fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, &bundle])
            .status
            .code(),
        Some(0)
    );

    // In 2035 the device certificate has expired.
    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        &ca,
        "--at",
        "2035-01-01T00:00:00Z",
        "--json",
        &bundle,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["check"], "expired");
    assert_eq!(v["error"]["subject"], "CN=dev-7");
    assert_eq!(v["error"]["not_after"], "2034-01-01T00:00:00Z");

    // Revoked by the intermediate's CRL (PEM) and by a serial on the command line.
    let serial = {
        let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, "--json", &bundle]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["certificate"]["serial"].as_str().unwrap().to_owned()
    };
    let serial_bytes = hex::decode(&serial).unwrap();
    let crl = write(
        dir.path(),
        "int.crl",
        pem_encode(
            "X509 CRL",
            &int.crl(&[&serial_bytes], "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ),
    );
    let o = fleetward(&["verify", "chain", "--ca", &ca, "--crl", &crl, "--at", AT, &bundle]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("[revoked]") && stdout(&o).contains("CRL"),
        "{}",
        stdout(&o)
    );
    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        &ca,
        "--revoked-serial",
        &serial,
        "--at",
        AT,
        &bundle,
    ]);
    assert!(
        stdout(&o).contains("[revoked]") && stdout(&o).contains("revoked-serial list"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn usage_errors_exit_two_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::root(KeyKind::P256, "Root");
    let ca = write(dir.path(), "ca.pem", root.pem());
    let o = fleetward(&["verify", "chain", "--ca", &ca, "/nonexistent/dev.pem"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read /nonexistent/dev.pem"));
    let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", "yesterday", &ca]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("RFC 3339"));
    let o = fleetward(&[
        "verify",
        "challenge",
        "--cert",
        &ca,
        "--challenge",
        "zz",
        "--signature",
        "00",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn challenge_signed_by_rcgen_device() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::root(KeyKind::P256, "Root");
    let device = root.issue_device(KeyKind::P256, "dev");
    let cert = write(dir.path(), "dev.pem", device.pem());
    let challenge = [0x5au8; 32];
    let raw = hex::encode(device.answer_direct(&challenge));
    let c = hex::encode(challenge);
    let o = fleetward(&[
        "verify",
        "challenge",
        "--cert",
        &cert,
        "--challenge",
        &c,
        "--signature",
        &raw,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = fleetward(&[
        "verify",
        "challenge",
        "--cert",
        &cert,
        "--challenge",
        &c,
        "--signature",
        &raw,
        "--digest",
        "sha256",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"], "mismatch");
}

// --- OpenSSL as the independent implementation -------------------------------------------

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// An STSAFE-shaped PKI made by pyca/cryptography (scripts/interop/stsafe_pki.py): a P-256 root
/// with only a critical basicConstraints, and an X.509 v3 device certificate with no extensions.
fn pyca_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/interop/stsafe_pki.py");
    let o = Command::new("python3")
        .args([script, dir.to_str().unwrap(), "0209B0846159E43952014A"])
        .output()
        .expect("python3 must be installed");
    assert!(
        o.status.success(),
        "{script}: {} (pip install -r scripts/interop/requirements.txt)",
        String::from_utf8_lossy(&o.stderr)
    );
    (dir.join("ca.pem"), dir.join("dev.pem"), dir.join("dev.key"))
}

/// A P-256 root made by OpenSSL (for CA registration) and its key.
fn openssl_root(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "10950",
            "-subj",
            "/C=FR/O=STMicroelectronics/CN=OpenSSL STSAFE-like CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectKeyIdentifier=none",
            "-out",
            "ca.pem",
        ],
    );
    dir.join("ca.pem")
}

#[test]
fn independently_made_stsafe_chain_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, dev, _) = pyca_pki(dir.path());
    let text = String::from_utf8(openssl(
        dir.path(),
        &["x509", "-in", dev.to_str().unwrap(), "-noout", "-text"],
    ))
    .unwrap();
    assert!(
        text.contains("Version: 3") && !text.contains("X509v3 extensions"),
        "device must be v3 without extensions:\n{text}"
    );
    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
        dev.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["device_id"], "eval3-0209B0846159E43952014A");
    assert_eq!(v["certificate"]["serial"], "0209b0846159e43952014a");
    assert_eq!(v["certificate"]["not_after"], "2050-02-09T00:00:00Z");
}

#[test]
fn openssl_v1_device_certificate_is_refused() {
    // `openssl x509 -req` without extensions writes an X.509 v1 certificate; STSAFE devices
    // carry v3, and rustls-webpki (rightly) refuses v1.
    let dir = tempfile::tempdir().unwrap();
    let ca = openssl_root(dir.path());
    openssl(
        dir.path(),
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "dev.key"],
    );
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-key",
            "dev.key",
            "-subj",
            "/CN=legacy-v1",
            "-out",
            "dev.csr",
        ],
    );
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "dev.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "7",
            "-days",
            "365",
            "-sha256",
            "-out",
            "dev.pem",
        ],
    );
    let dev = dir.path().join("dev.pem");
    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
        dev.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"], "unsupported_version");
    assert_eq!(v["error"]["subject"], "CN=legacy-v1");
}

#[test]
fn openssl_signatures_in_both_digest_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dev, _) = pyca_pki(dir.path());
    let challenge = [0xA7u8; 32];
    std::fs::write(dir.path().join("challenge.bin"), challenge).unwrap();
    let c = hex::encode(challenge);
    let cert = dev.to_str().unwrap();

    // pkeyutl hands the 32 bytes to ECDSA as the digest itself: what STSELib's SE does.
    let direct = openssl(
        dir.path(),
        &["pkeyutl", "-sign", "-inkey", "dev.key", "-in", "challenge.bin"],
    );
    // dgst -sha256 hashes first: X-CUBE-SAFEA1's host-side hashing.
    let hashed = openssl(dir.path(), &["dgst", "-sha256", "-sign", "dev.key", "challenge.bin"]);

    for (sig, mode, other) in [(&direct, "direct", "sha256"), (&hashed, "sha256", "direct")] {
        let s = hex::encode(sig);
        let o = fleetward(&[
            "verify",
            "challenge",
            "--cert",
            cert,
            "--challenge",
            &c,
            "--signature",
            &s,
            "--digest",
            mode,
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", stdout(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["format"], "der");
        assert_eq!(v["curve"], "P-256");
        let o = fleetward(&[
            "verify",
            "challenge",
            "--cert",
            cert,
            "--challenge",
            &c,
            "--signature",
            &s,
            "--digest",
            other,
        ]);
        assert_eq!(o.status.code(), Some(1), "{mode} signature must not pass as {other}");
        // Tampered challenge.
        let mut t = challenge;
        t[0] ^= 1;
        let o = fleetward(&[
            "verify",
            "challenge",
            "--cert",
            cert,
            "--challenge",
            &hex::encode(t),
            "--signature",
            &s,
            "--digest",
            mode,
        ]);
        assert_eq!(o.status.code(), Some(1));
    }
}

#[test]
fn ca_registration_with_openssl_verification_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = openssl_root(dir.path());
    let code = "4f1c2a9be0d3c6f7a8b9c0d1e2f3a4b5c6d7e8f9";
    openssl(
        dir.path(),
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "v.key"],
    );
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-key",
            "v.key",
            "-subj",
            &format!("/CN={code}"),
            "-out",
            "v.csr",
        ],
    );
    openssl(
        dir.path(),
        &[
            "x509", "-req", "-in", "v.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "30", "-sha256", "-out",
            "v.pem",
        ],
    );
    let v = dir.path().join("v.pem");
    let o = fleetward(&[
        "verify",
        "ca",
        "--ca",
        ca.to_str().unwrap(),
        "--verification-cert",
        v.to_str().unwrap(),
        "--code",
        code,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = fleetward(&[
        "verify",
        "ca",
        "--ca",
        ca.to_str().unwrap(),
        "--verification-cert",
        v.to_str().unwrap(),
        "--code",
        "wrong",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["check"], "code_mismatch");
}

#[test]
fn expired_intermediate_via_cli_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::root(KeyKind::P256, "Root");
    let spec = Spec {
        not_before: "2020-01-01T00:00:00Z".into(),
        not_after: "2026-01-01T00:00:00Z".into(),
        ..Spec::default()
    };
    let int = root.intermediate_with(KeyKind::P256, "Old Factory", None, &spec);
    let dev = int.issue_device(KeyKind::P256, "dev");
    let ca = write(dir.path(), "ca.pem", root.pem());
    let bundle = write(dir.path(), "b.pem", format!("{}{}", dev.pem(), int.pem()));
    let o = fleetward(&["verify", "chain", "--ca", &ca, "--at", AT, &bundle]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("[expired] certificate `CN=Old Factory,O=fleetward test` expired at 2026-01-01T00:00:00Z"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn readme_first_command_verifies_the_real_stsafe_device() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stsafe-a110");
    let o = fleetward(&[
        "verify",
        "chain",
        "--ca",
        &format!("{dir}/stm-stsafe-a-prod-ca-01.pem"),
        &format!("{dir}/eval3-0209B0846159E439520139.pem"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("VALID  device `eval3-0209B0846159E439520139`"));
    assert!(stdout(&o).contains("provisioning CA: CN=STM STSAFE-A PROD CA 01,O=STMicroelectronics nv,C=NL"));
    let o = fleetward(&[
        "verify",
        "challenge",
        "--cert",
        &format!("{dir}/eval3-0209B0846159E439520139.pem"),
        "--challenge",
        "591A3568FDFCCF1B3550BA79E9D17276349EBFC6590DA66E6A1D5825FDC321EE",
        "--signature",
        "4E1E5AA11E8F62AEC287ABECAAF5B8FE512141AD2C6D251B59CFC3251596488F75447BB9A838FB30B1C95E7C092860968C19B4746529F90384E0CD0C1AB14164",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("VALID  P-256 signature (raw, digest mode direct)"));
}

#[test]
fn readme_first_command_works_on_the_sample_pki() {
    let pki = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pki");
    let ca = format!("{pki}/stsafe-root.pem");
    let o = fleetward(&["verify", "chain", "--ca", &ca, &format!("{pki}/device.pem")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("VALID  device `eval3-0209B0846159E439520139`"));
    let o = fleetward(&["verify", "chain", "--ca", &ca, &format!("{pki}/counterfeit-device.pem")]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("[bad_signature]"));
}
