//! The JetStream relay: every message this node stored goes to `fleetward.telemetry.{device}`.
//!
//! Writers hand over what they committed ([`Relay::offer`], under the hub's store turn, so in id
//! order) without waiting. One task publishes up to [`MAX_BATCH`] messages, then waits for all
//! their acks; what failed (NATS away, no ack in time) is published again, with back-off, until
//! JetStream acknowledges it. Each publish carries `Nats-Msg-Id: {instance}-{id}`: a retry whose
//! first attempt did land is dropped by JetStream's de-duplication window, so a stored message
//! lands once.
//!
//! The store is the relay's outbox ([`registry::RelayOutbox`]): every telemetry row this process
//! stores carries the relay's outbox id, and the relay records every second how far it has
//! published. So nothing the store acknowledged is lost from the bus:
//!
//! - The buffer between the writers and the task is bounded (`nats.telemetry_buffer`). While NATS
//!   is connected and the relay drains it, the MQTT telemetry writer waits for room before its
//!   next commit ([`crate::bus::Bus::wait_for_relay_room`]), so devices faster than the relay are
//!   slowed. When NATS is away (or acknowledges nothing for [`crate::bus::RELAY_STALL`]) long
//!   enough to fill it, the relay stops taking messages from the writers (they are counted,
//!   `bus_telemetry_deferred`, and an event `bus.telemetry_deferred` names the range of stored
//!   ids) and, once it has published what its buffer held, reads them back from the store in id
//!   order until it has caught up, then takes them from the writers again.
//! - A relay killed with messages unpublished (`kill -9`, a crash, a shutdown NATS did not let it
//!   finish) leaves them in its outbox. The relay of the same node adopts it when it starts
//!   again, and any node's relay adopts an outbox whose relay has not been alive for
//!   [`ADOPT_AFTER`]; it publishes the rest from the store under the original ids
//!   (`bus_telemetry_republished`; an event `bus.outbox_adopted`), so JetStream drops what the
//!   dead relay had published in the last two minutes without recording it.

use crate::eventlog::EventSink;
use crate::locks::lock;
use crate::stats::{Stats, add, inc};
use async_nats::jetstream;
use registry::{NewEvent, Registry, StoredMessage};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Most messages published before their acks are awaited.
pub const MAX_BATCH: usize = 256;
/// How long the relay keeps publishing its buffer after shutdown starts.
const DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(5);
/// How often deferred ranges are reported.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How often the relay records its progress in its outbox (also its heartbeat).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// An outbox whose relay has not recorded its progress for this long is adopted by another.
pub const ADOPT_AFTER: Duration = Duration::from_secs(30);
/// How often a relay looks for outboxes to adopt.
const ADOPT_EVERY: Duration = Duration::from_secs(10);

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

/// Stored ids the writers' buffer had no room for, not yet reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeferredRange {
    first: i64,
    last: i64,
    count: u64,
}

/// The writers' end of the relay.
#[derive(Debug)]
pub struct Relay {
    tx: mpsc::Sender<Arc<StoredMessage>>,
    /// Whether the relay takes messages from the writers; false while it reads from the store.
    live: Arc<AtomicBool>,
    /// Set once the hub offers every committed message (the relay reads the store until then).
    attached: watch::Sender<bool>,
    /// `bus_telemetry_published` when a writer last gave up waiting for room (`u64::MAX`: never).
    stalled_at: AtomicU64,
    /// Messages offered since the start, taken or deferred.
    offered: AtomicU64,
    deferred: Arc<Mutex<Option<DeferredRange>>>,
    stats: Arc<Stats>,
}

