//! Operator commands (`ca`, `device`, `audit`) against the HTTP API, like kubectl against
//! its API server; and `token create`, which works offline against the registry (for
//! automation and for when the first-start token is lost).

use super::Outcome;
use super::db::{DbArgs, runtime};
use crate::api::model::{
    AttestSent, Audit, Ca, CaList, CaRevoked, CrlAccepted, Device, DeviceDetail, DeviceList, ErrorBody, Firmware,
    FirmwareList, FirmwareStatus, NewFirmware, RegistrationCode,
};
use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use registry::{Registry, Role};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::PathBuf;

/// Where the API is and who is calling it.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The fleetward HTTP address.
    #[arg(
        long,
        env = "FLEETWARD_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// API token (`fleetward token create`, or the one printed at first start).
    #[arg(long, env = "FLEETWARD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Extra CA certificate (PEM) to trust for an HTTPS API endpoint.
    #[arg(long, env = "FLEETWARD_API_CA", value_name = "PEM")]
    pub api_ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token directly in the registry (offline); prints only the token.
    Create {
        /// admin, operator or viewer.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// What the token is for.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Register a provisioning CA, proving possession of its key.
    Add {
        /// The CA certificate (PEM).
        #[arg(long, value_name = "PEM")]
        certificate: PathBuf,
        /// A verification certificate: signed by the CA key, subject CN = the registration code
        /// (`fleetward ca registration-code`). Not needed with --ca-key.
        #[arg(long, value_name = "PEM", required_unless_present = "ca_key")]
        verification_certificate: Option<PathBuf>,
        /// The CA's private key (PEM): the verification certificate is made here, locally; the
        /// key is never sent.
        #[arg(long, value_name = "PEM", conflicts_with = "verification_certificate")]
        ca_key: Option<PathBuf>,
        /// Which certificate field names a device: cn, serial-number or spki-sha256.
        #[arg(long, default_value = "cn")]
        identity: String,
        /// A regular expression every device id must match.
        #[arg(long, value_name = "REGEX")]
        identity_pattern: Option<String>,
        /// Challenge-response digest mode: direct, sha256 or sha384.
        #[arg(long, default_value = "direct")]
        digest_mode: String,
        /// New devices start `pending` (awaiting `fleetward device activate`) instead of `active`.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the registration code a verification certificate must carry as its CN.
    RegistrationCode {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List provisioning CAs.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a CA and every device under it.
    Revoke {
        /// The CA id.
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Upload a CRL the CA issued.
    Crl {
        /// The CA id.
        id: String,
        /// The CRL (PEM).
        #[arg(long, value_name = "PEM")]
        crl: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices (filters combine with AND).
    List {
        #[arg(long)]
        status: Option<String>,
        /// CA id.
        #[arg(long)]
        ca: Option<String>,
        #[arg(long)]
        firmware: Option<String>,
        #[arg(long)]
        integrity: Option<String>,
        /// key=value
        #[arg(long)]
        label: Option<String>,
        /// RFC 3339 time or a duration ago (24h, 7d).
        #[arg(long)]
        seen_since: Option<String>,
        /// Device id prefix.
        #[arg(long)]
        q: Option<String>,
        /// At most this many devices (pages are followed).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a device: status, certificate chain, labels, recent events.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Activate a pending or quarantined device.
    Activate {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Quarantine a device (it may connect only to attest).
    Quarantine {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a device (terminal).
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Challenge a connected device now (over its MQTT attestation topic).
    Attest {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Add a firmware reference value (an allowed image, or with --blocked a blocked one).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The image digest (the measurement value), hex.
        #[arg(long, value_name = "HEX")]
        digest: String,
        /// Hash of the image-signing key, hex (evidence must then name this signer).
        #[arg(long, value_name = "HEX")]
        signer_id: Option<String>,
        /// Block this image instead of allowing it.
        #[arg(long)]
        blocked: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List firmware reference values (with how many devices run each).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn show_firmware(f: &Firmware, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:<20} {:<12} {:<8} {:>7}  {}{}",
        f.name,
        f.version,
        match f.status {
            FirmwareStatus::Allowed => "allowed",
            FirmwareStatus::Blocked => "blocked",
        },
        f.devices,
        f.digest_hex,
        f.signer_id_hex
            .as_deref()
            .map(|s| format!(" signer {s}"))
            .unwrap_or_default()
    )?;
    Ok(())
}

pub(super) fn firmware(cmd: FirmwareCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        FirmwareCommand::Add {
            name,
            version,
            digest,
            signer_id,
            blocked,
            api,
        } => {
            let body = NewFirmware {
                name,
                version,
                digest_hex: digest,
                signer_id_hex: signer_id,
                status: if blocked {
                    FirmwareStatus::Blocked
                } else {
                    FirmwareStatus::Allowed
                },
            };
            run_api(
                &api,
                out,
                async move |c: &Client| c.call::<Firmware>(Method::POST, "/api/v1/firmware", Some(&body)).await,
                show_firmware,
            )
        }
        FirmwareCommand::List { api } => run_api(
            &api,
            out,
            async move |c: &Client| {
                c.call::<FirmwareList>(Method::GET, "/api/v1/firmware", None::<&()>)
                    .await
            },
            |l, out| {
                writeln!(
                    out,
                    "{:<20} {:<12} {:<8} {:>7}  digest",
                    "name", "version", "status", "devices"
                )?;
                for f in &l.items {
                    show_firmware(f, out)?;
                }
                Ok(())
            },
        ),
    }
}

/// Flags of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Report active devices silent for this many days.
    #[arg(long, default_value_t = 7)]
    pub silent_days: u32,
    /// Report certificates expiring within this many days.
    #[arg(long, default_value_t = 30)]
    pub expiry_days: u32,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub(super) fn token(cmd: TokenCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        TokenCommand::Create { role, description, db } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow!("--role must be admin, operator or viewer"))?;
            let url = db.url()?;
            let secret = runtime()?.block_on(async {
                let registry = Registry::connect(&url, None)
                    .await
                    .context("cannot open the registry (check --data-dir / --database-url)")?;
                registry.migrate().await.context("cannot migrate the registry")?;
                let t = registry
                    .create_token(role, description.as_deref(), "cli", crate::clock::now_ms())
                    .await?;
                registry.close().await;
                anyhow::Ok(t.secret)
            })?;
            // Only the token, so that `TOKEN=$(fleetward token create …)` works.
            writeln!(out, "{}", secret.as_str())?;
            Ok(Outcome::Valid)
        }
    }
}

/// An API call failed: the server's error, or why it could not be reached.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// What went wrong talking to the API, and what to do about it.
enum CallError {
    Api(reqwest::StatusCode, ErrorBody),
    Other(anyhow::Error),
}

impl Client {
    fn new(api: &ApiArgs) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(path) = &api.api_ca {
            let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Client {
            http: builder.build()?,
            base: api.server.trim_end_matches('/').to_owned(),
            token: api.token.clone(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let response = req.send().await.map_err(|e| {
            CallError::Other(anyhow!(
                "cannot reach fleetward at {}: {e}\n  is `fleetward serve` running there? (set --server or FLEETWARD_SERVER)",
                self.base
            ))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Other(anyhow!("reading the response: {e}")))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            return serde_json::from_slice(bytes)
                .map_err(|e| CallError::Other(anyhow!("unexpected response from {url}: {e}")));
        }
        let error = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            error: status.as_str().into(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
            check: None,
        });
        Err(CallError::Api(status, error))
    }
}

/// Runs an API operation and reports its failure the way an operator can act on.
fn run_api<T>(
    api: &ApiArgs,
    out: &mut dyn Write,
    f: impl AsyncFnOnce(&Client) -> Result<T, CallError>,
    show: impl FnOnce(&T, &mut dyn Write) -> Result<()>,
) -> Result<Outcome>
where
    T: Serialize,
{
    let client = Client::new(api)?;
    let result = runtime()?.block_on(f(&client));
    match result {
        Ok(value) => {
            match api.output {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?,
                Format::Table => show(&value, out)?,
            }
            Ok(Outcome::Valid)
        }
        Err(CallError::Other(e)) => Err(e),
        Err(CallError::Api(status, e)) => {
            let hint = match status.as_u16() {
                401 => {
                    "\n  pass a token with --token or FLEETWARD_TOKEN (fleetward token create --role operator --data-dir DIR)"
                }
                403 => "\n  this needs a token with a stronger role",
                _ => "",
            };
            let check = e.check.map(|c| format!(" [check: {c}]")).unwrap_or_default();
            Err(anyhow!("{} {}: {}{check}{hint}", status.as_u16(), e.error, e.message))
        }
    }
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A verification certificate for `code`, signed locally with the CA's key.
fn make_verification_certificate(ca_pem: &str, key_pem: &str, code: &str) -> Result<String> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("--ca-key is not a PEM private key rcgen can use")?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, &key).context("--certificate is not a PEM CA certificate")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, code);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(params.signed_by(&leaf_key, &issuer)?.pem())
}

fn ca_line(c: &Ca, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<8} {:>8} {:<24} {}",
        &c.id[..c.id.len().min(16)],
        c.status,
        c.device_count,
        &c.not_after[..c.not_after.len().min(10)],
        c.subject
    )?;
    Ok(())
}

