//! Opening a token allocates nothing, whatever the outcome, and neither does sealing one: a
//! counting global allocator proves it (as `router_alloc` does for routing).

mod seal_util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mcp_affinity::seal::OpenError;
use seal_util::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-locals are
// const-initialised `Cell`s, so touching them never allocates (no recursion).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn opening_a_token_allocates_nothing() {
    // Two keys with other hints, so the ring is searched.
    let keyring = ring(&[1, 2, 3]);
    let nonces = nonces();
    let longest = "~".repeat(256);
    let tokens: Vec<_> = [UUID, PYTHON_HEX, RAW_36, &longest]
        .iter()
        .flat_map(|id| {
            [
                ring(&[1]).seal(&nonces, &claims(id), &binding()),
                ring(&[3]).seal(&nonces, &claims(id), &binding()),
            ]
        })
        .collect();
    let mut forged = tokens[0].to_string().into_bytes();
    forged[40] = if forged[40] == b'A' { b'B' } else { b'A' };
    let unknown = ring(&[9]).seal(&nonces, &claims(UUID), &binding());
    let mut opened = Vec::with_capacity(tokens.len());

    let n = allocations_in(|| {
        for token in &tokens {
            opened.push(keyring.open(token.as_bytes(), &binding()));
        }
    });
    assert_eq!(n, 0, "allocations while opening {} tokens", tokens.len());
    assert!(opened.iter().all(Result::is_ok));

    let mut refused = Vec::with_capacity(4);
    let n = allocations_in(|| {
        refused.push(keyring.open(&forged, &binding()).err());
        refused.push(keyring.open(unknown.as_bytes(), &binding()).err());
        refused.push(keyring.open(b"not a token", &binding()).err());
        refused.push(keyring.open(&[b'A'; 4096], &binding()).err());
    });
    assert_eq!(n, 0, "allocations while refusing tokens");
    let rejected = if [1, 2, 3].iter().any(|&k| key(k).hint() == key(9).hint()) {
        OpenError::Rejected
    } else {
        OpenError::UnknownKey
    };
    assert_eq!(
        refused,
        [
            Some(OpenError::Rejected),
            Some(rejected),
            Some(OpenError::Malformed),
            Some(OpenError::Malformed)
        ]
    );
}

#[test]
fn sealing_a_token_allocates_nothing() {
    let keyring = ring(&[1, 2]);
    let nonces = nonces();
    let all: Vec<_> = [UUID, PYTHON_HEX, RAW_36]
        .iter()
        .map(|id| claims(id))
        .collect();
    let mut tokens = Vec::with_capacity(all.len());
    let n = allocations_in(|| {
        for claims in &all {
            tokens.push(keyring.seal(&nonces, claims, &binding()));
        }
    });
    assert_eq!(n, 0);
    assert_eq!(tokens.len(), 3);
}