impl Relay {
    /// Opens this node's outbox in `registry` (from now on the telemetry this process stores is
    /// stamped with it) and starts the publishing task and the adopting task. The relay reads
    /// from the store until [`Relay::attach`].
    pub async fn start(
        js: jetstream::Context,
        registry: Registry,
        settings: RelaySettings,
        stats: Arc<Stats>,
        events: EventSink,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Relay, Vec<JoinHandle<()>>)> {
        let started_ms = crate::clock::now_ms();
        let outbox = registry
            .open_relay_outbox(&settings.node, started_ms)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the JetStream relay's outbox in the registry: {e}"))?;
        let (tx, rx) = mpsc::channel(settings.buffer.max(1));
        let deferred = Arc::new(Mutex::new(None));
        let live = Arc::new(AtomicBool::new(false));
        let (attached, attached_rx) = watch::channel(false);
        let publisher = Publisher {
            js,
            registry,
            settings,
            stats: stats.clone(),
            events,
            deferred: deferred.clone(),
            stream_ready: false,
            adopted: false,
        };
        let adopter = Adopter {
            publisher: publisher.clone_for(None),
            own: outbox.id,
            started_ms,
        };
        let tasks = vec![
            tokio::spawn(Forwarder::new(publisher, &outbox, live.clone()).run(rx, attached_rx.clone(), stop.clone())),
            tokio::spawn(adopter.run(attached_rx, stop)),
        ];
        Ok((
            Relay {
                tx,
                live,
                attached,
                stalled_at: AtomicU64::new(u64::MAX),
                offered: AtomicU64::new(0),
                deferred,
                stats,
            },
            tasks,
        ))
    }

    /// From now on every committed message is offered: the relay may take them from the
    /// writers instead of the store.
    pub fn attach(&self) {
        let _ = self.attached.send(true);
    }

    /// Queues committed messages for JetStream. Never waits: past the buffer (or while the relay
    /// reads from the store), a message is left to the store, counted as deferred, and its id
    /// joins the range the next report names.
    pub fn offer(&self, messages: &[Arc<StoredMessage>]) {
        self.offered.fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut from = messages.len();
        if self.live.load(Ordering::Acquire) {
            for (i, m) in messages.iter().enumerate() {
                if self.tx.try_send(m.clone()).is_err() {
                    // Nothing more from the writers until the relay has read this one, and what
                    // follows, from the store.
                    self.live.store(false, Ordering::Release);
                    from = i;
                    break;
                }
            }
        } else {
            from = 0;
        }
        if let (Some(first), Some(last)) = (messages.get(from), messages.last()) {
            note_deferred(
                &self.deferred,
                &self.stats,
                first.id,
                last.id,
                (messages.len() - from) as u64,
            );
        }
    }

