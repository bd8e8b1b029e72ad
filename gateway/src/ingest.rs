//! The device → cloud pipeline: a bounded queue into one batching writer. A QoS 1 message is
//! acknowledged to its device only after the batch that holds it has committed (SQLite
//! `synchronous=FULL` / PostgreSQL commit), then fanned out to backend subscribers. When the
//! queue is full, `submit` waits, so a device that outruns the store is slowed at its socket —
//! memory never grows with the backlog.

use crate::mqtt::hub::Hub;
use crate::stats::{Stats, add, inc};
use registry::{Registry, TelemetryMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where to send a QoS 1 acknowledgement once stored: the session's ack channel and packet id.
#[derive(Debug)]
pub struct AckTo {
    pub tx: mpsc::Sender<u16>,
    pub pkid: u16,
}

/// One message on its way to the store.
#[derive(Debug)]
pub struct IngestItem {
    pub msg: TelemetryMessage,
    pub ack: Option<AckTo>,
}

/// Pipeline sizes.
#[derive(Clone, Copy, Debug)]
pub struct IngestSettings {
    /// Messages that may wait for the writer (the bound on buffered telemetry).
    pub queue: usize,
    /// Most messages per transaction (measured: 500 keeps SQLite and PostgreSQL near 67–70k/s, and
    /// bounds how long an interactive write, e.g. a registration, waits behind a commit).
    pub max_batch: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            queue: 8192,
            max_batch: 500,
        }
    }
}

/// The pipeline's entrance. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::Sender<IngestItem>,
}

/// The writer stopped (shutdown).
#[derive(Debug, thiserror::Error)]
#[error("the telemetry pipeline is closed")]
pub struct Closed;

impl Ingest {
    pub fn start(
        registry: Registry,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        settings: IngestSettings,
        storage: &crate::storage::Storage,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        // On the storage thread: the batch's statements are answered without queueing behind
        // sessions, so SQLite's write lock is held only while SQLite works.
        let task = storage.spawn(writer(rx, registry, hub, stats, settings.max_batch.max(1)));
        (Ingest { tx }, task)
    }

    /// Queues a message, waiting while the pipeline is full (backpressure).
    pub async fn submit(&self, item: IngestItem) -> Result<(), Closed> {
        self.tx.send(item).await.map_err(|_| Closed)
    }
}

async fn writer(
    mut rx: mpsc::Receiver<IngestItem>,
    registry: Registry,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    max_batch: usize,
) {
    let mut items: Vec<IngestItem> = Vec::with_capacity(max_batch);
    let mut batch: Vec<TelemetryMessage> = Vec::with_capacity(max_batch);
    let mut acks: Vec<Option<AckTo>> = Vec::with_capacity(max_batch);
    // Devices' last-seen times, written every few seconds instead of per message.
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut last_flush = crate::clock::monotonic();
    while rx.recv_many(&mut items, max_batch).await > 0 {
        // Messages move into the batch (no copy of the payloads); acks wait beside them.
        for item in items.drain(..) {
            batch.push(item.msg);
            acks.push(item.ack);
        }
        // Stored prefix by prefix: the store commits early when a registration waits for the
        // write lock. Each prefix is committed, acknowledged and fanned out under the hub's
        // store turn, so backend sessions see stored ids in increasing order even when an
        // LPWAN uplink commits between two prefixes. A failed commit is retried for what is not
        // stored yet (nothing of it was acknowledged), outside the turn.
        let mut backoff = Duration::from_millis(20);
        while !batch.is_empty() {
            // A JetStream relay slower than the devices slows them here, before the commit
            // (their PUBACKs wait, as for a slow store), rather than the relay falling behind. A
            // commit holds no more than the relay's buffer: room for more never comes.
            let most = hub.wait_for_bus_room(batch.len()).await;
            let turn = hub.store_turn().await;
            let ids = match registry.store_telemetry_prefix(&batch[..most]).await {
                Ok(ids) if !ids.is_empty() && ids.len() <= most => {
                    backoff = Duration::from_millis(20);
                    ids
                }
                Ok(ids) => {
                    // Cannot pair ids with messages; never acknowledge on a guess.
                    tracing::error!(expected = most, got = ids.len(), "store returned an impossible id list");
                    batch.clear();
                    acks.clear();
                    break;
                }
                Err(e) => {
                    drop(turn);
                    inc(&stats.store_failures);
                    tracing::warn!(error = %e, messages = batch.len(), retry_in = ?backoff, "telemetry commit failed; retrying (nothing acknowledged)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            add(&stats.messages_stored, ids.len() as u64);
            let n = ids.len();
            let mut stored = Vec::with_capacity(n);
            for ((m, ack), id) in batch.drain(..n).zip(acks.drain(..n)).zip(ids) {
                if let Some(ack) = ack {
                    // The session bounds its unacknowledged messages by this channel's capacity,
                    // so this cannot be full; a closed channel means the device left (it will
                    // resend on reconnect, and the message is stored either way).
                    let _ = ack.tx.try_send(ack.pkid);
                }
                stored.push(Arc::new(m.stored(id)));
            }
            for m in &stored {
                // The id is copied once per device per flush, not once per message.
                match seen.get_mut(m.device_id.as_str()) {
                    Some(at) => *at = (*at).max(m.received_at_ms),
                    None => {
                        seen.insert(m.device_id.clone(), m.received_at_ms);
                    }
                }
            }
            hub.fan_out(&stored);
            drop(turn);
        }
        if crate::clock::monotonic().saturating_duration_since(last_flush) >= LAST_SEEN_EVERY || seen.len() > 100_000 {
            flush_last_seen(&registry, &mut seen).await;
            last_flush = crate::clock::monotonic();
        }
    }
    flush_last_seen(&registry, &mut seen).await;
}

/// How often devices' last-seen times are written.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(5);

async fn flush_last_seen(registry: &Registry, seen: &mut std::collections::HashMap<String, i64>) {
    let mut batch: Vec<(String, i64)> = seen.drain().collect();
    // In id order, as the directory's bookkeeping is written (PostgreSQL row-lock order).
    batch.sort_unstable();
    if let Err(e) = registry.touch_last_seen(&batch).await {
        tracing::warn!(error = %e, devices = batch.len(), "could not record last-seen times");
    }
}
