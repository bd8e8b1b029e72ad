//! Schemathesis (PyPI) against `/api/openapi.json` of a running `fleetward demo`: property-based
//! requests to every operation, checked for server errors and for conformance of status codes,
//! content types, headers and response bodies to the document. `.ci/run` installs it
//! (scripts/api/requirements.txt) and sets FLEETWARD_REQUIRE_INTEROP=1.
//!
//! Left out: the event stream (an endless response) and token revocation (the stateful phase
//! would revoke the run's own admin token; the router tests cover it). The
//! `positive_data_acceptance` check is off: a schema cannot say "a PEM certificate signed by
//! this CA", so schema-valid bodies are rightly refused with 400.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod demo_process;

use demo_process::DemoProcess;
use std::process::Command;

fn available() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FLEETWARD_REQUIRE_INTEROP").is_err(),
            "schemathesis missing (pip install -r scripts/api/requirements.txt)"
        );
        eprintln!("skipping: schemathesis not installed");
    }
    ok
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    if !available() {
        return;
    }
    let demo = DemoProcess::start();
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/api/openapi.json", demo.url))
        .args(["-H", &format!("Authorization: Bearer {}", demo.token)])
        .args(["--exclude-path", "/api/v1/events/stream"])
        .args(["--exclude-path", "/api/v1/tokens/{id}/revoke"])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "40", "--seed", "20261124", "--request-timeout", "10"])
        .args(["--continue-on-failure", "--no-color"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "{text}");
    // The token still works: nothing in the run locked the API out.
    let probe = "import sys, urllib.request as u; \
                 r = u.urlopen(u.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]})); \
                 print(r.status)";
    let status = Command::new("python3")
        .args(["-c", probe])
        .arg(format!("{}/api/v1/fleet/summary", demo.url))
        .arg(&demo.token)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "200");
}
