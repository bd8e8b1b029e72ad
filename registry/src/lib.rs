//! # registry — the fleet database
//!
//! Owns every byte of fleetward's persistent state and every SQL statement: provisioning CAs,
//! devices, events, telemetry, pending commands, keys sealed at rest. It arrives with the
//! registry issue; until then this crate only fixes its place in the workspace (it may use
//! `verifier` types, never the reverse).
#![forbid(unsafe_code)]

pub use verifier;
