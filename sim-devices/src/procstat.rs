//! CPU time and memory of a local process (the gateway under test, and this one), read from
//! Linux's `/proc`. Elsewhere every reading is `None` and reports simply leave the figures out.

use std::net::SocketAddr;
use std::path::Path;
use tokio::time::Instant;

/// Kernel clock ticks per second for `/proc/<pid>/stat` times (`USER_HZ`: 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub at: Instant,
}

/// Reads `/proc/<pid>` (`None`: gone, or not Linux).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 11 and 12 after the state field.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SEC,
        rss_kib,
        at: Instant::now(),
    })
}

/// This process.
pub fn own() -> Option<Sample> {
    sample(std::process::id())
}

/// The local process listening on `addr`'s TCP port, if it runs on this machine and `/proc`
/// lets us see its sockets (same user, or root).
pub fn listener_pid(addr: SocketAddr) -> Option<u32> {
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        return None;
    }
    let inode = listening_inode(addr.port())?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the socket listening on `port` (IPv4 or IPv6), from `/proc/net/tcp{,6}`.
fn listening_inode(port: u16) -> Option<u64> {
    let port_hex = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(Path::new(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9
                && f[3] == "0A"
                && f[1].ends_with(&port_hex)
                && let Ok(inode) = f[9].parse()
            {
                return Some(inode);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_listener_and_reads_itself() {
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(listener_pid(addr), Some(std::process::id()));
        let s = own().unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
        drop(listener);
        assert_eq!(listening_inode(addr.port()), None);
    }
}
