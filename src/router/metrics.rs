//! Counters: per-thread stripes of counters (no lock, no locked instruction, and no cache
//! line written by two threads on the hot path while no more than [`OWNED`] (64) live
//! threads have counted), summed into a [`Metrics`] snapshot on demand.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use super::fleet::BackendInfo;
use super::reject::Reason;
use crate::table::Occupancy;

/// Stripes a thread may own: a thread claims a free one the first time it counts and gives
/// it back when it exits.
const OWNED: usize = 64;

/// Stripes for the threads that find none free (more than [`OWNED`] count at once, or
/// long-lived threads that counted once hold the rest): handed out in turn, written with
/// atomic adds. Such a thread tries to claim an owned stripe again every [`RETRY`] counts.
const SHARED: usize = 16;

/// Counts between a sharing thread's tries to claim an owned stripe.
const RETRY: u16 = 1024;

/// One counter of one stripe. A counter of an owned stripe is written by its owner only, with
/// a plain load and store: an atomic read-modify-write (a locked instruction on x86) costs
/// more than the rest of counting.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Every counter of the router, once per stripe: a thread's counts land in its own stripe,
/// whichever counters it touches (aligned to two cache lines, which some processors fetch in
/// pairs).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Stripe {
    pub(crate) pinned: Counter,
    pub(crate) placed: Counter,
    pub(crate) rejected: [Counter; Reason::NAMES.len()],
    pub(crate) learned: Counter,
    pub(crate) forgotten: Counter,
    pub(crate) expired: Counter,
    pub(crate) revoked: Counter,
    pub(crate) purged: Counter,
    pub(crate) evicted: Counter,
    pub(crate) released: Counter,
    pub(crate) conflicts: Counter,
    pub(crate) id_mismatches: Counter,
    pub(crate) unlearned: Counter,
    pub(crate) observed: Counter,
    pub(crate) observe_limit: Counter,
    pub(crate) encoded: Counter,
    pub(crate) vetoed: Counter,
    pub(crate) down: Counter,
    pub(crate) lost: Counter,
    pub(crate) retried: Counter,
    pub(crate) store_lookups: Counter,
    pub(crate) store_found: Counter,
    pub(crate) store_unavailable: Counter,
    pub(crate) store_dropped: Counter,
    pub(crate) store_operator_refused: Counter,
    pub(crate) store_adopted: Counter,
    pub(crate) store_lost_ignored: Counter,
    pub(crate) store_restarts: Counter,
    pub(crate) tokens_sealed: Counter,
    pub(crate) tokens_opened: Counter,
    pub(crate) token_refused: [Counter; TOKEN_REFUSALS.len()],
}

/// The router's counters: [`OWNED`] stripes, one per claiming thread, then [`SHARED`] ones.
/// Counters are written only through [`add`](Counters::add), on the calling thread's stripe.
pub(crate) struct Counters(Box<[Stripe]>);

impl Default for Counters {
    fn default() -> Self {
        Counters((0..OWNED + SHARED).map(|_| Stripe::default()).collect())
    }
}

impl Counters {
    /// Adds one to `counter` of the calling thread's stripe.
    #[inline]
    pub(crate) fn incr(&self, counter: impl FnOnce(&Stripe) -> &Counter) {
        self.add(counter, 1);
    }

    /// Adds `n` to `counter` of the calling thread's stripe.
    #[inline]
    pub(crate) fn add(&self, field: impl FnOnce(&Stripe) -> &Counter, n: u64) {
        let stripe = Claim::mine();
        let cell = &field(&self.0[stripe]).0;
        if stripe < OWNED {
            // Only this thread writes this stripe while it owns it.
            cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
        } else {
            cell.fetch_add(n, Relaxed);
        }
    }

    /// One counter summed over the stripes.
    fn sum(&self, counter: impl Fn(&Stripe) -> &Counter) -> u64 {
        self.0.iter().map(|stripe| counter(stripe).get()).sum()
    }
}

