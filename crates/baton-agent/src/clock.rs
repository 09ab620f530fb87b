//! The real clock: `CLOCK_BOOTTIME` (`baton_guard::clock`: the fence guard reads the same
//! clock), which keeps counting while the machine is suspended, so a lease deadline computed
//! before a suspend is still honest after it.

use baton_core::{Clock, Mono};

pub use baton_guard::clock::SystemClock;

/// How long until `deadline` on `clock` (zero when it has passed).
pub(crate) fn until(clock: &dyn Clock, deadline: Mono) -> std::time::Duration {
    deadline.saturating_since(clock.now())
}
