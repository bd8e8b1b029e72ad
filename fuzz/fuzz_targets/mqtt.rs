//! MQTT decoding (the CONNECT path and every later packet, v3.1.1 and v5) on hostile bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetward_test_support::fuzz::mqtt(data));
