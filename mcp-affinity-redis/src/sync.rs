//! The sync task: the router's writes performed in pipelined batches, the lost records of its
//! backends polled, the store's restart marker watched, and the router's bindings reseeded
//! when the store lost them or missed some.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mcp_affinity::router::Router;
use mcp_affinity::router::store::{ReseedCursor, StoreWrite};
use mcp_affinity::table::SessionTable;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::circuit::Circuit;
use crate::error::Unavailable;
use crate::in_flight::Ticket;
use crate::store::RedisStore;

/// The running sync task of [`RedisStore::spawn_sync`]. [`shutdown`](Self::shutdown) stops
/// it after it wrote what it could within the
/// [shutdown grace](crate::RedisStoreConfig::shutdown_grace); dropping the handle stops it the
/// same way without waiting.
#[derive(Debug)]
pub struct SyncHandle {
    stop: watch::Sender<bool>,
    /// Counts the rounds that ended with nothing left to write.
    idle: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
    /// The longest a stopping task may take: its grace, and the call in flight.
    bound: Duration,
}

impl SyncHandle {
    /// Stops the task: it finishes the call in flight, writes what is waiting (taken already,
    /// or still in the router's queue) for up to the shutdown grace, and ends. Returns once it
    /// has ended (if it has not within its bound, it is aborted).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(self.bound, &mut task).await.is_err()
        {
            task.abort();
        }
    }

    /// Waits until everything the router queued before the call is written (or was refused
    /// by the server): until a round that began after the call ended with nothing left to
    /// write. While the store does not answer this does not return: bound it with a timeout.
    /// It forces nothing; the task goes at its own pace.
    pub async fn synced(&self) {
        let mut idle = self.idle.clone();
        let start = *idle.borrow_and_update();
        // The round under way may have begun before the call: the one after it did not.
        let _ = idle.wait_for(|n| *n >= start + 2).await;
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl RedisStore {
    /// Starts the task that keeps `router` and the store in step (on the current Tokio
    /// runtime), until the handle is shut down or dropped. Every round, at most every
    /// [`flush_every`](crate::RedisStoreConfig::flush_every) while idle and at once while
    /// writes are waiting, it:
    ///
    /// 1. while the circuit is open, waits for the cool-down, then probes the store (`PING`);
    /// 2. every [`lost_poll`](crate::RedisStoreConfig::lost_poll), reads the store's restart
    ///    marker `{prefix}:epoch` (set to a random value if missing: `SET NX GET`) and the
    ///    lost records of the router's backends (`MGET`, handed to
    ///    [`Router::on_lost`]);
    /// 3. sends again the writes it holds from a failed batch (every write is idempotent);
    /// 4. reseeds, one step of [`Router::reseed_store`] a round (asked for a
    ///    [batch](crate::RedisStoreConfig::batch); each step hands out at least one write
    ///    until the pass is over), written a batch per pipeline, when the marker was missing or
    ///    changed (the store came back empty, or is new), when the circuit closed after an
    ///    outage, or when the router dropped writes (its queue was full);
    /// 5. takes a batch of the router's writes ([`Router::take_store_writes`]) and performs it
    ///    in one pipeline ([`perform`](Self::perform)), reporting binds that found the key
    ///    taken ([`Router::on_bind_taken`]).
    ///
    /// While the store does not answer, the writes wait in the router's queue (bounded by
    /// [`SharedStore::write_queue`](mcp_affinity::router::SharedStore::write_queue); past it
    /// they are dropped, counted, and made up for by the reseed that follows).
    pub fn spawn_sync<T: SessionTable + 'static>(&self, router: Arc<Router<T>>) -> SyncHandle {
        let config = &self.inner.config;
        let bound = config.shutdown_grace + config.command_timeout * 4;
        let marker = router
            .shared_store()
            .map(|s| format!("{}:epoch", s.prefix()));
        let sync = Sync {
            store: self.clone(),
            router,
            marker,
            epoch: None,
            run_id: None,
            pending: Vec::new(),
            ticket: None,
            reseed: None,
            reseed_again: false,
            dropped_seen: 0,
            recovered_seen: self.inner.breaker.recovered(),
            next_poll: Instant::now(),
            idle: watch::Sender::new(0),
        };
        let (stop, stopped) = watch::channel(false);
        SyncHandle {
            stop,
            idle: sync.idle.subscribe(),
            task: Some(tokio::spawn(sync.run(stopped))),
            bound,
        }
    }
}

