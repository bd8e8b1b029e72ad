//! # gateway — the `fleetward` binary's library
//!
//! Everything the `fleetward` binary does lives here so tests can call it:
//! - [`server`]: `fleetward serve` — the mutual-TLS MQTT endpoint ([`listener`], [`tls`],
//!   [`mqtt`]) with just-in-time registration, the durable telemetry pipeline ([`ingest`]),
//!   the run-time trust store ([`trust`]) and the HTTP side ([`http`]);
//! - [`demo`]: `fleetward demo` — a simulated fleet, good devices and bad actors, against a
//!   fresh server;
//! - [`cli`]: flags and the offline tools (`verify`, `migrate`, `keys`, `config print`).
#![forbid(unsafe_code)]

pub mod api;
pub mod attestation;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod eventlog;
pub mod http;
pub mod ingest;
pub mod listener;
mod locks;
pub mod lorawan;
pub mod mqtt;
pub mod observability;
mod secret_file;
pub mod server;
pub mod sigfox;
pub mod stats;
pub mod storage;
pub mod tls;
pub mod trust;

pub use config::Config;
pub use server::{Running, start};