    /// Of `n` messages about to be committed, how many one commit may hold (no more than the
    /// buffer: waiting cannot make room for more), once the buffer has room for them and the
    /// relay takes from the writers, waiting while `connected()` and the task keeps publishing.
    /// After [`crate::bus::RELAY_STALL`] without a publish it gives up, and gives up at once on
    /// later calls until something is published again: a connected NATS whose JetStream
    /// acknowledges nothing slows no writer for long.
    pub async fn wait_for_room(&self, n: usize, connected: impl Fn() -> bool) -> usize {
        let published = || self.stats.bus_telemetry_published.load(Ordering::Acquire);
        let need = n.min(self.tx.max_capacity());
        // No room either while the relay catches up from the store: what a commit offers it
        // then is left to the store, and writers faster than that read would keep it behind.
        let room = || self.tx.capacity() >= need && self.live.load(Ordering::Acquire);
        if room() || self.stalled_at.load(Ordering::Acquire) == published() {
            return need;
        }
        let mut seen = published();
        let mut progress_at = crate::clock::monotonic();
        while !room() && connected() {
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

    /// Messages waiting in the buffer for JetStream.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Messages this node stored since the relay started that JetStream has not acknowledged
    /// yet: those in the buffer and those deferred to the store (which [`Relay::backlog`] does
    /// not count).
    pub fn unpublished(&self) -> u64 {
        let published = self.stats.bus_telemetry_published.load(Ordering::Acquire);
        self.offered.load(Ordering::Relaxed).saturating_sub(published)
    }
}

fn note_deferred(deferred: &Mutex<Option<DeferredRange>>, stats: &Stats, first: i64, last: i64, count: u64) {
    add(&stats.bus_telemetry_deferred, count);
    let mut range = lock(deferred);
    *range = Some(match *range {
        None => DeferredRange { first, last, count },
        Some(r) => DeferredRange {
            first: r.first.min(first),
            last: r.last.max(last),
            count: r.count + count,
        },
    });
}

/// Where the relay takes its next messages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The writers' buffer.
    Live,
    /// The store (the buffer's messages first: they precede the first deferred one).
    Store,
    /// The store once more after taking from the writers again: what was committed before
    /// that and not offered since.
    LastRead,
}

/// The publishing task of this node's outbox.
struct Forwarder {
    publisher: Publisher,
    live: Arc<AtomicBool>,
    /// This node's outbox, and how far it is published; recorded every second.
    progress: Progress,
    source: Source,
    backoff: Backoff,
    /// Set when shutdown starts: the buffer is published until then.
    deadline: Option<tokio::time::Instant>,
}

impl Forwarder {
    fn new(publisher: Publisher, outbox: &registry::RelayOutbox, live: Arc<AtomicBool>) -> Self {
        let progress = Progress::start(publisher.registry.clone(), outbox, "the JetStream relay's");
        Forwarder {
            publisher,
            live,
            progress,
            source: Source::Store,
            backoff: Backoff::new(),
            deadline: None,
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Arc<StoredMessage>>,
        mut attached: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Until every committed message is offered, only the store knows them all.
        tokio::select! {
            _ = attached.wait_for(|a| *a) => {}
            _ = stopped(&mut stop) => {}
        }
        if *stop.borrow() {
            self.deadline = Some(now());
        }
        let mut batch: Vec<Arc<StoredMessage>> = Vec::with_capacity(MAX_BATCH);
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.source == Source::Live {
                if !self.live.load(Ordering::Acquire) && rx.is_empty() {
                    // A writer found the buffer full: what it could not hand over is in the store.
                    self.source = Source::Store;
                    continue;
                }
                if self.deadline.is_some() && rx.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop), if self.deadline.is_none() => {
                        self.deadline = Some(now() + DRAIN_AT_SHUTDOWN);
                        continue;
                    }
                    n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
                    _ = report.tick() => { self.publisher.report_deferred(); continue; }
                }
            } else {
                if self.deadline.is_some() || *stop.borrow() {
                    // What the store still holds stays in the outbox, for this node's next start
                    // or another node to publish.
                    break;
                }
                if self.source == Source::Store {
                    // The buffer's leftovers precede the first message left to the store.
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                }
                if batch.is_empty() {
                    match drain_store(&mut self.publisher, &self.progress, &mut stop).await {
                        Some(read) => add(&self.publisher.stats.bus_telemetry_from_store, read),
                        None => break,
                    }
                    self.source = match self.source {
                        // Take from the writers again, then read once more: what was committed
                        // before they saw this and not offered since.
                        Source::Store => {
                            self.live.store(true, Ordering::Release);
                            Source::LastRead
                        }
                        _ if self.live.load(Ordering::Acquire) => Source::Live,
                        _ => Source::Store,
                    };
                    continue;
                }
            }
            // Messages a store read already covered.
            let through = self.progress.through();
            batch.retain(|m| m.id > through);
            if !self.publish_batch(&mut batch, &mut stop).await {
                break;
            }
        }
        self.publisher.report_deferred();
        // Stopped: the outbox may be adopted at once (by this node's next start, say).
        self.progress.finish(true).await;
    }

    /// Publishes `batch` (in id order, the outbox's next messages) until JetStream acknowledges
    /// all of it, retrying with back-off; false when shutdown's drain time ran out first.
    async fn publish_batch(&mut self, batch: &mut Vec<Arc<StoredMessage>>, stop: &mut watch::Receiver<bool>) -> bool {
        let Some(last) = batch.last().map(|m| m.id) else {
            return true;
        };
        loop {
            if self.deadline.is_some_and(|d| now() >= d) {
                // Shutting down and NATS is not taking them: they stay in the outbox.
                return false;
            }
            if self.publisher.publish(batch).await {
                self.backoff.reset();
                // The whole batch, also when its last message was acknowledged in an earlier try.
                self.progress.advance(last);
                batch.clear();
                return true;
            }
            inc(&self.publisher.stats.bus_publish_retries);
            match self.deadline {
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                None => {
                    if sleep_unless_stopped(self.backoff.next(), stop).await {
                        self.deadline = Some(now() + DRAIN_AT_SHUTDOWN);
                    }
                }
            }
            self.publisher.report_deferred();
        }
    }
}

