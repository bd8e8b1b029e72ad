//! The JetStream relay: every message this node stored goes to `fleetward.telemetry.{device}`.
//!
//! Writers hand over what they committed ([`Relay::offer`], under the hub's store turn, so in id
//! order) without waiting. One task publishes up to [`MAX_BATCH`] messages, then waits for all
//! their acks; what failed (NATS away, no ack in time) is published again, with back-off, until
//! JetStream acknowledges it. Each publish carries `Nats-Msg-Id: {instance}-{id}`: a retry whose
//! first attempt did land is dropped by JetStream's de-duplication window, so a stored message
//! lands once.
//!
//! The buffer between the writers and the task is bounded (`nats.telemetry_buffer`). While NATS
//! is connected and the relay drains it, the MQTT telemetry writer waits for room before its
//! next commit ([`crate::bus::Bus::wait_for_relay_room`]), so devices faster than the relay are
//! slowed rather than missing the bus. When NATS is away (or acknowledges nothing for
//! [`crate::bus::RELAY_STALL`]) long enough to fill it, further messages are counted
//! (`bus_telemetry_dropped`) and an event (`bus.telemetry_dropped`) names the range of stored
//! ids they fall in. Nothing was acknowledged on the strength of the bus: a device's PUBACK
//! follows the registry's commit, so those messages stay in the telemetry store (and reach MQTT
//! backends from there).

use crate::eventlog::EventSink;
use crate::locks::lock;
use crate::stats::{Stats, add, inc};
use async_nats::jetstream;
use registry::{NewEvent, StoredMessage};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Most messages published before their acks are awaited.
pub const MAX_BATCH: usize = 256;
/// How long the relay keeps publishing its buffer after shutdown starts.
const DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(5);
/// How often dropped ranges are reported.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The stream and the buffer.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// JetStream stream holding `fleetward.telemetry.>` (created if missing).
    pub stream: String,
    /// Messages that may wait for JetStream.
    pub buffer: usize,
    /// Messages older than this are removed from the stream (0: kept until `max_bytes`).
    pub max_age: Duration,
    /// Stream size limit in bytes (-1: none); the oldest messages go first.
    pub max_bytes: i64,
    /// Stream replicas (1 on a single NATS server; 3 on a cluster).
    pub replicas: usize,
    /// The registry's instance id (first part of each message's de-duplication id).
    pub instance: String,
    /// This node (a header on each message, for tracing where it came in).
    pub node: String,
}

/// Stored ids not published because the buffer was full, not yet reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DroppedRange {
    first: i64,
    last: i64,
    count: u64,
}

/// The writers' end of the relay.
#[derive(Debug)]
pub struct Relay {
    tx: mpsc::Sender<Arc<StoredMessage>>,
    /// `bus_telemetry_published` when a writer last gave up waiting for room (`u64::MAX`: never).
    stalled_at: std::sync::atomic::AtomicU64,
    dropped: Arc<Mutex<Option<DroppedRange>>>,
    stats: Arc<Stats>,
}

