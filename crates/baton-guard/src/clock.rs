//! The real clock: `CLOCK_BOOTTIME`, which keeps counting while the machine is suspended, so a
//! lease deadline computed before a suspend is still honest after it.

use baton_core::{Clock, Mono};
use nix::time::{ClockId, clock_gettime};

/// Milliseconds of `CLOCK_BOOTTIME`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Mono {
        let ts =
            clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is available on Linux");
        let ms = (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000;
        Mono::from_millis(ms)
    }

    fn unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}
