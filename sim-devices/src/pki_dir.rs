//! The simulated personalization service's output: a provisioning CA hierarchy and N device
//! identities written as PEM files, usable by `sim-devices run|attack --pki DIR` and by any
//! other client (mosquitto, paho, openssl):
//!
//! ```text
//! DIR/ca.pem                the root: register it with fleetward (`--trust-ca`, or
//! DIR/ca.key                `fleetward ca register --certificate ca.pem --key ca.key`)
//! DIR/intermediate.pem      with --intermediate: the issuing CA under the root, and its key
//! DIR/intermediate.key
//! DIR/devices.txt           the device ids, one per line
//! DIR/devices/<ID>.pem      the device certificate, then its intermediate (a client's --cert)
//! DIR/devices/<ID>.key      the device key, PKCS#8 (a client's --key; the SE's, simulated)
//! ```
//!
//! Keys are written owner-only (0600). An existing PKI is never overwritten.

use crate::pki::{DeviceIdentity, PkiError, ProvisioningCa};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use std::io::Write;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// What to make.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub devices: usize,
    /// Issue the devices from an intermediate CA under the root (root → intermediate → devices).
    pub intermediate: bool,
    /// The STSAFE profile in the devices' CN (`<profile>-<die serial>`).
    pub profile: String,
    /// The root's common name.
    pub ca_name: String,
    /// Devices' certificate validity, in days from now (STSAFE-A: 30 years).
    pub valid_days: i64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            devices: 10,
            intermediate: false,
            profile: "eval3".into(),
            ca_name: "sim-devices provisioning CA".into(),
            valid_days: 365 * 30,
        }
    }
}

/// What can go wrong reading or writing a PKI directory; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PkiDirError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} exists: a PKI is never overwritten (choose another --out, or delete it)")]
    Exists(PathBuf),
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("no randomness for the die serials")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiDirError + '_ {
    move |source| PkiDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiDirError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(path).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

/// Makes the CA hierarchy and `opts.devices` identities in `out`; `progress(done)` is called
/// after each device. Returns the identities.
pub fn init(
    out: &Path,
    opts: &InitOptions,
    now: OffsetDateTime,
    mut progress: impl FnMut(usize),
) -> Result<Vec<DeviceIdentity>, PkiDirError> {
    let ca_path = out.join("ca.pem");
    if ca_path.exists() {
        return Err(PkiDirError::Exists(ca_path));
    }
    let devices_dir = out.join("devices");
    std::fs::create_dir_all(&devices_dir).map_err(io(&devices_dir))?;
    let root = ProvisioningCa::generate(&opts.ca_name, now)?;
    write(&ca_path, &root.pem(), false)?;
    write(&out.join("ca.key"), &root.key_pem(), true)?;
    let issuer = if opts.intermediate {
        let intermediate = root.intermediate(&format!("{} issuing CA 1", opts.ca_name), now)?;
        write(&out.join("intermediate.pem"), &intermediate.pem(), false)?;
        write(&out.join("intermediate.key"), &intermediate.key_pem(), true)?;
        intermediate
    } else {
        root
    };
    // Die serials as STSAFE-A110s carry them (11 bytes): a fixed prefix, a random lot, a
    // counter, so two runs never make the same device ids.
    let mut lot = [0u8; 6];
    aws_lc_rs::rand::fill(&mut lot).map_err(|_| PkiDirError::Random)?;
    let mut ids = String::new();
    let mut identities = Vec::with_capacity(opts.devices);
    for n in 0..opts.devices {
        let mut serial = vec![0x02, 0x09];
        serial.extend_from_slice(&lot);
        serial.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
        let identity = issuer.issue(
            &opts.profile,
            &serial,
            now - time::Duration::days(1),
            now + time::Duration::days(opts.valid_days),
        )?;
        write(
            &devices_dir.join(format!("{}.pem", identity.id)),
            &identity.chain_pem(),
            false,
        )?;
        write(
            &devices_dir.join(format!("{}.key", identity.id)),
            &identity.key_pem(),
            true,
        )?;
        ids.push_str(&identity.id);
        ids.push('\n');
        identities.push(identity);
        progress(n + 1);
    }
    write(&out.join("devices.txt"), &ids, false)?;
    Ok(identities)
}