impl Relay {
    /// Starts the publishing task.
    pub fn start(
        js: jetstream::Context,
        settings: RelaySettings,
        stats: Arc<Stats>,
        events: EventSink,
        stop: watch::Receiver<bool>,
    ) -> (Relay, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.buffer.max(1));
        let dropped = Arc::new(Mutex::new(None));
        let task = tokio::spawn(
            Publisher {
                js,
                settings,
                stats: stats.clone(),
                events,
                dropped: dropped.clone(),
                stream_ready: false,
            }
            .run(rx, stop),
        );
        (
            Relay {
                tx,
                stalled_at: std::sync::atomic::AtomicU64::new(u64::MAX),
                dropped,
                stats,
            },
            task,
        )
    }

    /// Queues committed messages for JetStream. Never waits: past the buffer, a message is
    /// counted as dropped and its id joins the range the next report names.
    pub fn offer(&self, messages: &[Arc<StoredMessage>]) {
        for m in messages {
            if self.tx.try_send(m.clone()).is_err() {
                note_dropped(&self.dropped, &self.stats, m.id, 1);
            }
        }
    }

    /// Of `n` messages about to be committed, how many one commit may hold (no more than the
    /// buffer: waiting cannot make room for more), once the buffer has room for them, waiting
    /// while `connected()` and the task keeps publishing. After [`crate::bus::RELAY_STALL`]
    /// without a publish it gives up, and gives up at once on later calls until something is
    /// published again: a connected NATS whose JetStream acknowledges nothing slows no writer
    /// for long.
    pub async fn wait_for_room(&self, n: usize, connected: impl Fn() -> bool) -> usize {
        use std::sync::atomic::Ordering;
        let published = || self.stats.bus_telemetry_published.load(Ordering::Acquire);
        let need = n.min(self.tx.max_capacity());
        if self.tx.capacity() >= need || self.stalled_at.load(Ordering::Acquire) == published() {
            return need;
        }
        let mut seen = published();
        let mut progress_at = crate::clock::monotonic();
        while self.tx.capacity() < need && connected() {
            if crate::clock::monotonic().saturating_duration_since(progress_at) >= crate::bus::RELAY_STALL {
                self.stalled_at.store(seen, Ordering::Release);
                return need;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = published();
            if now != seen {
                seen = now;
                progress_at = crate::clock::monotonic();
            }
        }
        need
    }

    /// Messages waiting for JetStream.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn note_dropped(dropped: &Mutex<Option<DroppedRange>>, stats: &Stats, id: i64, count: u64) {
    add(&stats.bus_telemetry_dropped, count);
    let mut range = lock(dropped);
    *range = Some(match *range {
        None => DroppedRange {
            first: id,
            last: id,
            count,
        },
        Some(r) => DroppedRange {
            first: r.first.min(id),
            last: r.last.max(id),
            count: r.count + count,
        },
    });
}

