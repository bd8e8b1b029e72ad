//! `sim-devices pki init`: the files a personalization service hands over, checked by an
//! independent X.509 implementation (OpenSSL's `verify`) as well as by ours.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn sim_devices() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sim-devices"))
}

#[test]
fn pki_init_writes_a_hierarchy_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let run = sim_devices()
        .args(["pki", "init", "--devices", "4", "--intermediate", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("fleetward serve --trust-ca"), "{stdout}");
    let ids: Vec<String> = std::fs::read_to_string(out.join("devices.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 4);
    for file in ["ca.pem", "ca.key", "intermediate.pem", "intermediate.key"] {
        assert!(out.join(file).exists(), "{file}");
    }
    // Our verifier: the STSAFE profile (v3, no extensions), CN = the id.
    let identities = sim_devices::pki_dir::load(&out).unwrap();
    for identity in &identities {
        let d = verifier::x509::describe_certificate(&identity.cert_der).unwrap();
        assert!(d.subject.contains(&identity.id), "{}", d.subject);
    }
    // OpenSSL: each device chains to the root through the intermediate it carries.
    let openssl = Command::new("openssl").arg("version").output();
    match openssl {
        Ok(o) if o.status.success() => {
            for id in &ids {
                let v = Command::new("openssl")
                    .arg("verify")
                    .arg("-CAfile")
                    .arg(out.join("ca.pem"))
                    .arg("-untrusted")
                    .arg(out.join("intermediate.pem"))
                    .arg(out.join("devices").join(format!("{id}.pem")))
                    .output()
                    .unwrap();
                assert!(
                    v.status.success(),
                    "{}{}",
                    String::from_utf8_lossy(&v.stdout),
                    String::from_utf8_lossy(&v.stderr)
                );
                // And the key is the certificate's.
                let pubkey = |args: &[&str]| {
                    let o = Command::new("openssl").args(args).output().unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                    o.stdout
                };
                let cert = out.join("devices").join(format!("{id}.pem"));
                let key = out.join("devices").join(format!("{id}.key"));
                assert_eq!(
                    pubkey(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
                    pubkey(&["pkey", "-pubout", "-in", key.to_str().unwrap()])
                );
            }
        }
        _ => assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "openssl missing (apt-get install openssl)"
        ),
    }
    // Never overwritten.
    let again = sim_devices().args(["pki", "init", "--out"]).arg(&out).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
}