struct Sync<T> {
    store: RedisStore,
    router: Arc<Router<T>>,
    /// The restart marker's key (none for a router without a shared store).
    marker: Option<String>,
    /// The marker's value as last read.
    epoch: Option<String>,
    /// The server's `run_id` as last read.
    run_id: Option<String>,
    /// Writes taken and not yet performed (a failed batch, or the rest of a reseed batch).
    pending: Vec<StoreWrite>,
    /// Held from the take until `pending` is performed, or fails once (write-throughs wait
    /// for it, and a failed batch has nothing on its way). Reseed batches have none.
    ticket: Option<Ticket>,
    reseed: Option<ReseedCursor>,
    /// Another pass was asked for while one was under way.
    reseed_again: bool,
    /// The router's count of dropped writes, as last seen.
    dropped_seen: u64,
    /// The breaker's count of recoveries, as last seen.
    recovered_seen: u64,
    next_poll: Instant,
    idle: watch::Sender<u64>,
}

impl<T: SessionTable + 'static> Sync<T> {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let busy = self.round().await;
            if *stop.borrow() {
                break;
            }
            if busy {
                tokio::task::yield_now().await;
                continue;
            }
            let wait = self.idle_wait();
            tokio::select! {
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.drain().await;
        // Nobody reads the marker any more: lookups stop comparing it.
        *self.store.inner.epoch.lock().expect("epoch lock") = None;
    }

    fn idle_wait(&self) -> Duration {
        let flush = self.store.inner.config.flush_every;
        match self.store.inner.breaker.open_until() {
            Some(until) => until.saturating_duration_since(Instant::now()).max(flush),
            None => flush,
        }
    }

    /// One round; whether there is more to do at once.
    async fn round(&mut self) -> bool {
        let store = self.store.clone();
        let inner = &*store.inner;
        if inner.breaker.circuit() != Circuit::Closed && self.store.ping().await.is_err() {
            return false;
        }
        let recovered = inner.breaker.recovered();
        if recovered != self.recovered_seen {
            // Back after an outage: what was written meanwhile by others is read at once, and
            // whatever the store missed is written again.
            self.recovered_seen = recovered;
            self.start_reseed();
            self.next_poll = Instant::now();
        }
        if Instant::now() >= self.next_poll {
            match self.poll().await {
                Ok(()) => {}
                // The server answered, with an error: a value of another type where the
                // marker or a lost record lives (something else writes under the prefix).
                // Polled again at the next period; the writes go on meanwhile.
                Err(Unavailable::Server) => {
                    inner.counters.poll_errors.fetch_add(1, Relaxed);
                }
                Err(_) => return false,
            }
            self.next_poll = Instant::now() + inner.config.lost_poll;
        }
        if self.flush().await.is_err() {
            return false;
        }
        let batch = inner.config.batch;
        // The router's writes first, a batch a round: a long reseed does not hold up what the
        // router learns meanwhile.
        self.take(batch);
        if self.flush().await.is_err() {
            return false;
        }
        if let Some(cursor) = self
            .reseed
            .as_mut()
            .filter(|_| self.router.store_queue_len() == 0)
        {
            // A batch of the reseed only once the queue is empty: what was queued before
            // its scan (a forget, say) is never performed after the scan's view of the
            // same key (and while the queue never empties, live writes go first). Not
            // ticketed: a reseed writes again what the store may miss, which no
            // write-through waits for.
            let writes = self.router.reseed_store(cursor, batch, now());
            if writes.is_empty() {
                self.reseed = None;
                if std::mem::take(&mut self.reseed_again) {
                    self.begin_reseed();
                }
            } else {
                inner
                    .counters
                    .reseed_writes
                    .fetch_add(writes.len() as u64, Relaxed);
                self.pending = writes;
                if self.flush().await.is_err() {
                    return false;
                }
            }
        }
        let queued = self.router.store_queue_len();
        inner.counters.queue_depth.store(queued, Relaxed);
        if queued == 0 && self.reseed.is_none() {
            self.idle.send_modify(|n| *n += 1);
        }
        queued > 0 || self.reseed.is_some()
    }

    /// Performs the pending writes, a batch at a time, keeping what could not be written.
    async fn flush(&mut self) -> Result<(), Unavailable> {
        let store = self.store.clone();
        let counters = &store.inner.counters;
        let batch = store.inner.config.batch;
        while !self.pending.is_empty() {
            counters.pending_writes.store(self.pending.len(), Relaxed);
            let n = batch.min(self.pending.len());
            let performed = match self.store.perform(&self.pending[..n]).await {
                Ok(performed) => performed,
                Err(e) => {
                    // Kept, to send again: nothing is on its way meanwhile.
                    self.release();
                    return Err(e);
                }
            };
            for (key, found) in &performed.taken {
                self.router.on_bind_taken(key, found, now());
            }
            self.pending.drain(..n);
        }
        counters.pending_writes.store(0, Relaxed);
        self.release();
        Ok(())
    }

    /// Takes up to `batch` of the router's writes as `pending`, under a ticket.
    fn take(&mut self, batch: usize) {
        let taken = (self.store.inner.in_flight).take(|| self.router.take_store_writes(batch));
        (self.pending, self.ticket) = (taken.writes, taken.ticket);
    }

    /// Releases the ticket of what was taken: performed, or kept to send again.
    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.performed();
        }
    }

    /// Reads the restart marker and the lost records, and checks whether the router dropped
    /// writes. A marker the server answers with an error for (a value of another type at its
    /// key) does not keep the rest from being read; the error is returned after it.
    async fn poll(&mut self) -> Result<(), Unavailable> {
        let marked = match self.marker.clone() {
            Some(marker) => self.read_marker(marker).await,
            None => Ok(()),
        };
        if matches!(marked, Err(e) if e != Unavailable::Server) {
            return marked;
        }
        let store = self.store.clone();
        let inner = &*store.inner;
        let keys = self.router.lost_keys();
        for chunk in keys.chunks(inner.config.batch) {
            let values = self.store.read(chunk).await?;
            for (key, value) in chunk.iter().zip(values) {
                // (A value that is not a number is no record of this protocol: ignored.)
                let before = value.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok());
                if let Some(before) = before {
                    self.router.on_lost(key, before, now());
                    inner.counters.lost_records.fetch_add(1, Relaxed);
                }
            }
        }
        inner.counters.lost_polls.fetch_add(1, Relaxed);
        let dropped = self.router.metrics().store_writes_dropped;
        if inner.in_flight.take_lost() {
            self.start_reseed();
        }
        if dropped > self.dropped_seen {
            self.dropped_seen = dropped;
            self.start_reseed();
        }
        marked
    }

    /// Reads (or sets) the restart marker: a store that came back empty, or another server,
    /// is warmed up and reseeded.
    async fn read_marker(&mut self, marker: String) -> Result<(), Unavailable> {
        let store = self.store.clone();
        let inner = &*store.inner;
        let candidate = epoch();
        let (found, run_id) = self.store.mark(&marker, &candidate).await?;
        let empty = found.is_none();
        let observed = found.unwrap_or(candidate);
        let first = self.epoch.is_none();
        // Another server answers (a restart from a snapshot, a failover): the marker may
        // have survived while the bindings written since were lost.
        let other_server = run_id.is_some() && self.run_id.is_some() && run_id != self.run_id;
        if run_id.is_some() {
            self.run_id = run_id;
        }
        if self.epoch.as_ref() != Some(&observed) || other_server {
            // Scripts are loaded on every store this task meets (a restarted one has none).
            self.store.load_scripts().await?;
            if !first {
                inner.counters.store_restarts.fetch_add(1, Relaxed);
            }
            self.epoch = Some(observed.clone());
            *inner.epoch.lock().expect("epoch lock") = Some((marker, observed));
            if !first {
                // The store came back empty or lost writes: absent keys may be on their way
                // back from the other routers; 503 meanwhile, not 404. (At the first look, an
                // empty store is a new one as far as this router knows: warming up then would
                // refuse a new fleet's operator keys for the warm-up.)
                self.router.on_store_restart(now());
            }
            if empty || !first {
                self.start_reseed();
            }
        }
        Ok(())
    }

    /// Asks for a pass that writes back what the router holds: it starts now, or, if one is
    /// under way, once that one ends (what it has passed may have been missed since; starting
    /// it over would never end it while writes keep being dropped).
    fn start_reseed(&mut self) {
        if self.reseed.is_some() {
            self.reseed_again = true;
        } else {
            self.begin_reseed();
        }
    }

    fn begin_reseed(&mut self) {
        self.store.inner.counters.reseeds.fetch_add(1, Relaxed);
        self.reseed = Some(ReseedCursor::default());
    }

    /// Stopping: writes what is waiting, within the grace.
    async fn drain(&mut self) {
        let store = self.store.clone();
        let inner = &*store.inner;
        let deadline = Instant::now() + inner.config.shutdown_grace;
        while Instant::now() < deadline {
            if self.pending.is_empty() {
                self.take(inner.config.batch);
                if self.pending.is_empty() {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, self.flush()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        inner
            .counters
            .queue_depth
            .store(self.router.store_queue_len(), Relaxed);
    }
}

/// The time for the router, which reads no clock.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A fresh value for the restart marker: unpredictable enough that two routers, or two
/// starts of one, never pick the same (the standard library's per-process random hash keys,
/// the time and the process id).
fn epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
