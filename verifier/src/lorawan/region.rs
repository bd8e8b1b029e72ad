//! Regional parameters the LoRaWAN 1.1 uplink MIC depends on: the B1 block carries the uplink's
//! data-rate index (TxDr) and channel index (TxCh), which a packet forwarder reports only as a
//! data-rate string and a frequency. fleetward serves the EU863-870 plan (RP002-1.0.x §2.4).

/// EU863-870 uplink data rates: DR0 SF12BW125 … DR5 SF7BW125, DR6 SF7BW250 (RP002 Table 2-3).
pub fn eu868_data_rate(datr: &str) -> Option<u8> {
    Some(match datr {
        "SF12BW125" => 0,
        "SF11BW125" => 1,
        "SF10BW125" => 2,
        "SF9BW125" => 3,
        "SF8BW125" => 4,
        "SF7BW125" => 5,
        "SF7BW250" => 6,
        // FSK at 50 kbit/s (a forwarder reports FSK data rates as bits per second).
        "50000" => 7,
        _ => return None,
    })
}

/// The EU863-870 channel plan networks commonly run: the three default channels, then the five
/// a CFList typically adds (MHz).
pub const EU868_CHANNELS: [f64; 8] = [868.1, 868.3, 868.5, 867.1, 867.3, 867.5, 867.7, 867.9];

/// The index of `freq_mhz` in a channel plan (to within 1 kHz).
pub fn channel_index(plan: &[f64], freq_mhz: f64) -> Option<u8> {
    plan.iter()
        .position(|c| (c - freq_mhz).abs() < 0.001)
        .and_then(|i| u8::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eu868_indices() {
        assert_eq!(eu868_data_rate("SF12BW125"), Some(0));
        assert_eq!(eu868_data_rate("SF7BW125"), Some(5));
        assert_eq!(eu868_data_rate("SF7BW500"), None);
        assert_eq!(channel_index(&EU868_CHANNELS, 868.1), Some(0));
        assert_eq!(channel_index(&EU868_CHANNELS, 867.899_999), Some(7));
        assert_eq!(channel_index(&EU868_CHANNELS, 869.525), None);
    }
}
