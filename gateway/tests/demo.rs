//! README's first command, `fleetward demo`, as a newcomer runs it: the real binary, a fresh
//! data directory, exit status 0 and a summary in which every good device got in and every bad
//! actor was stopped or flagged.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn readme_first_command_is_the_demo_and_it_works() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let first = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.lines().next())
        .unwrap();
    assert_eq!(first, "cargo run -q --bin fleetward -- demo");

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetward"))
        .args(["demo", "--data-dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "counterfeit                  STOPPED",
        "expired                      STOPPED",
        "impostor                     STOPPED",
        "trespasser                   STOPPED",
        "clone                        FLAGGED",
        "tampered-firmware            STOPPED",
        "attestation failed (firmware_unknown), device quarantined",
        "lorawan-1.0.3                IN",
        "lorawan-1.1                  IN",
        "lorawan-replay               STOPPED",
        "lorawan-forged               STOPPED",
        "lorawan-join-replay          STOPPED",
        "server: lorawan.uplink_rejected: MIC does not verify",
        "lorawan: 2 joins, 10 uplinks verified (MIC, frame counter) and stored; frames refused: 2, join-requests refused: 1",
        "sigfox-frames                IN",
        "sigfox-callbacks             IN",
        "sigfox-replay                STOPPED",
        "sigfox-forged                STOPPED",
        "server: sigfox.callback_rejected: sequence number",
        "server: sigfox.frame_rejected: UL-AUTH does not verify",
        "sigfox: 5 frames verified (UL-AUTH with the NAK), 5 callbacks stored; frames refused: 1, callbacks refused: 1",
        "all as expected.",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert_eq!(text.matches(" IN ").count(), 10, "{text}");
    assert_eq!(text.matches("firmware attested").count(), 6, "{text}");
    // It ends with the dashboard and a token to log in with (and, not at a terminal, exits).
    assert!(text.contains("dashboard: http://127.0.0.1:"), "{text}");
    assert!(
        text.contains("admin token (log in with it; also for the API and CLI): fw_"),
        "{text}"
    );
    assert!(dir.path().join("demo/tls/server-ca.pem").exists());
}
