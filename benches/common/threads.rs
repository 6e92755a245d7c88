//! Running one operation on several threads at once, for the benches' concurrent groups.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The thread counts a concurrent group is timed at: `BENCH_THREADS` (a comma-separated list,
/// such as `1,2,4,8,16`) if set, else 1, 2 and every power of two up to this machine's
/// parallelism, and the parallelism itself.
pub fn counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("BENCH_THREADS") {
        let counts: Vec<usize> = list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .filter(|&n| n > 0)
            .collect();
        assert!(!counts.is_empty(), "BENCH_THREADS={list}: expected 1,2,4,…");
        return counts;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts: Vec<usize> = (0..).map(|p| 1 << p).take_while(|&n| n <= cores).collect();
    if counts.last() != Some(&cores) {
        counts.push(cores);
    }
    counts
}

/// `threads` threads doing `iters` operations each (`op(thread, i)`), released together;
/// returns the wall time from the first start to the last finish, so that criterion's time
/// per iteration is the time per operation per thread, and a throughput of `threads`
/// elements per iteration is the operations per second of all threads together.
pub fn on_threads(threads: usize, iters: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    let (first, last) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (op, barrier) = (&op, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        let times: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let first = times.iter().map(|t| t.0).min().unwrap();
        let last = times.iter().map(|t| t.1).max().unwrap();
        (first, last)
    });
    last - first
}