/// Reads the device identities of a PKI directory made by [`init`] (or laid out the same way).
pub fn load(dir: &Path) -> Result<Vec<DeviceIdentity>, PkiDirError> {
    let list = dir.join("devices.txt");
    let ids = std::fs::read_to_string(&list).map_err(io(&list))?;
    let mut out = Vec::new();
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let cert_path = dir.join("devices").join(format!("{id}.pem"));
        let key_path = dir.join("devices").join(format!("{id}.key"));
        let pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
        let certs = verifier::x509::certificates_from_pem_or_der(&pem).map_err(|e| PkiDirError::Invalid {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
        let (leaf, chain) = certs.split_first().ok_or_else(|| PkiDirError::Invalid {
            path: cert_path.clone(),
            detail: "no certificate".into(),
        })?;
        let key = PrivatePkcs8KeyDer::from_pem_file(&key_path).map_err(|e| PkiDirError::Invalid {
            path: key_path.clone(),
            detail: format!("not a PKCS#8 private key: {e}"),
        })?;
        out.push(DeviceIdentity {
            id: id.to_owned(),
            cert_der: leaf.to_vec(),
            chain_der: chain.iter().map(|c| c.to_vec()).collect(),
            key_der: key.secret_pkcs8_der().to_vec(),
        });
    }
    Ok(out)
}

/// The CA that issues the directory's devices (the intermediate when there is one), when its
/// key is there: attack scenarios use it to make certificates a real factory never would
/// (expired ones) and attackers' own devices.
pub fn load_issuer(dir: &Path) -> Result<Option<ProvisioningCa>, PkiDirError> {
    let (cert, key) = if dir.join("intermediate.pem").exists() {
        (dir.join("intermediate.pem"), dir.join("intermediate.key"))
    } else {
        (dir.join("ca.pem"), dir.join("ca.key"))
    };
    if !key.exists() {
        return Ok(None);
    }
    let cert_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
    let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
    let chain = if cert.ends_with("intermediate.pem") {
        verifier::x509::certificates_from_pem_or_der(cert_pem.as_bytes())
            .map_err(|e| PkiDirError::Invalid {
                path: cert.clone(),
                detail: e.to_string(),
            })?
            .iter()
            .map(|c| c.to_vec())
            .collect()
    } else {
        Vec::new()
    };
    ProvisioningCa::from_pem(&cert_pem, &key_pem, chain)
        .map(Some)
        .map_err(|e| PkiDirError::Invalid {
            path: key,
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("sim-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = InitOptions {
            devices: 3,
            intermediate: true,
            ..InitOptions::default()
        };
        let mut done = 0;
        let made = init(&dir, &opts, OffsetDateTime::now_utc(), |n| done = n).unwrap();
        assert_eq!(done, 3);
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.len(), 3);
        for (a, b) in made.iter().zip(&loaded) {
            assert_eq!(
                (&a.id, &a.cert_der, &a.chain_der, &a.key_der),
                (&b.id, &b.cert_der, &b.chain_der, &b.key_der)
            );
            assert!(a.id.starts_with("eval3-0209"), "{}", a.id);
            assert_eq!(a.chain_der.len(), 1, "the intermediate travels with the device");
        }
        assert_ne!(made[0].id, made[1].id);
        // The loaded issuer makes devices that chain like the others.
        let issuer = load_issuer(&dir).unwrap().unwrap();
        let now = OffsetDateTime::now_utc();
        let extra = issuer
            .issue("eval3", &[0x02, 0x09, 1, 2, 3], now, now + time::Duration::days(1))
            .unwrap();
        assert_eq!(extra.chain_der, made[0].chain_der);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.join("ca.key")), 0o600);
            assert_eq!(mode(dir.join("devices").join(format!("{}.key", made[0].id))), 0o600);
        }
        assert!(matches!(
            init(&dir, &opts, OffsetDateTime::now_utc(), |_| {}),
            Err(PkiDirError::Exists(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