/// Publishes the rows of `progress`'s outbox above its progress from the store, in id order, [`MAX_BATCH`]
/// at a time, until a read finds fewer (caught up); retries reads and publishes with back-off.
/// The number published, or `None` when `stop` was set first (the rest stays in the outbox).
async fn drain_store(publisher: &mut Publisher, progress: &Progress, stop: &mut watch::Receiver<bool>) -> Option<u64> {
    let mut backoff = Backoff::new();
    let mut published = 0u64;
    loop {
        if *stop.borrow() {
            return None;
        }
        let rows = match publisher
            .registry
            .relay_outbox_rows(progress.outbox, progress.through(), MAX_BATCH as u32)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(outbox = progress.outbox, error = %e, "cannot read a JetStream outbox from the registry; retrying");
                if sleep_unless_stopped(backoff.next(), stop).await {
                    return None;
                }
                continue;
            }
        };
        let caught_up = rows.len() < MAX_BATCH;
        if let Some(last) = rows.last().map(|m| m.id) {
            let count = rows.len() as u64;
            let mut batch: Vec<_> = rows.into_iter().map(Arc::new).collect();
            while !publisher.publish(&mut batch).await {
                inc(&publisher.stats.bus_publish_retries);
                publisher.report_deferred();
                if sleep_unless_stopped(backoff.next(), stop).await {
                    return None;
                }
            }
            backoff.reset();
            progress.advance(last);
            published += count;
        }
        if caught_up {
            return Some(published);
        }
    }
}

/// Retry pauses: 50 ms, doubling up to 5 s; back to 50 ms after a success.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MOST: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// The pause to take now; the next is twice as long.
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(Self::MOST);
        pause
    }
}

/// How far an outbox is published, recorded in the registry every [`PROGRESS_EVERY`] by a task
/// of its own (the record is also the relay's heartbeat), so that a slow registry write never
/// holds up publishing.
struct Progress {
    /// The outbox's id.
    outbox: i64,
    through: Arc<AtomicI64>,
    /// Sends whether to record the outbox as stopped.
    done: Option<tokio::sync::oneshot::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts recording `outbox`'s progress; `whose` names it in warnings.
    fn start(registry: Registry, outbox: &registry::RelayOutbox, whose: &'static str) -> Progress {
        let through = Arc::new(AtomicI64::new(outbox.published_through));
        let (done, mut done_rx) = tokio::sync::oneshot::channel::<bool>();
        let id = outbox.id;
        let outbox = outbox.clone();
        let task = tokio::spawn({
            let through = through.clone();
            async move {
                let mut beat = tokio::time::interval(PROGRESS_EVERY);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failures = 0u64;
                let record_stop = loop {
                    tokio::select! {
                        biased;
                        // Finished, or the publishing task is gone (recorded as stopped).
                        done = &mut done_rx => break done.unwrap_or(true),
                        _ = beat.tick() => {}
                    }
                    let at = through.load(Ordering::Acquire);
                    match registry
                        .relay_outbox_progress(&outbox, at, crate::clock::now_ms())
                        .await
                    {
                        Ok(()) if failures > 0 => {
                            tracing::info!(
                                outbox = id,
                                failures,
                                "{whose} progress is recorded in the registry again"
                            );
                            failures = 0;
                        }
                        Ok(()) => {}
                        Err(e) => {
                            // Once per outage, not once a second.
                            if failures == 0 {
                                tracing::warn!(outbox = id, error = %e, "cannot record {whose} progress in the registry; retrying every second");
                            }
                            failures += 1;
                        }
                    }
                };
                if !record_stop {
                    return;
                }
                // Stopped (alive_at 0): the outbox may be adopted at once.
                if let Err(e) = registry
                    .relay_outbox_progress(&outbox, through.load(Ordering::Acquire), 0)
                    .await
                {
                    tracing::warn!(outbox = id, error = %e, "cannot record that {whose} publishing stopped; it is adopted once silent for {ADOPT_AFTER:?}");
                }
            }
        });
        Progress {
            outbox: id,
            through,
            done: Some(done),
            task,
        }
    }

