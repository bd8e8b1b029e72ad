//! `fleetward demo --stay` as a child process: the real binary, serving the demo fleet, with
//! the dashboard URL and admin token it prints. Killed on drop.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    unreachable_pub
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DemoProcess {
    pub url: String,
    pub token: String,
    pub output: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DemoProcess {
    pub fn start() -> DemoProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetward"))
            .args(["demo", "--stay", "--data-dir"])
            .arg(dir.path().join("demo"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut output = String::new();
        let (mut url, mut token) = (None, None);
        while !output.contains("still serving") {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the demo did not get to serving:\n{output}"));
            if let Some(rest) = line.strip_prefix("dashboard: ") {
                url = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches('/').to_owned());
            }
            if line.starts_with("admin token") {
                token = line.rsplit(' ').next().map(str::to_owned);
            }
            output.push_str(&line);
            output.push('\n');
        }
        assert!(output.contains("all as expected."), "{output}");
        DemoProcess {
            url: url.expect("the demo prints the dashboard URL"),
            token: token.expect("the demo prints an admin token"),
            output,
            child,
            _dir: dir,
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
