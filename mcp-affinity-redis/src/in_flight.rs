//! Batches of writes taken from the router and not yet in the store.
//!
//! Whoever takes a batch (the sync task, a write-through) holds a ticket until the batch is
//! performed or given up. A write-through waits for the tickets issued before it: the bind
//! it is for may be in a batch the sync task took a moment earlier, still on its way to the
//! store, and the client must not see the key before the store has it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mcp_affinity::router::store::StoreWrite;
use tokio::sync::Notify;

/// The tickets held.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// The next ticket, and the tickets held.
    tickets: Mutex<(u64, BTreeSet<u64>)>,
    released: Notify,
}

/// A held ticket: released when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    in_flight: Arc<InFlight>,
    id: u64,
}

impl InFlight {
    /// Takes writes with `take`, under a ticket issued in the same step (so a write-through
    /// that reads [`issued`](InFlight::issued) after its own takes sees every batch taken
    /// before). No ticket for no writes.
    pub(crate) fn take(
        self: &Arc<Self>,
        take: impl FnOnce() -> Vec<StoreWrite>,
    ) -> (Option<Ticket>, Vec<StoreWrite>) {
        let mut tickets = self.lock();
        let writes = take();
        if writes.is_empty() {
            return (None, writes);
        }
        let id = tickets.0;
        tickets.0 += 1;
        tickets.1.insert(id);
        let ticket = Ticket {
            in_flight: self.clone(),
            id,
        };
        (Some(ticket), writes)
    }

    /// How many tickets were issued so far.
    pub(crate) fn issued(&self) -> u64 {
        self.lock().0
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

impl Drop for Ticket {
    fn drop(&mut self) {
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
        let (none, empty) = in_flight.take(Vec::new);
        assert!(none.is_none() && empty.is_empty(), "no writes, no ticket");
        let (first, _) = in_flight.take(one);
        let upto = in_flight.issued();
        let (later, _) = in_flight.take(one);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.released_below(upto).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the first batch is still held");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("released once the first batch is")
            .unwrap();
        drop(later);
    }
}
