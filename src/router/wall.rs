//! The wall clock, read once by the embedder: the router reads no clock, but sealed ids and a
//! shared store must agree across routers on *when*, so Unix time is counted from one reading
//! of the monotonic clock and the wall clock taken together.

use std::time::Instant;

/// A monotonic instant and the Unix second it was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallClock {
    at: Instant,
    unix: u64,
}

impl WallClock {
    pub(crate) fn new(at: Instant, unix: u64) -> Self {
        WallClock { at, unix }
    }

    /// The instant the wall clock was read at: whole seconds after or before it are the
    /// starts of Unix seconds, as this clock counts them.
    pub(crate) fn anchor(&self) -> Instant {
        self.at
    }

    /// Unix seconds at `now` (saturating at the ends of `u32`: the year 2106).
    pub(crate) fn unix(&self, now: Instant) -> u32 {
        let unix = match now.checked_duration_since(self.at) {
            Some(after) => self.unix.saturating_add(after.as_secs()),
            None => self
                .unix
                .saturating_sub(self.at.saturating_duration_since(now).as_secs()),
        };
        u32::try_from(unix).unwrap_or(u32::MAX)
    }

    /// The instant of Unix second `unix`, counted back (or on) from `now`'s reading; `now` if
    /// it is too far back to count.
    pub(crate) fn instant(&self, unix: u32, now: Instant) -> Instant {
        let here = self.unix(now);
        if unix <= here {
            let back = std::time::Duration::from_secs(u64::from(here - unix));
            now.checked_sub(back).unwrap_or(now)
        } else {
            let ahead = std::time::Duration::from_secs(u64::from(unix - here));
            now.checked_add(ahead).unwrap_or(now)
        }
    }
}
