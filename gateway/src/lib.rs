//! # gateway — the `fleetward` binary's library
//!
//! Everything the `fleetward` binary does lives here so tests can call it: today the operator's
//! offline tools ([`cli`], `fleetward verify …`); the mTLS/MQTT endpoint, just-in-time
//! registration, HTTP API and LPWAN transports arrive with their issues.
#![forbid(unsafe_code)]

pub mod cli;
