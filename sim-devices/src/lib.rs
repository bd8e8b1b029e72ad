//! # sim-devices — a fleet of simulated secure-element devices
//!
//! Good devices and bad actors (foreign CA, expired certificate, cloned certificate, topic
//! trespass, tampered firmware) that speak to fleetward exactly as real boards do, and the
//! load tester built on them. It arrives with the sim-devices issue.
#![forbid(unsafe_code)]

pub use verifier;