    /// Every message of the outbox up to this id is in JetStream.
    fn through(&self) -> i64 {
        self.through.load(Ordering::Acquire)
    }

    fn advance(&self, through: i64) {
        self.through.fetch_max(through, Ordering::AcqRel);
    }

    /// Stops the heartbeat after its last record. With `record_stop`, records the outbox as
    /// stopped (adoptable at once); without, records nothing more (it is about to be deleted).
    async fn finish(mut self, record_stop: bool) {
        if let Some(done) = self.done.take() {
            let _ = done.send(record_stop);
        }
        let _ = (&mut self.task).await;
    }
}

/// Resolves once `stop` is set.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps for `pause`; true, early, when `stop` is set first (or already).
async fn sleep_unless_stopped(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stopped(stop) => true,
    }
}

fn now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(crate::clock::monotonic())
}

/// Publishes the outboxes of relays that are gone.
struct Adopter {
    publisher: Publisher,
    own: i64,
    /// When this relay's outbox opened: an outbox of this node not alive since was a previous
    /// run's.
    started_ms: i64,
}

impl Adopter {
    async fn run(self, mut attached: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = attached.wait_for(|a| *a) => {}
            _ = stopped(&mut stop) => return,
        }
        loop {
            let now_ms = crate::clock::now_ms();
            let stale_before = now_ms.saturating_sub(ADOPT_AFTER.as_millis() as i64);
            let claimed = self
                .publisher
                .registry
                .claim_relay_outbox(
                    self.own,
                    &self.publisher.settings.node,
                    self.started_ms,
                    stale_before,
                    now_ms,
                )
                .await;
            match claimed {
                Ok(Some(outbox)) => {
                    if self.publish_outbox(outbox, &mut stop).await {
                        continue;
                    }
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot look for JetStream outboxes to adopt"),
            }
            if sleep_unless_stopped(ADOPT_EVERY, &mut stop).await {
                return;
            }
        }
    }

    /// Publishes what `outbox` still owes JetStream, then deletes it; false when stopped first
    /// (the outbox is left, adoptable at once, for the next adopter).
    async fn publish_outbox(&self, outbox: registry::RelayOutbox, stop: &mut watch::Receiver<bool>) -> bool {
        let mut publisher = self.publisher.clone_for(Some(outbox.node.clone()));
        let progress = Progress::start(publisher.registry.clone(), &outbox, "an adopted JetStream outbox's");
        tracing::info!(outbox = outbox.id, node = %outbox.node, "adopting a JetStream outbox whose relay is gone");
        let Some(republished) = drain_store(&mut publisher, &progress, stop).await else {
            progress.finish(true).await;
            return false;
        };
        progress.finish(false).await;
        if let Err(e) = publisher.registry.close_relay_outbox(outbox.id).await {
            tracing::warn!(error = %e, "cannot delete an adopted JetStream outbox; it will be adopted again");
        }
        tracing::info!(outbox = outbox.id, node = %outbox.node, messages = republished, "adopted JetStream outbox published");
        if republished == 0 {
            // A relay that stopped with nothing owed (a clean shutdown): nothing to record.
            return true;
        }
        publisher.events.emit(
            NewEvent::new("bus.outbox_adopted", "gateway")
                .reason(format!(
                    "{republished} stored messages past a stopped relay's recorded progress were published to JetStream from the store (it drops those it already held)"
                ))
                .detail(serde_json::json!({
                    "messages": republished,
                    "from_node": outbox.node,
                    "published_through": outbox.published_through,
                    "stream": publisher.settings.stream,
                    "node": self.publisher.settings.node,
                })),
        );
        true
    }
}