const CA_HEADER: &str = "ID               STATUS    DEVICES NOT AFTER                SUBJECT";

pub(super) fn ca(cmd: CaCommand, out: &mut dyn Write) -> Result<Outcome> {
    match cmd {
        CaCommand::Add {
            certificate,
            verification_certificate,
            ca_key,
            identity,
            identity_pattern,
            digest_mode,
            pending,
            api,
        } => {
            let ca_pem = read(&certificate)?;
            let given = verification_certificate.as_ref().map(read).transpose()?;
            let key = ca_key.as_ref().map(read).transpose()?;
            let identity = identity.replace('-', "_");
            let digest_mode = digest_mode.to_ascii_lowercase();
            run_api(
                &api,
                out,
                async move |c: &Client| {
                    let verification = match (given, key) {
                        (Some(v), _) => v,
                        (None, Some(key)) => {
                            let code: RegistrationCode = c
                                .call(Method::GET, "/api/v1/cas/registration-code", None::<&()>)
                                .await?;
                            make_verification_certificate(&ca_pem, &key, &code.registration_code)
                                .map_err(CallError::Other)?
                        }
                        (None, None) => {
                            return Err(CallError::Other(anyhow!("give --verification-certificate or --ca-key")));
                        }
                    };
                    let body = serde_json::json!({
                        "certificate_pem": ca_pem,
                        "verification_certificate_pem": verification,
                        "identity": identity,
                        "identity_pattern": identity_pattern,
                        "digest_mode": digest_mode,
                        "auto_activate": !pending,
                    });
                    c.call::<Ca>(Method::POST, "/api/v1/cas", Some(&body)).await
                },
                |ca, out| {
                    writeln!(out, "registered {} ({})", ca.id, ca.subject)?;
                    writeln!(
                        out,
                        "new devices start {}",
                        if ca.auto_activate { "active" } else { "pending" }
                    )?;
                    Ok(())
                },
            )
        }
        CaCommand::RegistrationCode { api } => run_api(
            &api,
            out,
            async |c: &Client| {
                c.call::<RegistrationCode>(Method::GET, "/api/v1/cas/registration-code", None::<&()>)
                    .await
            },
            |r, out| {
                writeln!(out, "{}", r.registration_code)?;
                Ok(())
            },
        ),
        CaCommand::List { api } => run_api(
            &api,
            out,
            async |c: &Client| c.call::<CaList>(Method::GET, "/api/v1/cas", None::<&()>).await,
            |list, out| {
                writeln!(out, "{CA_HEADER}")?;
                for ca in &list.items {
                    ca_line(ca, out)?;
                }
                Ok(())
            },
        ),
        CaCommand::Revoke { id, reason, api } => run_api(
            &api,
            out,
            async move |c: &Client| {
                c.call::<CaRevoked>(
                    Method::POST,
                    &format!("/api/v1/cas/{id}/revoke"),
                    Some(&serde_json::json!({ "reason": reason })),
                )
                .await
            },
            |r, out| {
                writeln!(
                    out,
                    "revoked CA {} and {} device(s) under it",
                    r.ca.id, r.devices_revoked
                )?;
                Ok(())
            },
        ),
        CaCommand::Crl { id, crl, api } => {
            let pem = read(&crl)?;
            run_api(
                &api,
                out,
                async move |c: &Client| {
                    c.call::<CrlAccepted>(
                        Method::POST,
                        &format!("/api/v1/cas/{id}/crl"),
                        Some(&serde_json::json!({ "crl_pem": pem })),
                    )
                    .await
                },
                |r, out| {
                    writeln!(
                        out,
                        "CRL accepted for {}: {} serial(s), next update {}",
                        r.ca_id, r.revoked, r.next_update
                    )?;
                    Ok(())
                },
            )
        }
    }
}

