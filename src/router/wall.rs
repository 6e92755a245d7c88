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

    /// Unix seconds at `now`, the second it falls in (saturating at the ends of `u32`: the
    /// year 2106).
    pub(crate) fn unix(&self, now: Instant) -> u32 {
        let unix = match now.checked_duration_since(self.at) {
            Some(after) => self.unix.saturating_add(after.as_secs()),
            // Before the reading, down too: 1.5 s before it is two seconds back, not one (a
            // binding a router cached from before it started read a second late, escaped a
            // loss that condemned it elsewhere and was written back misdated: the twelfth
            // review, R12-1).
            None => {
                let before = self.at.saturating_duration_since(now);
                let back = before.as_secs() + u64::from(before.subsec_nanos() > 0);
                self.unix.saturating_sub(back)
            }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::WallClock;

    #[test]
    #[allow(clippy::disallowed_methods)] // the test's one reading of the clock
    fn an_instant_counts_in_the_second_it_falls_in_on_either_side_of_the_reading() {
        let at = Instant::now();
        let clock = WallClock::new(at, 1_000);
        let ms = Duration::from_millis;
        assert_eq!(clock.unix(at), 1_000);
        assert_eq!(clock.unix(at + ms(999)), 1_000);
        assert_eq!(clock.unix(at + ms(1_000)), 1_001);
        assert_eq!(clock.unix(at - ms(1)), 999);
        assert_eq!(clock.unix(at - ms(1_000)), 999);
        assert_eq!(clock.unix(at - ms(1_500)), 998);
        // And back: the instant of a second is in that second.
        for now in [at + ms(250), at + ms(3_700)] {
            for second in [995, 999, 1_000, 1_002] {
                assert_eq!(clock.unix(clock.instant(second, now)), second);
            }
        }
    }
}