struct Publisher {
    js: jetstream::Context,
    registry: Registry,
    settings: RelaySettings,
    stats: Arc<Stats>,
    events: EventSink,
    deferred: Arc<Mutex<Option<DeferredRange>>>,
    stream_ready: bool,
    /// Publishing another relay's outbox (counted as republished).
    adopted: bool,
}

impl Publisher {
    /// A publisher on the same stream; with `node`, for an adopted outbox of that node.
    fn clone_for(&self, node: Option<String>) -> Publisher {
        let mut settings = self.settings.clone();
        if let Some(node) = &node {
            settings.node.clone_from(node);
        }
        Publisher {
            js: self.js.clone(),
            registry: self.registry.clone(),
            settings,
            stats: self.stats.clone(),
            events: self.events.clone(),
            // Only the relay's own writers defer (an adopter's range stays empty).
            deferred: Arc::default(),
            stream_ready: false,
            adopted: node.is_some(),
        }
    }

    /// Publishes `batch` and waits for the acks; leaves in it what must be tried again.
    /// Returns whether everything was acknowledged (`batch` is then as it was).
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
        for m in batch.iter() {
            match self.js.send_publish(subject(m), self.message(m)).await {
                Ok(ack) => acks.push((m, ack)),
                Err(e) => {
                    tracing::debug!(id = m.id, error = %e, "JetStream publish failed");
                    failed.push(m.clone());
                }
            }
        }
        let mut missing_stream = false;
        for (m, ack) in acks {
            match ack.await {
                Ok(ack) => {
                    inc(if self.adopted {
                        &self.stats.bus_telemetry_republished
                    } else {
                        &self.stats.bus_telemetry_published
                    });
                    if ack.duplicate {
                        inc(&self.stats.bus_telemetry_duplicates);
                    }
                }
                Err(e) => {
                    if matches!(e.kind(), jetstream::context::PublishErrorKind::StreamNotFound) {
                        missing_stream = true;
                    }
                    tracing::debug!(id = m.id, error = %e, "no JetStream acknowledgement");
                    failed.push(m.clone());
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

    fn report_deferred(&self) {
        let Some(range) = lock(&self.deferred).take() else {
            return;
        };
        tracing::warn!(
            messages = range.count,
            first_id = range.first,
            last_id = range.last,
            "JetStream relay's buffer full: telemetry is published from the store instead"
        );
        self.events.emit(
            NewEvent::new("bus.telemetry_deferred", "gateway")
                .reason(format!(
                    "{} stored messages found the JetStream relay's buffer full; they are published from the store",
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
    fn deferred_ranges_widen_and_count() {
        let stats = Stats::default();
        let deferred = Mutex::new(None);
        note_deferred(&deferred, &stats, 7, 7, 1);
        note_deferred(&deferred, &stats, 3, 3, 1);
        note_deferred(&deferred, &stats, 8, 9, 2);
        assert_eq!(
            *lock(&deferred),
            Some(DeferredRange {
                first: 3,
                last: 9,
                count: 4
            })
        );
        assert_eq!(stats.snapshot().bus_telemetry_deferred, 4);
    }
}
