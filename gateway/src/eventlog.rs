//! Events raised on hot paths (handshake rejections, ACL violations, takeovers) are written by
//! one background task, so a connection never waits on the database to report a refusal. The
//! queue is bounded: when a flood of bad actors saturates it, events are counted as dropped
//! (and logged), never queued without limit.

use crate::clock::now_ms;
use crate::stats::{Stats, inc};
use registry::{NewEvent, Registry};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Where events go.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<(NewEvent, i64)>,
    stats: Arc<Stats>,
    /// Every event, as it is raised (in-process consumers: dashboards, tests).
    live: broadcast::Sender<NewEvent>,
}

/// How many events may wait for the writer.
const QUEUE: usize = 4096;

impl EventSink {
    /// Starts the writer task (on the storage thread).
    pub fn start(
        registry: Registry,
        stats: Arc<Stats>,
        storage: &crate::storage::Storage,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(NewEvent, i64)>(QUEUE);
        let (live, _) = broadcast::channel(1024);
        let task = storage.spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                for (event, at) in batch.drain(..) {
                    if let Err(e) = registry.append_event(&event, at).await {
                        tracing::warn!(kind = %event.kind, error = %e, "could not record event");
                    }
                }
            }
        });
        (EventSink { tx, stats, live }, task)
    }

    /// Records an event (asynchronously).
    pub fn emit(&self, event: NewEvent) {
        tracing::info!(kind = %event.kind, device = event.device_id.as_deref().unwrap_or(""), reason = event.reason.as_deref().unwrap_or(""), "event");
        let _ = self.live.send(event.clone());
        if self.tx.try_send((event, now_ms())).is_err() {
            inc(&self.stats.events_dropped);
        }
    }

    /// Subscribes to events as they are raised.
    pub fn subscribe(&self) -> broadcast::Receiver<NewEvent> {
        self.live.subscribe()
    }
}