struct Publisher {
    js: jetstream::Context,
    settings: RelaySettings,
    stats: Arc<Stats>,
    events: EventSink,
    dropped: Arc<Mutex<Option<DroppedRange>>>,
    stream_ready: bool,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<StoredMessage>>, mut stop: watch::Receiver<bool>) {
        let mut batch: Vec<Arc<StoredMessage>> = Vec::with_capacity(MAX_BATCH);
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(50);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if batch.is_empty() {
                if deadline.is_some() && rx.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = stop.changed(), if deadline.is_none() => {
                        deadline = Some(tokio::time::Instant::from_std(crate::clock::monotonic()) + DRAIN_AT_SHUTDOWN);
                        continue;
                    }
                    n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
                    _ = report.tick() => { self.report_dropped(); continue; }
                }
            }
            if let Some(d) = deadline
                && tokio::time::Instant::from_std(crate::clock::monotonic()) >= d
            {
                // Shutting down and NATS is not taking them: count what is left.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
                for m in batch.drain(..) {
                    note_dropped(&self.dropped, &self.stats, m.id, 1);
                }
                break;
            }
            if self.publish(&mut batch).await {
                backoff = Duration::from_millis(50);
            } else {
                inc(&self.stats.bus_publish_retries);
                let pause = if deadline.is_some() {
                    Duration::from_millis(200)
                } else {
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed(), if deadline.is_none() => {
                        deadline = Some(tokio::time::Instant::from_std(crate::clock::monotonic()) + DRAIN_AT_SHUTDOWN);
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                self.report_dropped();
            }
        }
        self.report_dropped();
    }

    /// Publishes `batch` and waits for the acks; leaves in it what must be tried again.
    /// Returns whether everything was acknowledged.
    async fn publish(&mut self, batch: &mut Vec<Arc<StoredMessage>>) -> bool {
        if !self.stream_ready {
            match self.ensure_stream().await {
                Ok(()) => self.stream_ready = true,
                Err(e) => {
                    tracing::warn!(stream = %self.settings.stream, error = %e, "JetStream stream not available; telemetry waits");
                    return false;
                }
            }
        }
        let mut acks = Vec::with_capacity(batch.len());
        let mut failed = Vec::new();
        for m in batch.drain(..) {
            match self.js.send_publish(subject(&m), self.message(&m)).await {
                Ok(ack) => acks.push((m, ack)),
                Err(e) => {
                    tracing::debug!(id = m.id, error = %e, "JetStream publish failed");
                    failed.push(m);
                }
            }
        }
        let mut missing_stream = false;
        for (m, ack) in acks {
            match ack.await {
                Ok(ack) => {
                    inc(&self.stats.bus_telemetry_published);
                    if ack.duplicate {
                        inc(&self.stats.bus_telemetry_duplicates);
                    }
                }
                Err(e) => {
                    if matches!(e.kind(), jetstream::context::PublishErrorKind::StreamNotFound) {
                        missing_stream = true;
                    }
                    tracing::debug!(id = m.id, error = %e, "no JetStream acknowledgement");
                    failed.push(m);
                }
            }
        }
        if missing_stream {
            // Deleted under us: create it again before the retry.
            self.stream_ready = false;
        }
        if failed.is_empty() {
            return true;
        }
        tracing::warn!(
            messages = failed.len(),
            "JetStream did not acknowledge telemetry; retrying (stored in the registry meanwhile)"
        );
        failed.sort_by_key(|m| m.id);
        *batch = failed;
        false
    }

    fn message(&self, m: &StoredMessage) -> jetstream::message::PublishMessage {
        jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(&m.payload))
            .message_id(format!("{}-{}", self.settings.instance, m.id))
            .header("Fleetward-Device", m.device_id.as_str())
            .header("Fleetward-Topic", m.topic.as_str())
            .header("Fleetward-Source", m.source.as_str())
            .header("Fleetward-Qos", m.qos.to_string().as_str())
            .header("Fleetward-Stored-Id", m.id.to_string().as_str())
            .header("Fleetward-Received-At", m.received_at_ms.to_string().as_str())
            .header("Fleetward-Node", self.settings.node.as_str())
    }

    async fn ensure_stream(&self) -> Result<(), String> {
        let config = jetstream::stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec![format!("{}>", super::TELEMETRY_PREFIX)],
            storage: jetstream::stream::StorageType::File,
            max_age: self.settings.max_age,
            max_bytes: self.settings.max_bytes,
            num_replicas: self.settings.replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn report_dropped(&self) {
        let Some(range) = lock(&self.dropped).take() else {
            return;
        };
        tracing::warn!(
            messages = range.count,
            first_id = range.first,
            last_id = range.last,
            "telemetry not published to JetStream (buffer full); it is in the telemetry store"
        );
        self.events.emit(
            NewEvent::new("bus.telemetry_dropped", "gateway")
                .reason(format!(
                    "{} stored messages were not published to JetStream: its buffer was full",
                    range.count
                ))
                .detail(serde_json::json!({
                    "messages": range.count,
                    "first_stored_id": range.first,
                    "last_stored_id": range.last,
                    "stream": self.settings.stream,
                    "node": self.settings.node,
                })),
        );
    }
}

/// `fleetward.telemetry.{device}`.
pub fn subject(m: &StoredMessage) -> String {
    format!("{}{}", super::TELEMETRY_PREFIX, m.device_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_ranges_widen_and_count() {
        let stats = Stats::default();
        let dropped = Mutex::new(None);
        note_dropped(&dropped, &stats, 7, 1);
        note_dropped(&dropped, &stats, 3, 1);
        note_dropped(&dropped, &stats, 9, 2);
        assert_eq!(
            *lock(&dropped),
            Some(DroppedRange {
                first: 3,
                last: 9,
                count: 4
            })
        );
        assert_eq!(stats.snapshot().bus_telemetry_dropped, 4);
    }
}
