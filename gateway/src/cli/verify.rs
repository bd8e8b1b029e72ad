//! `fleetward verify chain | challenge | ca`: the operator's offline tools. They call the same
//! `verifier` code the server runs, so "does this device get in?" can be answered before it
//! connects, on any machine, from files.

use super::Outcome;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use verifier::Timestamp;
use verifier::challenge::{DeviceKey, DigestMode, SignatureFormat};
use verifier::x509::{
    CertInfo, Crl, IdentityPolicy, IdentitySource, ProvisioningCa, RegistrationCode, RevokedSerials, TrustStore,
    certificates_from_pem_or_der, check_ca_registration, crls_from_pem_or_der,
};

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Validate a device certificate chain against provisioning CAs; print the device identity
    /// or the precise reason it is refused. Exit 0 = valid, 1 = refused, 2 = could not run.
    Chain(ChainArgs),
    /// Verify a secure element's signature over a challenge with the device certificate's key.
    Challenge(ChallengeArgs),
    /// Check a CA for registration: CA rules, key quality and proof of possession.
    Ca(RegistrationArgs),
}

#[derive(Debug, Args)]
pub struct ChainArgs {
    /// Provisioning CA certificate(s), PEM or DER; a PEM file may hold several. Repeatable.
    #[arg(long = "ca", value_name = "CA.pem", required = true)]
    pub cas: Vec<PathBuf>,
    /// Intermediate certificate(s) the device sends along, PEM or DER. Repeatable.
    #[arg(long = "intermediate", value_name = "I.pem")]
    pub intermediates: Vec<PathBuf>,
    /// CRL(s), PEM or DER, checked for signature, issuer and nextUpdate. Repeatable.
    #[arg(long = "crl", value_name = "C.crl")]
    pub crls: Vec<PathBuf>,
    /// Revoked serial number (hex) under the CAs given. Repeatable.
    #[arg(long = "revoked-serial", value_name = "HEX")]
    pub revoked_serials: Vec<String>,
    /// Validate at this instant instead of now (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Where the device id comes from: cn, serial-number or spki-sha256.
    #[arg(long, default_value = "cn", value_name = "SOURCE")]
    pub identity: String,
    /// Regex the identity attribute must match whole; its group `id` (or only group) is the id.
    #[arg(long, value_name = "REGEX")]
    pub cn_pattern: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// The device certificate, PEM or DER. A PEM file may carry the chain after it.
    #[arg(value_name = "DEVICE.pem")]
    pub device: PathBuf,
}

#[derive(Debug, Args)]
pub struct ChallengeArgs {
    /// The device certificate (PEM or DER) whose key signed.
    #[arg(long, value_name = "DEVICE.pem")]
    pub cert: PathBuf,
    /// The challenge, hex (32 bytes for a fleetward nonce).
    #[arg(long, value_name = "HEX")]
    pub challenge: String,
    /// The signature, hex: raw r‖s (what the SE returns) or DER.
    #[arg(long, value_name = "HEX")]
    pub signature: String,
    /// What the SE signed: `direct` (the challenge is the digest, STSELib) or `sha256`/`sha384`
    /// (the host hashed the challenge first, X-CUBE-SAFEA1).
    #[arg(long, default_value = "direct", value_name = "MODE")]
    pub digest: String,
    /// Signature encoding: auto, raw or der.
    #[arg(long, default_value = "auto", value_name = "FORMAT")]
    pub format: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RegistrationArgs {
    /// The CA certificate to register, PEM or DER.
    #[arg(long = "ca", value_name = "CA.pem")]
    pub ca: PathBuf,
    /// The verification certificate: CN = the registration code, signed by the CA key.
    #[arg(long = "verification-cert", value_name = "V.pem")]
    pub verification_cert: PathBuf,
    /// The registration code the server issued.
    #[arg(long, value_name = "CODE")]
    pub code: String,
    /// Check at this instant instead of now (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(cmd: VerifyCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        VerifyCommand::Chain(args) => chain(args, out),
        VerifyCommand::Challenge(args) => challenge(args, out),
        VerifyCommand::Ca(args) => registration(args, out),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = read(path)?;
    let certs = certificates_from_pem_or_der(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

#[allow(
    clippy::disallowed_methods,
    reason = "a binary may read the clock; the verifier may not"
)]
fn instant(at: Option<&str>) -> Result<Timestamp> {
    match at {
        Some(s) => Timestamp::parse_rfc3339(s)
            .with_context(|| format!("--at {s:?} is not RFC 3339 (e.g. 2030-01-01T00:00:00Z)")),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock is before 1970")?
                .as_secs();
            Ok(Timestamp::from_unix(i64::try_from(secs).unwrap_or(i64::MAX)))
        }
    }
}

fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>> {
    let cleaned: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&cleaned).with_context(|| format!("--{what} is not hex"))
}

fn chain(args: ChainArgs, out: &mut dyn Write) -> Result<Outcome> {
    let now = instant(args.at.as_deref())?;
    let Some(source) = IdentitySource::parse(&args.identity) else {
        bail!("--identity {:?}: use cn, serial-number or spki-sha256", args.identity);
    };
    let policy = IdentityPolicy::new(source, args.cn_pattern.as_deref()).context("--cn-pattern")?;
    let mut serials = RevokedSerials::new();
    for s in &args.revoked_serials {
        serials
            .insert_hex(s)
            .with_context(|| format!("--revoked-serial {s:?} is not hex"))?;
    }

    let mut store = TrustStore::new();
    for path in &args.cas {
        for der in read_certificates(path)? {
            let ca = ProvisioningCa::from_der(&der).with_context(|| format!("--ca {}", path.display()))?;
            store.add_ca(ca.with_identity(policy.clone()).with_revoked_serials(serials.clone()));
        }
    }
    for path in &args.crls {
        for der in crls_from_pem_or_der(&read(path)?).with_context(|| format!("--crl {}", path.display()))? {
            store.add_crl(Crl::from_der(der.as_ref()).with_context(|| format!("--crl {}", path.display()))?);
        }
    }
    let mut device_chain = read_certificates(&args.device)?;
    let leaf = device_chain.remove(0);
    for path in &args.intermediates {
        device_chain.extend(read_certificates(path)?);
    }
    let presented: Vec<&[u8]> = device_chain.iter().map(Vec::as_slice).collect();

    match store.verify_device(&leaf, &presented, now) {
        Ok(device) => {
            if args.json {
                let mut v = serde_json::to_value(&device)?;
                v["valid"] = json!(true);
                v["checked_at"] = json!(now);
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "VALID  device `{}` (identity from {})",
                    device.device_id,
                    source_name(device.identity_source)
                )?;
                print_cert(out, "device", &device.certificate)?;
                for i in &device.intermediates {
                    print_cert(out, "intermediate", i)?;
                }
                print_cert(out, "provisioning CA", &device.ca)?;
                writeln!(out, "  challenge digest mode: {}", device.digest_mode.as_str())?;
                writeln!(out, "  checked at {now}")?;
            }
            Ok(Outcome::Valid)
        }
        Err(e) => refused(out, args.json, e.check(), &e, chain_hint(e.check())),
    }
}

/// Reports a refusal: `REFUSED  [check] message` (+ a next step), or with `--json`
/// `{"valid": false, "check", "message", "error"}`. Exit status 1.
fn refused<E>(out: &mut dyn Write, json: bool, check: &str, e: &E, hint: Option<&str>) -> Result<Outcome>
where
    E: std::fmt::Display + serde::Serialize,
{
    if json {
        let v = json!({ "valid": false, "check": check, "message": e.to_string(), "error": e });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "REFUSED  [{check}] {e}")?;
        if let Some(hint) = hint {
            writeln!(out, "  next: {hint}")?;
        }
    }
    Ok(Outcome::Rejected)
}

