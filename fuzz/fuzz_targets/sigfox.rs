#![no_main]
//! Fuzz target: see `fleetward_test_support::fuzz::sigfox`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetward_test_support::fuzz::sigfox(data));
