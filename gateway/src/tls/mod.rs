//! TLS for the MQTT endpoint: rustls (aws-lc-rs), TLS 1.2 and 1.3, client certificates judged
//! by [`client_auth::DeviceCertVerifier`] against the run-time trust store.

pub mod client_auth;
pub mod server_cert;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// TLS settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Largest TLS record we send (plaintext bytes), for devices with small receive buffers
    /// (mbedTLS `MBEDTLS_SSL_IN_CONTENT_LEN`). `None`: the protocol maximum, 16 KiB.
    pub max_fragment_size: Option<usize>,
    /// Accept TLS 1.2 (what mbedTLS on STM32 typically speaks). TLS 1.3 is always on.
    pub tls12: bool,
}

/// The HTTP listener's TLS (`[http] tls`): the same server certificate, no client certificate
/// (operators and the Sigfox cloud authenticate with tokens and secrets), HTTP/1.1.
pub fn http_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match or are unusable")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds the server configuration.
pub fn server_config(
    settings: &TlsSettings,
    verifier: Arc<client_auth::DeviceCertVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match or are unusable")?;
    if let Some(size) = settings.max_fragment_size {
        anyhow::ensure!(
            (32..=16_384).contains(&size),
            "max_fragment_size must be between 32 and 16384 bytes (got {size})"
        );
        config.max_fragment_size = Some(size);
    }
    // No session resumption: every connection is a full handshake, so every connection proves
    // possession of the device's key, which never leaves its secure element (the
    // CertificateVerify signature). A resumed session would prove only knowledge of a session
    // secret that lived in the microcontroller's RAM, where an attacker who has the board can
    // read it. It also spares each TLS 1.3 handshake the two NewSessionTicket messages rustls
    // sends by default (bytes over a device's radio link) and each TLS 1.2 handshake an entry in
    // a 256-session cache, which no fleet would hit.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"mqtt".to_vec(), b"x-amzn-mqtt-ca".to_vec()];
    Ok(Arc::new(config))
}