/// What an operator can do about a refusal (the server will say the same in its events).
fn chain_hint(check: &str) -> Option<&'static str> {
    Some(match check {
        "unknown_issuer" => {
            "register the device's provisioning CA (--ca), or supply the missing intermediate \
             (--intermediate, or append it to the device PEM)"
        }
        "bad_signature" => {
            "the certificate was not signed by the CA it names: a counterfeit, or the wrong CA \
             file was given for that name"
        }
        "expired" | "not_yet_valid" => {
            "check the validity dates above (and the clock of whoever checks: --at tests another instant)"
        }
        "crl_expired" => "fetch a current CRL from the CA (its nextUpdate has passed)",
        "identity_invalid" => "choose another identity source (--identity) or pattern (--cn-pattern) for this CA",
        "unsupported_version" => "devices need X.509 v3 certificates; reissue this one as v3",
        _ => return None,
    })
}

fn source_name(s: IdentitySource) -> &'static str {
    match s {
        IdentitySource::CommonName => "subject CN",
        IdentitySource::SerialNumber => "subject serialNumber",
        IdentitySource::SpkiSha256 => "SHA-256 of the public key",
    }
}

fn print_cert(out: &mut dyn Write, role: &str, c: &CertInfo) -> std::io::Result<()> {
    writeln!(out, "  {role}: {}", c.subject)?;
    writeln!(
        out,
        "      serial {}  {}  valid {} .. {}",
        c.serial, c.key, c.not_before, c.not_after
    )?;
    writeln!(out, "      sha256 {}", c.sha256)
}

fn challenge(args: ChallengeArgs, out: &mut dyn Write) -> Result<Outcome> {
    let Some(mode) = DigestMode::parse(&args.digest) else {
        bail!("--digest {:?}: use direct, sha256 or sha384", args.digest);
    };
    let Some(format) = SignatureFormat::parse(&args.format) else {
        bail!("--format {:?}: use auto, raw or der", args.format);
    };
    let challenge = parse_hex("challenge", &args.challenge)?;
    let signature = parse_hex("signature", &args.signature)?;
    let cert = read_certificates(&args.cert)?.remove(0);
    let verdict = DeviceKey::from_certificate_der(&cert).and_then(|key| {
        key.verify_challenge(&challenge, &signature, format, mode)
            .map(|used| (key.curve(), used))
    });
    match verdict {
        Ok((curve, used)) => {
            if args.json {
                let v = json!({ "valid": true, "curve": curve, "format": used, "digest": mode });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "VALID  {curve} signature ({}, digest mode {}) by the key of the certificate",
                    used.as_str(),
                    mode.as_str()
                )?;
            }
            Ok(Outcome::Valid)
        }
        Err(e) => refused(out, args.json, e.check(), &e, None),
    }
}

fn registration(args: RegistrationArgs, out: &mut dyn Write) -> Result<Outcome> {
    let now = instant(args.at.as_deref())?;
    let ca = read_certificates(&args.ca)?.remove(0);
    let proof = read_certificates(&args.verification_cert)?.remove(0);
    match check_ca_registration(&ca, &proof, &RegistrationCode::from_issued(&args.code), now) {
        Ok(reg) => {
            if args.json {
                let mut v = serde_json::to_value(&reg)?;
                v["valid"] = json!(true);
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "VALID  CA `{}` may be registered ({}, {})",
                    reg.ca.subject,
                    reg.key,
                    if reg.self_signed {
                        "self-signed root"
                    } else {
                        "intermediate"
                    }
                )?;
                writeln!(out, "  sha256 {}", reg.ca.sha256)?;
            }
            Ok(Outcome::Valid)
        }
        Err(e) => refused(out, args.json, e.check(), &e, None),
    }
}
