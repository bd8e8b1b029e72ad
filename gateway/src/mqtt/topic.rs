//! Topics and who may touch them: a device only its own subtree `devices/{id}/…` (a
//! quarantined one only its attestation topics); backend applications subscribe anywhere under
//! `devices/` and publish only commands.

/// What a device may publish to or subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceScope {
    /// Everything under `devices/{id}/`.
    Full,
    /// Only `devices/{id}/attestation/…` (quarantined devices).
    AttestationOnly,
}

/// `devices/{id}/`.
pub fn device_prefix(device_id: &str) -> String {
    format!("devices/{device_id}/")
}

/// May this device publish to `topic`?
pub fn device_may_publish(device_id: &str, scope: DeviceScope, topic: &str) -> bool {
    let Some(rest) = own_subtree(device_id, topic) else {
        return false;
    };
    match scope {
        // Commands and challenges flow cloud → device only.
        DeviceScope::Full => {
            !rest.starts_with("commands/") && rest != "attestation/challenge" && rest != "attestation/result"
        }
        DeviceScope::AttestationOnly => rest == "attestation/evidence",
    }
}

/// May this device subscribe to `filter`? Wildcards are allowed only inside its subtree.
pub fn device_may_subscribe(device_id: &str, scope: DeviceScope, filter: &str) -> bool {
    if !valid_filter(filter) {
        return false;
    }
    let Some(rest) = own_subtree(device_id, filter) else {
        return false;
    };
    match scope {
        DeviceScope::Full => true,
        DeviceScope::AttestationOnly => rest.starts_with("attestation/") || rest == "attestation/#",
    }
}

/// The part of `topic` after `devices/{id}/`, if it lies in that subtree (the id level must be
/// the literal id: a `+` or `#` there would reach other devices).
fn own_subtree<'t>(device_id: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic
        .strip_prefix("devices/")?
        .strip_prefix(device_id)?
        .strip_prefix('/')?;
    (!rest.is_empty()).then_some(rest)
}

/// May a backend application subscribe to `filter`? Anything under `devices/`.
pub fn backend_may_subscribe(filter: &str) -> bool {
    valid_filter(filter) && (filter == "#" || filter.starts_with("devices/") || filter == "devices/#")
}

/// The device a backend's publish is a command for: `devices/{id}/commands/…`.
pub fn command_target(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let (id, tail) = rest.split_once('/')?;
    let name = tail.strip_prefix("commands/")?;
    (!id.is_empty() && !name.is_empty()).then_some(id)
}

/// The device a device-originated topic belongs to.
pub fn topic_device(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("devices/")?
        .split('/')
        .next()
        .filter(|id| !id.is_empty())
}

/// A well-formed MQTT topic filter (spec 4.7.1).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Does `topic` match `filter` (spec 4.7)? Topics starting with `$` match no filter that starts
/// with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor", "$SYS/monitor"));
        assert!(matches("$SYS/#", "$SYS/monitor"));
        assert!(matches("devices/+/telemetry", "devices/d1/telemetry"));
        assert!(!matches("devices/+/telemetry", "devices/d1/telemetry/x"));
    }

    #[test]
    fn filters_are_validated() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn devices_stay_in_their_subtree() {
        let full = DeviceScope::Full;
        assert!(device_may_publish("d1", full, "devices/d1/telemetry"));
        assert!(device_may_publish("d1", full, "devices/d1/attestation/evidence"));
        assert!(!device_may_publish("d1", full, "devices/d2/telemetry"));
        assert!(!device_may_publish("d1", full, "devices/d10/telemetry"));
        assert!(!device_may_publish("d1", full, "devices/d1"));
        assert!(!device_may_publish("d1", full, "devices/d1/"));
        assert!(!device_may_publish("d1", full, "devices/d1/commands/reboot"));
        // Challenges and verdicts flow cloud → device only: a device cannot forge its own.
        assert!(!device_may_publish("d1", full, "devices/d1/attestation/challenge"));
        assert!(!device_may_publish("d1", full, "devices/d1/attestation/result"));
        assert!(!device_may_publish("d1", full, "other/d1/telemetry"));
        assert!(device_may_subscribe("d1", full, "devices/d1/commands/#"));
        assert!(device_may_subscribe("d1", full, "devices/d1/#"));
        assert!(!device_may_subscribe("d1", full, "devices/+/commands/#"));
        assert!(!device_may_subscribe("d1", full, "devices/#"));
        assert!(!device_may_subscribe("d1", full, "#"));
        let q = DeviceScope::AttestationOnly;
        assert!(device_may_publish("d1", q, "devices/d1/attestation/evidence"));
        assert!(!device_may_publish("d1", q, "devices/d1/telemetry"));
        assert!(!device_may_publish("d1", q, "devices/d1/attestation/result"));
        assert!(device_may_subscribe("d1", q, "devices/d1/attestation/challenge"));
        assert!(device_may_subscribe("d1", q, "devices/d1/attestation/#"));
        assert!(!device_may_subscribe("d1", q, "devices/d1/commands/#"));
        assert!(!device_may_subscribe("d1", q, "devices/d1/#"));
    }

    #[test]
    fn commands_name_their_device() {
        assert_eq!(command_target("devices/d1/commands/reboot"), Some("d1"));
        assert_eq!(command_target("devices/d1/commands/"), None);
        assert_eq!(command_target("devices/d1/telemetry"), None);
        assert_eq!(command_target("devices//commands/x"), None);
        assert!(backend_may_subscribe("devices/+/telemetry"));
        assert!(backend_may_subscribe("devices/#"));
        assert!(!backend_may_subscribe("other/#"));
    }
}
