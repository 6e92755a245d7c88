//! Batches of writes taken from the router and not yet in the store.
//!
//! Whoever takes a batch from the router's queue (the sync task, a write-through) holds a
//! ticket until the batch is performed, or failed and kept to retry. A write-through waits
//! for the tickets issued before its last take: the bind it is for may be in a batch the sync
//! task took a moment earlier, still on its way to the store, and the client must not see the
//! key before the store has it. A ticket dropped otherwise (its taker was cancelled) marks
//! its writes lost, for the sync task to write everything again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mcp_affinity::router::store::StoreWrite;
use tokio::sync::Notify;

/// The tickets held.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// The next ticket, and the tickets held.
    tickets: Mutex<(u64, BTreeSet<u64>)>,
    released: Notify,
    /// A batch was dropped unperformed.
    lost: AtomicBool,
}

/// A held ticket: released by [`performed`](Ticket::performed), or, its writes lost, when
/// dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    in_flight: Arc<InFlight>,
    id: u64,
    performed: bool,
}

/// What [`InFlight::take`] took.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The writes, oldest first.
    pub(crate) writes: Vec<StoreWrite>,
    /// Held while they are on their way (none for no writes).
    pub(crate) ticket: Option<Ticket>,
    /// The tickets issued before this take: every write queued before it was taken under
    /// one of them, or by this one.
    pub(crate) before: u64,
}

impl InFlight {
    /// Takes writes from the router's queue with `take`, under a ticket issued in the same
    /// step. No ticket for no writes.
    pub(crate) fn take(self: &Arc<Self>, take: impl FnOnce() -> Vec<StoreWrite>) -> Taken {
        let mut tickets = self.lock();
        let before = tickets.0;
        let writes = take();
        if writes.is_empty() {
            return Taken {
                writes,
                ticket: None,
                before,
            };
        }
        tickets.0 += 1;
        tickets.1.insert(before);
        let ticket = Ticket {
            in_flight: self.clone(),
            id: before,
            performed: false,
        };
        Taken {
            writes,
            ticket: Some(ticket),
            before,
        }
    }

    /// Whether a batch was dropped unperformed since the last call.
    pub(crate) fn take_lost(&self) -> bool {
        self.lost.swap(false, Relaxed)
    }

    /// Waits until every ticket below `upto` is released.
    pub(crate) async fn released_below(&self, upto: u64) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check: a release between the two is not missed.
            released.as_mut().enable();
            if self.lock().1.range(..upto).next().is_none() {
                return;
            }
            released.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, BTreeSet<u64>)> {
        // Nothing panics while holding it; were it poisoned, the set is still consistent.
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ticket {
    /// The writes are in the store, or failed and are kept by their taker to retry.
    pub(crate) fn performed(mut self) {
        self.performed = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.performed {
            self.in_flight.lost.store(true, Relaxed);
        }
        self.in_flight.lock().1.remove(&self.id);
        self.in_flight.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> Vec<StoreWrite> {
        vec![StoreWrite::Forget {
            key: "k".into(),
            owner: "o".into(),
        }]
    }

    #[tokio::test]
    async fn a_waiter_waits_for_the_tickets_issued_before_it_and_no_others() {
        let in_flight = Arc::new(InFlight::default());
        let none = in_flight.take(Vec::new);
        assert!(
            none.ticket.is_none() && none.writes.is_empty(),
            "no writes, no ticket"
        );
        let first = in_flight.take(one);
        let upto = in_flight.take(Vec::new).before;
        let later = in_flight.take(one);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.released_below(upto).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the first batch is still held");
        first.ticket.unwrap().performed();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("released once the first batch is")
            .unwrap();
        assert!(!in_flight.take_lost(), "performed, not lost");
        drop(later);
        assert!(in_flight.take_lost(), "dropped unperformed: lost");
    }
}
