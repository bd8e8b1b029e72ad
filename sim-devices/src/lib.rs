//! # sim-devices — a fleet of simulated secure-element devices
//!
//! Good devices and bad actors (foreign CA, expired certificate, cloned certificate, topic
//! trespass, wrong client id) that speak to fleetward over real mutual TLS and MQTT, as real
//! boards do:
//! - [`pki`]: a provisioning CA and STSAFE-A-profile device certificates; [`pki_dir`]: the
//!   simulated personalization service's output, as PEM files (`sim-devices pki init`);
//! - [`client`]: the device's TLS (STM32/mbedTLS TLS 1.2 profile or TLS 1.3) and an MQTT 3.1.1
//!   client independent of the server's codec;
//! - [`attest`]: the device's answer to an attestation challenge (a signed firmware
//!   measurement), for good and tampered firmware;
//! - [`fleet`]: the demo fleet and its attacks;
//! - [`lorawan`]: LoRaWAN devices (OTAA and ABP, 1.0.x and 1.1) behind a simulated Semtech UDP
//!   packet forwarder; [`lorawan_fleet`]: the demo's LoRaWAN devices and radio-side attacks;
//! - [`sigfox`]: Sigfox devices whose secure element authenticates each uplink with the NAK;
//! - [`run`]: `sim-devices run`, the fleet as a rehearsal and a load tester ([`report`]: its
//!   HDR-histogram report; [`procstat`]: the gateway's CPU and memory; [`lpwan`]: LoRaWAN and
//!   Sigfox devices in the run, provisioned through [`api`]);
//! - [`attack`]: `sim-devices attack`, the security regression suite.
#![forbid(unsafe_code)]

pub mod api;
pub mod attack;
pub mod attest;
pub mod client;
pub mod fleet;
pub mod lorawan;
pub mod lorawan_fleet;
pub mod lpwan;
pub mod pki;
pub mod pki_dir;
pub mod procstat;
pub mod report;
pub mod run;
pub mod sigfox;

pub use verifier;