/// The owned stripes' claims, a bit each. Claims are process-wide: a thread owns the same
/// index in every router's counters.
static CLAIMED: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(OWNED == u64::BITS as usize);
const _: () = assert!(OWNED + SHARED < Claim::UNSET as usize);

/// Which shared stripe the next thread that finds none free is given.
static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);

/// A thread's stripe: an owned one (below [`OWNED`]), given back when the thread exits, or a
/// shared one and the counts left until it tries to claim again; [`UNSET`](Claim::UNSET)
/// before it first counts.
///
/// Counts are exact whatever the threads do. Speed has two limits: a stripe is held until its
/// thread exits, however idle it is; and a process forked while other threads held stripes
/// starts with those stripes taken, for good.
struct Claim {
    stripe: Cell<u8>,
    retry: Cell<u16>,
}

thread_local! {
    static CLAIM: Claim = const {
        Claim {
            stripe: Cell::new(Claim::UNSET),
            retry: Cell::new(0),
        }
    };
}

impl Claim {
    const UNSET: u8 = u8::MAX;

    /// The calling thread's stripe: an owned one, claimed now if it has none (or is due to
    /// try again) and one is free; else a shared one. Once the thread's `CLAIM` is torn down
    /// (its other thread-locals' destructors may still count), the first shared stripe.
    #[inline]
    fn mine() -> usize {
        CLAIM
            .try_with(|claim| {
                let stripe = claim.stripe.get();
                if usize::from(stripe) < OWNED {
                    return usize::from(stripe);
                }
                if stripe != Claim::UNSET {
                    let retry = claim.retry.get();
                    if retry > 0 {
                        claim.retry.set(retry - 1);
                        return usize::from(stripe);
                    }
                }
                claim.renew()
            })
            .unwrap_or(OWNED)
    }

    /// Claims a free owned stripe, or takes (or keeps) a shared one until the next try.
    #[cold]
    fn renew(&self) -> usize {
        let current = self.stripe.get();
        let stripe = match Claim::claim_free() {
            Some(owned) => owned,
            None if current != Claim::UNSET => usize::from(current),
            None => OWNED + NEXT_SHARED.fetch_add(1, Relaxed) % SHARED,
        };
        // (Below `UNSET`: asserted at `CLAIMED`.)
        self.stripe.set(stripe as u8);
        self.retry.set(RETRY);
        stripe
    }

