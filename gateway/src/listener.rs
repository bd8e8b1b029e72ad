//! The MQTT/TLS accept loop. Accepting never waits on a client: each connection gets its own
//! task at once, its handshake is bounded by a timeout, and per-IP and global rate limits
//! refuse floods before any TLS work is done.

use crate::clock::monotonic;
use crate::mqtt::codec::{ConnectCode, Incoming};
use crate::mqtt::conn::Conn;
use crate::mqtt::{Ctx, backend, device};
use crate::stats::inc;
use crate::tls::client_auth::DeviceCertVerifier;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;
use verifier::Timestamp;

/// Accept-side limits.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    pub handshake_timeout: Duration,
    /// New connections per second from one IP address (burst: the same number).
    pub per_ip_rate: f64,
    /// New connections per second in total (burst: the same number).
    pub global_rate: f64,
    /// Connections open at once (TLS + MQTT); beyond it new ones are closed at accept.
    pub max_connections: usize,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            handshake_timeout: Duration::from_secs(10),
            per_ip_rate: 1000.0,
            global_rate: 10000.0,
            max_connections: 100_000,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-IP and global connection-rate limits.
#[derive(Debug)]
pub struct RateLimiter {
    per_ip_rate: f64,
    global_rate: f64,
    global: Mutex<Bucket>,
    per_ip: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_ip_rate: f64, global_rate: f64, now: Instant) -> Self {
        RateLimiter {
            per_ip_rate,
            global_rate,
            global: Mutex::new(Bucket {
                tokens: global_rate.max(1.0),
                at: now,
            }),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// May a new connection from `ip` proceed at `now`?
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut per_ip = crate::locks::lock(&self.per_ip);
        if per_ip.len() > 65_536 {
            // Forget full buckets: they carry no state.
            let rate = self.per_ip_rate;
            per_ip.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let bucket = per_ip.entry(ip).or_insert(Bucket {
            tokens: self.per_ip_rate.max(1.0),
            at: now,
        });
        if !bucket.take(self.per_ip_rate, now) {
            return false;
        }
        let mut global = crate::locks::lock(&self.global);
        global.take(self.global_rate, now)
    }
}

/// Serves MQTT/TLS on `listener` until `shutdown` flips to true.
pub async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    verifier: Arc<DeviceCertVerifier>,
    ctx: Arc<Ctx>,
    settings: ListenerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let limiter = RateLimiter::new(settings.per_ip_rate, settings.global_rate, monotonic());
    let open = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        inc(&ctx.stats.connections_accepted);
        if !limiter.allow(peer.ip(), monotonic()) {
            inc(&ctx.stats.connections_rate_limited);
            drop(tcp);
            continue;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            inc(&ctx.stats.connections_rate_limited);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let verifier = verifier.clone();
        let ctx = ctx.clone();
        let timeout = settings.handshake_timeout;
        // Exported as a trace when OTLP is configured (see `crate::observability`); the device
        // id is recorded once the certificate names it.
        let span = tracing::info_span!(
            target: crate::observability::SPANS,
            "mqtt.connection",
            peer = %peer,
            device = tracing::field::Empty,
        );
        tasks.spawn(
            async move {
                // Two boxed phases, each freed when it ends: this task's own state is then a
                // few pointers, not the largest state of every phase (that cost ~2 KiB per idle
                // device).
                let opened = Box::pin(open_session(tcp, peer, acceptor, verifier, ctx, timeout)).await;
                if let Some(session) = opened {
                    session.await;
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Stop accepting; sessions are told to close by the server (hub.close_all) and drain here.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        tasks.abort_all();
    }
}

type SessionFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The TLS handshake, the certificate's verdict and the first packet, then the session to run;
/// `None` when the connection ended (and was counted) before a session could start.
async fn open_session(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    verifier: Arc<DeviceCertVerifier>,
    ctx: Arc<Ctx>,
    handshake_timeout: Duration,
) -> Option<SessionFuture> {
    let accepted = monotonic();
    // The accept future owns the socket: on a timeout it is dropped (the connection closed) only
    // after the counter moved, so whoever sees the close also sees it counted. It lives in this
    // block only: kept for the session, the finished future cost ~2 KiB per idle device.
    let tls = {
        let mut accept = Box::pin(
            acceptor
                .accept(tcp)
                .instrument(tracing::info_span!(target: crate::observability::SPANS, "tls.handshake")),
        );
        tokio::select! {
            r = &mut accept => match r {
                Ok(tls) => tls,
                Err(e) => {
                    inc(&ctx.stats.handshakes_failed);
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return None;
                }
            },
            () = tokio::time::sleep(handshake_timeout) => {
                inc(&ctx.stats.handshakes_timed_out);
                tracing::debug!("TLS handshake timed out");
                drop(accept);
                return None;
            }
        }
    };
    inc(&ctx.stats.handshakes_completed);
    ctx.stats
        .handshake
        .record(monotonic().saturating_duration_since(accepted));
    let (_, session) = tls.get_ref();
    let version = session.protocol_version().and_then(|v| v.as_str()).map(str::to_owned);
    let suite = session
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .map(str::to_owned);
    let chain: Option<Vec<Vec<u8>>> = session
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());

    // The device behind the certificate: this handshake's verdict, or (a resumed session, which
    // skipped the verifier; `tls::server_config` offers none, this stays as a second line) a
    // fresh verification against the current trust store.
    let device = match &chain {
        Some(chain) if !chain.is_empty() => {
            let leaf = &chain[0];
            let intermediates: Vec<&[u8]> = chain[1..].iter().map(Vec::as_slice).collect();
            match verifier.take_verdict(leaf, &intermediates) {
                Some(d) => Some(d),
                None => {
                    let now = Timestamp::from_unix(crate::clock::now_ms() / 1000);
                    match verifier.verify(leaf, &intermediates, now) {
                        Ok(d) => Some(d),
                        Err(refusal) => {
                            verifier.report(&refusal, Some(peer));
                            return None;
                        }
                    }
                }
            }
        }
        _ => None,
    };

    let mut conn = Conn::new(tls, ctx.settings.max_packet, ctx.settings.write_timeout);
    let first = match tokio::time::timeout(ctx.settings.connect_timeout, conn.read_packet()).await {
        Ok(Ok(Some(Incoming::Connect(c)))) => *c,
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(_))) => {
            inc(&ctx.stats.protocol_errors);
            return None;
        }
        Ok(Err(e)) => {
            inc(&ctx.stats.protocol_errors);
            if let crate::mqtt::conn::ConnError::Codec(crate::mqtt::codec::CodecError::UnsupportedVersion(level)) = e {
                // Answer in 3.1.1 framing, as the spec asks for unknown levels.
                conn.encoder()
                    .connack(ConnectCode::UnsupportedVersion, false, &mut conn.out);
                Box::pin(conn.close()).await;
                tracing::debug!(level, "unsupported MQTT protocol level");
            }
            return None;
        }
        Err(_) => {
            tracing::debug!("no CONNECT in time");
            return None;
        }
    };
    // The session's future, boxed: what the opening found moves into the box. `map` rather than
    // an `async move` block: a block would keep its own copy of the arguments beside the session's.
    let session: SessionFuture = match (device, chain) {
        (Some(device), Some(chain)) => {
            let leaf_der = chain.into_iter().next().unwrap_or_default();
            let facts = device::TlsFacts {
                peer,
                version,
                suite,
                leaf_der,
                accepted,
            };
            Box::pin(device::serve(ctx, conn, first, device, facts).map(|outcome| {
                tracing::debug!(?outcome, "device session ended");
            }))
        }
        _ => Box::pin(backend::serve(ctx, conn, first, peer).map(|reason| {
            tracing::debug!(reason, "backend session ended");
        })),
    };
    Some(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn rate_limits_refuse_bursts_per_ip_and_overall_and_refill() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(5.0, 8.0, t0);
        let a: IpAddr = "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let b: IpAddr = "127.0.0.2".parse().unwrap_or(IpAddr::from([127, 0, 0, 2]));
        assert_eq!((0..10).filter(|_| limiter.allow(a, t0)).count(), 5, "per-IP burst");
        assert_eq!(
            (0..10).filter(|_| limiter.allow(b, t0)).count(),
            3,
            "global budget left"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(limiter.allow(a, later), "refilled after a second");
    }
}
