//! The dashboard in a real browser (Debian's chromium, headless, through chromedriver and
//! Selenium): log in with the token `fleetward demo` prints, open the overview, the device list,
//! a device page, the audit page and the live feed; screenshots land in
//! `target/dashboard-screenshots/`. The script asserts on rendered content (counts, device ids,
//! findings) against the API's answers. `.ci/run` installs chromium and the script's
//! requirements and sets FLEETWARD_REQUIRE_INTEROP=1.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod demo_process;

use demo_process::DemoProcess;
use std::process::Command;

fn available() -> bool {
    let ok = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists()
        && Command::new("python3")
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "chromium, chromedriver or selenium missing (apt-get install chromium chromium-driver; pip install -r scripts/dashboard/requirements.txt)"
        );
        eprintln!("skipping: no chromium/chromedriver/selenium");
    }
    ok
}

#[test]
fn the_demo_fleet_in_a_real_browser() {
    if !available() {
        return;
    }
    let demo = DemoProcess::start();
    assert!(demo.output.contains(&format!("dashboard: {}/", demo.url)));
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard-screenshots");
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/dashboard/browser_check.py"
        ))
        .args(["--url", &demo.url, "--token", &demo.token, "--out", shots])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["checks"].as_array().unwrap().len() >= 15, "{report}");
    for name in ["overview", "devices", "device", "audit", "events"] {
        let png = std::fs::read(format!("{shots}/{name}.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}.png");
    }
}