fn device_line(d: &Device, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:<32} {:<11} {:<9} {:<12} {:<7} {}",
        d.id,
        d.status,
        d.integrity,
        d.firmware.as_deref().unwrap_or("-"),
        if d.online { "online" } else { "-" },
        d.last_seen
    )?;
    Ok(())
}

const DEVICE_HEADER: &str = "ID                               STATUS      INTEGRITY FIRMWARE     ONLINE  LAST SEEN";

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(k);
            q.push('=');
            q.push_str(&urlencode(v));
        }
    }
    q
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(super) fn device(cmd: DeviceCommand, out: &mut dyn Write) -> Result<Outcome> {
    let action = |id: String, reason: Option<String>, api: ApiArgs, verb: &'static str, out: &mut dyn Write| {
        run_api(
            &api,
            out,
            async move |c: &Client| {
                c.call::<Device>(
                    Method::POST,
                    &format!("/api/v1/devices/{}/{verb}", urlencode(&id)),
                    Some(&serde_json::json!({ "reason": reason })),
                )
                .await
            },
            |d, out| {
                writeln!(out, "{} is now {}", d.id, d.status)?;
                Ok(())
            },
        )
    };
    match cmd {
        DeviceCommand::List {
            status,
            ca,
            firmware,
            integrity,
            label,
            seen_since,
            q,
            limit,
            api,
        } => {
            let filters = query(&[
                ("status", &status),
                ("ca", &ca),
                ("firmware", &firmware),
                ("integrity", &integrity),
                ("label", &label),
                ("seen_since", &seen_since),
                ("q", &q),
            ]);
            run_api(
                &api,
                out,
                async move |c: &Client| {
                    let mut items = Vec::new();
                    let mut cursor: Option<String> = None;
                    loop {
                        let page_size = (limit - items.len()).clamp(1, 1000);
                        let sep = if filters.is_empty() { '?' } else { '&' };
                        let mut path = format!("/api/v1/devices{filters}{sep}limit={page_size}");
                        if let Some(c) = &cursor {
                            path.push_str(&format!("&cursor={c}"));
                        }
                        let page: DeviceList = c.call(Method::GET, &path, None::<&()>).await?;
                        items.extend(page.items);
                        match page.next_cursor {
                            Some(next) if items.len() < limit => cursor = Some(next),
                            next => {
                                return Ok(DeviceList {
                                    items,
                                    next_cursor: next,
                                });
                            }
                        }
                    }
                },
                |list, out| {
                    writeln!(out, "{DEVICE_HEADER}")?;
                    for d in &list.items {
                        device_line(d, out)?;
                    }
                    if list.next_cursor.is_some() {
                        writeln!(out, "… more (raise --limit)")?;
                    }
                    Ok(())
                },
            )
        }
        DeviceCommand::Show { id, api } => run_api(
            &api,
            out,
            async move |c: &Client| {
                c.call::<DeviceDetail>(Method::GET, &format!("/api/v1/devices/{}", urlencode(&id)), None::<&()>)
                    .await
            },
            |d, out| {
                let dev = &d.device;
                writeln!(out, "device     {}", dev.id)?;
                writeln!(
                    out,
                    "status     {}{}",
                    dev.status,
                    if dev.online { " (online)" } else { "" }
                )?;
                writeln!(
                    out,
                    "integrity  {}{}",
                    dev.integrity,
                    dev.integrity_reason
                        .as_ref()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default()
                )?;
                writeln!(
                    out,
                    "firmware   {} {}",
                    dev.firmware.as_deref().unwrap_or("-"),
                    dev.firmware_digest.as_deref().unwrap_or("")
                )?;
                writeln!(out, "seen       {} … {}", dev.first_seen, dev.last_seen)?;
                writeln!(out, "CA         {}", dev.ca_id)?;
                for (i, link) in d.chain.iter().enumerate() {
                    writeln!(
                        out,
                        "chain[{i}]   {} ({}, until {})",
                        link.subject, link.key, link.not_after
                    )?;
                }
                for (k, v) in &d.labels {
                    writeln!(out, "label      {k}={v}")?;
                }
                writeln!(out, "recent events:")?;
                for e in d.recent_events.iter().take(20) {
                    writeln!(
                        out,
                        "  {} {:<24} {} {}",
                        e.at,
                        e.kind,
                        e.actor,
                        e.reason.as_deref().unwrap_or("")
                    )?;
                }
                Ok(())
            },
        ),
        DeviceCommand::Activate { id, reason, api } => action(id, reason, api, "activate", out),
        DeviceCommand::Quarantine { id, reason, api } => action(id, reason, api, "quarantine", out),
        DeviceCommand::Revoke { id, reason, api } => action(id, reason, api, "revoke", out),
        DeviceCommand::Attest { id, api } => run_api(
            &api,
            out,
            async move |c: &Client| {
                c.call::<AttestSent>(
                    Method::POST,
                    &format!("/api/v1/devices/{}/attest", urlencode(&id)),
                    None::<&()>,
                )
                .await
            },
            |s, out| {
                writeln!(
                    out,
                    "challenge {} sent on {} (answer by {}); the verdict appears in `fleetward device show {}`",
                    s.challenge.nonce, s.topic, s.challenge.expires_at, s.challenge.device_id
                )?;
                Ok(())
            },
        ),
    }
}

pub(super) fn audit(args: AuditArgs, out: &mut dyn Write) -> Result<Outcome> {
    let path = format!(
        "/api/v1/audit?silent_days={}&expiry_days={}",
        args.silent_days, args.expiry_days
    );
    run_api(
        &args.api,
        out,
        async move |c: &Client| c.call::<Audit>(Method::GET, &path, None::<&()>).await,
        |a, out| {
            writeln!(
                out,
                "fleet audit at {}: {} check(s) run, {} finding(s)",
                a.generated_at,
                a.checks_run.len(),
                a.findings.len()
            )?;
            for f in &a.findings {
                writeln!(
                    out,
                    "\n[{}] {} ({}{})",
                    f.severity.to_uppercase(),
                    f.title,
                    f.check,
                    if f.affected_count_capped { ", count capped" } else { "" }
                )?;
                writeln!(out, "  {}", f.description)?;
                if !f.affected_devices.is_empty() {
                    writeln!(out, "  devices: {}", f.affected_devices.join(", "))?;
                }
                if !f.affected_cas.is_empty() {
                    writeln!(out, "  CAs: {}", f.affected_cas.join(", "))?;
                }
                writeln!(out, "  → {}", f.suggested_action)?;
            }
            Ok(())
        },
    )
}
