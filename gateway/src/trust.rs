//! What handshakes are judged against, kept current while the server runs: the registered
//! provisioning CAs (as a `verifier::x509::TrustStore`) and the set of revoked devices.
//!
//! Both are immutable snapshots behind a lock that is held only to clone an `Arc`; a reload
//! builds new snapshots from the registry and swaps them in, so a CA registered or revoked
//! through the API takes effect on the very next handshake, without a restart. Changes made by
//! other processes (the CLI, other gateway nodes) are picked up by polling the registry's
//! trust generation.

use registry::{DeviceStatus, Registry, RegistryError, TrustGeneration};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use verifier::x509::TrustStore;

/// One consistent view of the trust configuration.
#[derive(Debug, Default)]
pub struct TrustSnapshot {
    pub store: Arc<TrustStore>,
    pub revoked_devices: HashSet<String>,
    /// Per CA id: does just-in-time registration activate new devices (else `pending`)?
    pub auto_activate: HashMap<String, bool>,
    /// The registry's trust generation this snapshot was built at.
    pub generation: TrustGeneration,
}

/// The current snapshot, swapped atomically on reload.
#[derive(Debug, Default)]
pub struct TrustState {
    current: RwLock<Arc<TrustSnapshot>>,
    reloads: tokio::sync::Mutex<()>,
    /// When the registry last answered a trust check (the snapshot is known current as of then).
    confirmed_at: RwLock<Option<std::time::Instant>>,
}

impl TrustState {
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        crate::locks::read(&self.current).clone()
    }

    /// Rebuilds the snapshot from the registry (serialized: one reload at a time).
    pub async fn reload(&self, registry: &Registry) -> Result<Arc<TrustSnapshot>, RegistryError> {
        let _one_at_a_time = self.reloads.lock().await;
        let previous = self.snapshot().generation;
        // Known devices whose status changed (here or in another process) are admitted by a
        // transaction again on their next connect. What is read below is at least as new.
        let generation = registry.forget_changes_since(previous).await?;
        let store = Arc::new(registry.trust_store().await?);
        let revoked_devices = registry
            .device_ids_with_status(DeviceStatus::Revoked)
            .await?
            .into_iter()
            .collect();
        let auto_activate = registry
            .cas()
            .await?
            .into_iter()
            .map(|c| (c.id, c.auto_activate))
            .collect();
        let snapshot = Arc::new(TrustSnapshot {
            store,
            revoked_devices,
            auto_activate,
            generation,
        });
        *crate::locks::write(&self.current) = snapshot.clone();
        self.confirmed();
        tracing::debug!(
            changes = generation.changes,
            cas = snapshot.store.cas().len(),
            "trust store reloaded"
        );
        Ok(snapshot)
    }

    /// Reloads if the registry changed since the current snapshot.
    pub async fn refresh_if_changed(&self, registry: &Registry) -> Result<bool, RegistryError> {
        let generation = registry.trust_generation().await?;
        if generation != self.snapshot().generation {
            self.reload(registry).await?;
            return Ok(true);
        }
        self.confirmed();
        Ok(false)
    }

    fn confirmed(&self) {
        *crate::locks::write(&self.confirmed_at) = Some(crate::clock::monotonic());
    }

    /// How long since the registry last confirmed the snapshot (`None`: never). While the
    /// registry is unreachable this grows; what the gateway remembers of devices is trusted only
    /// up to `cache_max_staleness_secs`.
    pub fn staleness(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        crate::locks::read(&self.confirmed_at).map(|at| now.saturating_duration_since(at))
    }

    /// Marks a device revoked in the current snapshot at once (the registry write already
    /// happened; the next reload agrees).
    pub fn note_revoked(&self, device_id: &str) {
        let mut guard = crate::locks::write(&self.current);
        let old = guard.clone();
        let mut revoked = old.revoked_devices.clone();
        revoked.insert(device_id.to_owned());
        *guard = Arc::new(TrustSnapshot {
            store: old.store.clone(),
            revoked_devices: revoked,
            auto_activate: old.auto_activate.clone(),
            generation: old.generation,
        });
    }
}