    /// Claims a free owned stripe, if one is. (Acquire: the claimer continues the counts of
    /// the thread that gave it back.)
    fn claim_free() -> Option<usize> {
        let mut claimed = CLAIMED.load(Relaxed);
        loop {
            let free = !claimed;
            if free == 0 {
                return None;
            }
            let index = free.trailing_zeros();
            match CLAIMED.compare_exchange_weak(claimed, claimed | 1 << index, Acquire, Relaxed) {
                Ok(_) => return Some(index as usize),
                Err(now) => claimed = now,
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let stripe = self.stripe.get();
        if usize::from(stripe) < OWNED {
            // Release: the next owner sees this thread's last counts.
            CLAIMED.fetch_and(!(1 << stripe), Release);
        }
    }
}

/// Why presented tokens were refused, in the order of [`Metrics::tokens_refused`]: not a
/// token (wrong length, not base64url, an unknown version) and not in the table either; no
/// key of the ring has its hint; authentication failed (forged, altered, spliced, another
/// key, tenant, kind or principal); older than the max age, or sealed in the future.
pub const TOKEN_REFUSALS: [&str; 4] = ["malformed", "unknown_key", "rejected", "expired"];

/// A snapshot of the router's counters and state: decisions by outcome and reason, keys by
/// fate, backends, table occupancy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Requests forwarded to the owner of their key.
    pub pinned: u64,
    /// Requests placed on a backend chosen by the placement policy or named by the affinity
    /// cookie (each placement: a request placed again after a failed delivery counts again).
    pub placed: u64,
    /// Requests rejected, by reason ([`Reason::as_str`] names, in [`Reason::NAMES`] order).
    pub rejected: Vec<(&'static str, u64)>,
    /// Keys learned from backend responses (and operator keys bound on a 2xx).
    pub keys_learned: u64,
    /// Keys forgotten because the conversation ended (a `DELETE` answered 2xx, or a 404 to a
    /// request carrying a legacy session when the router binds principals), and keys an
    /// operator evicted ([`Router::evict_key`](super::Router::evict_key)).
    pub keys_forgotten: u64,
    /// Keys expired after the idle TTL.
    pub keys_expired: u64,
    /// Keys revoked when a draining backend's deadline passed.
    pub keys_revoked: u64,
    /// Keys purged because their owner is no longer live: removed (a restart removes it too),
    /// down (a refused connection or refused health checks), or a lost incarnation (a lost
    /// record read from the shared store). Also a key whose revoked owner loses it to a new
    /// binding (an operator key bound afresh, an id another backend mints), and a key this
    /// router drops because the shared store holds a binding it cannot adopt yet
    /// ([`Router::on_bind_taken`](super::Router::on_bind_taken)). Keys that a drain deadline
    /// revokes count in [`keys_revoked`](Metrics::keys_revoked).
    pub keys_purged: u64,
    /// Keys evicted to make room in a full table.
    pub keys_evicted: u64,
    /// Legacy SSE bindings released when their stream ended.
    pub keys_released: u64,
    /// New keys a backend minted that another backend already owned (refused).
    pub key_conflicts: u64,
    /// Responses to a keyed request that presented another session id (not learned).
    pub id_mismatches: u64,
    /// Keys a backend revealed that could not be stored: not routable (too long, bad bytes),
    /// the table full, a binding the shared store could not be sent, or a legacy SSE
    /// endpoint left unsealed.
    pub keys_unlearned: u64,
    /// Response bodies observed for a key.
    pub bodies_observed: u64,
    /// Observations stopped at the byte bound before finding a key.
    pub observe_limit_hits: u64,
    /// Bodies that would have been observed but were content-encoded (compressed).
    pub bodies_encoded: u64,
    /// Placement choices the caller vetoed.
    pub vetoes: u64,
    /// Times a backend was declared down (a refused connection, or refused health checks).
    pub owners_down: u64,
    /// Keys whose owner went down: sessions that died with their backend's process.
    pub keys_lost: u64,
    /// Times a request was placed again after a failed delivery, within
    /// [`placement_attempts`](super::RouterBuilder::placement_attempts): any placed request (a
    /// conversation start, a 2026-07-28 call, an operator key's first request, a cookie hint),
    /// and a request for an operator key whose owner refused the connection (bound afresh).
    pub placements_retried: u64,
    /// Presented keys looked up in the shared store ([`Routed::Lookup`](super::Routed::Lookup)).
    pub store_lookups: u64,
    /// Of those, found with a live owner and routed.
    pub store_found: u64,
    /// Of those, answered 503 because the store was unavailable.
    pub store_unavailable: u64,
    /// Store writes dropped because the write queue was full (reseed when the store is back).
    pub store_writes_dropped: u64,
    /// Operator keys bound in this router's table only: past the store's budget of
    /// operator-key bindings ([`SharedStore::operator_binds`](super::SharedStore::operator_binds)).
    pub store_operator_binds_refused: u64,
    /// Writes waiting in the store queue.
    pub store_queue: usize,
    /// Keys another router bound first, whose owner this router adopted.
    pub store_adopted: u64,
    /// Lost records ignored because they were dated beyond this router's clock plus the skew.
    pub store_lost_ignored: u64,
    /// Times the store came back empty ([`Router::on_store_restart`](super::Router::on_store_restart)).
    pub store_restarts: u64,
    /// Session ids sealed into tokens (feature `seal`).
    pub tokens_sealed: u64,
    /// Requests routed by a token that opened.
    pub tokens_opened: u64,
    /// Presented tokens refused, by cause ([`TOKEN_REFUSALS`] names, in that order): each
    /// answered as an unknown session.
    pub tokens_refused: Vec<(&'static str, u64)>,
    /// Every backend, with its state and live keys.
    pub backends: Vec<BackendInfo>,
    /// How full the session table is.
    pub table: Occupancy,
}

impl Metrics {
    /// How many requests were rejected for the reason named `name` ([`Reason::as_str`]).
    pub fn rejected(&self, name: &str) -> u64 {
        self.rejected
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, v)| v).sum()
    }
}

impl Counters {
    pub(crate) fn snapshot(
        &self,
        backends: Vec<BackendInfo>,
        table: Occupancy,
        store_queue: usize,
    ) -> Metrics {
        Metrics {
            pinned: self.sum(|s| &s.pinned),
            placed: self.sum(|s| &s.placed),
            rejected: Reason::NAMES
                .iter()
                .enumerate()
                .map(|(i, name)| (*name, self.sum(|s| &s.rejected[i])))
                .collect(),
            keys_learned: self.sum(|s| &s.learned),
            keys_forgotten: self.sum(|s| &s.forgotten),
            keys_expired: self.sum(|s| &s.expired),
            keys_revoked: self.sum(|s| &s.revoked),
            keys_purged: self.sum(|s| &s.purged),
            keys_evicted: self.sum(|s| &s.evicted),
            keys_released: self.sum(|s| &s.released),
            key_conflicts: self.sum(|s| &s.conflicts),
            id_mismatches: self.sum(|s| &s.id_mismatches),
            keys_unlearned: self.sum(|s| &s.unlearned),
            bodies_observed: self.sum(|s| &s.observed),
            observe_limit_hits: self.sum(|s| &s.observe_limit),
            bodies_encoded: self.sum(|s| &s.encoded),
            vetoes: self.sum(|s| &s.vetoed),
            owners_down: self.sum(|s| &s.down),
            keys_lost: self.sum(|s| &s.lost),
            placements_retried: self.sum(|s| &s.retried),
            store_lookups: self.sum(|s| &s.store_lookups),
            store_found: self.sum(|s| &s.store_found),
            store_unavailable: self.sum(|s| &s.store_unavailable),
            store_writes_dropped: self.sum(|s| &s.store_dropped),
            store_operator_binds_refused: self.sum(|s| &s.store_operator_refused),
            store_queue,
            store_adopted: self.sum(|s| &s.store_adopted),
            store_lost_ignored: self.sum(|s| &s.store_lost_ignored),
            store_restarts: self.sum(|s| &s.store_restarts),
            tokens_sealed: self.sum(|s| &s.tokens_sealed),
            tokens_opened: self.sum(|s| &s.tokens_opened),
            tokens_refused: TOKEN_REFUSALS
                .iter()
                .enumerate()
                .map(|(i, name)| (*name, self.sum(|s| &s.token_refused[i])))
                .collect(),
            backends,
            table,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the test starts threads of its own
mod tests {
    use std::sync::{Arc, Barrier, LazyLock, mpsc};
    use std::thread;

    use super::*;

    fn shared_sum(counters: &Counters, counter: impl Fn(&Stripe) -> &Counter) -> u64 {
        counters.0[OWNED..].iter().map(|s| counter(s).get()).sum()
    }

    /// Counts `pinned` of [`EXITING`] when its thread's storage is torn down.
    struct CountOnExit;

    impl Drop for CountOnExit {
        fn drop(&mut self) {
            EXITING.incr(|s| &s.pinned);
        }
    }

    static EXITING: LazyLock<Counters> = LazyLock::new(Counters::default);

    thread_local! {
        static BEFORE_CLAIM: CountOnExit = const { CountOnExit };
        static AFTER_CLAIM: CountOnExit = const { CountOnExit };
    }

    // One test, not several: the stripes' claims are the process's, so the parts must not run
    // at once. (Threads are joined by hand: a scope's end does not wait for their
    // thread-local destructors, which give the stripes back.)
    #[test]
    fn stripes_are_owned_shared_given_back_and_no_count_is_lost() {
        // More threads than owned stripes, all counting at once.
        const THREADS: usize = OWNED + OWNED / 2;
        const EACH: u64 = 20_000;
        let counters = Counters::default();
        let all_counting = Arc::new(Barrier::new(THREADS));
        thread::scope(|scope| {
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (counters, all_counting) = (&counters, all_counting.clone());
                    scope.spawn(move || {
                        counters.incr(|s| &s.placed);
                        // Every thread has counted once (and claimed a stripe or taken a
                        // shared one) before any counts the rest.
                        all_counting.wait();
                        for _ in 1..EACH {
                            counters.add(|s| &s.placed, 1);
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        });
        assert_eq!(counters.sum(|s| &s.placed), THREADS as u64 * EACH);
        assert!(
            shared_sum(&counters, |s| &s.placed) >= (THREADS - OWNED) as u64,
            "the first counts of the threads past {OWNED} land on shared stripes"
        );

        // One after another, far more threads than stripes: each finds one free (the other
        // tests of this binary count on a few threads at a time).
        for _ in 0..4 * OWNED {
            thread::spawn(|| {
                EXITING.incr(|s| &s.placed);
                assert!(
                    Claim::mine() < OWNED,
                    "no stripe free: one was not given back"
                );
            })
            .join()
            .unwrap();
        }
        assert_eq!(EXITING.sum(|s| &s.placed), 4 * OWNED as u64);

        // Counts from other thread-local destructors, before and after the claim's own.
        thread::spawn(|| {
            BEFORE_CLAIM.with(|_| {});
            EXITING.incr(|s| &s.learned);
            AFTER_CLAIM.with(|_| {});
        })
        .join()
        .unwrap();
        assert_eq!(EXITING.sum(|s| &s.pinned), 2);

        // A thread that found every stripe taken (64 threads hold them) claims one within
        // `RETRY` counts of one coming free.
        let (counted_tx, counted_rx) = mpsc::channel();
        let release = Arc::new(Barrier::new(OWNED + 1));
        let holders: Vec<_> = (0..OWNED)
            .map(|_| {
                let (counted_tx, release) = (counted_tx.clone(), release.clone());
                thread::spawn(move || {
                    EXITING.incr(|s| &s.forgotten);
                    counted_tx.send(()).unwrap();
                    release.wait();
                })
            })
            .collect();
        (0..OWNED).for_each(|_| counted_rx.recv().unwrap());
        let (shared_tx, shared_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let late = thread::spawn(move || {
            EXITING.incr(|s| &s.forgotten);
            shared_tx.send(Claim::mine() >= OWNED).unwrap();
            go_rx.recv().unwrap();
            // (The `mine` above used one count of the retry: this loop tries again within
            // it, with one to spare.)
            for _ in 0..=RETRY {
                EXITING.incr(|s| &s.forgotten);
            }
            Claim::mine() < OWNED
        });
        // (Unless a thread of another test gave one back in between: then there is nothing
        // to wait for.)
        let was_shared = shared_rx.recv().unwrap();
        release.wait();
        holders.into_iter().for_each(|t| t.join().unwrap());
        go_tx.send(()).unwrap();
        let owns = late.join().unwrap();
        assert!(
            owns || !was_shared,
            "no stripe claimed after {RETRY} counts"
        );
        assert_eq!(
            EXITING.sum(|s| &s.forgotten),
            OWNED as u64 + 2 + u64::from(RETRY)
        );
    }
}
