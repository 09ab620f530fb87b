//! When `observe` may reuse the last `pg_controldata` reading instead of forking the tool
//! every cycle.
//!
//! While a postmaster runs and answers SQL, every decision takes the volatile facts of the
//! control file from SQL instead: the timeline and WAL position (`PgState::timeline`,
//! `PgState::wal_position`), primary or standby (`may_be_primary`); the control file's state,
//! checkpoint and timeline are read by `decide` only while PostgreSQL is stopped (rules 4 and
//! the rejoin) or does not answer SQL. What it still reads from the control data of a running
//! server is fixed for the postmaster's lifetime: the system identifier (a new one needs an
//! initdb or a clone, with the postmaster stopped) and `rewindable` (`wal_log_hints` takes
//! effect at postmaster start, data checksums at initdb). So a reading is reused only while
//! the *same* postmaster (PID and start time: a restarted or replaced one is another) still
//! runs, this round's SQL answered and the data directory is not empty (its listing is cheap
//! and still taken every round); anything else — stopped, a new postmaster, SQL silent
//! (hung, crashed backend, starting up), no `/proc` to tell postmasters apart — reads the
//! control file again.

use baton_core::ControlData;

use crate::procs;

/// One postmaster's identity: its PID and start time (clock ticks since boot), so a PID
/// reused by a later postmaster is not taken for the earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Incarnation {
    pub(crate) pid: i32,
    pub(crate) started: u64,
}

impl Incarnation {
    /// The running postmaster `pid`'s identity; `None` without `/proc` (no start time).
    pub(crate) fn of(pid: i32) -> Option<Incarnation> {
        procs::stat(pid).map(|s| Incarnation {
            pid,
            started: s.starttime,
        })
    }
}

/// The last control data read while a postmaster ran, and which postmaster that was.
#[derive(Default)]
pub(crate) struct ControlCache {
    last: Option<(Incarnation, ControlData)>,
    /// Readings reused instead of running `pg_controldata` (for tests and diagnostics).
    pub(crate) reused: u64,
}

impl ControlCache {
    /// The reading to reuse for this round: only for the same running postmaster, when
    /// `answered`: its SQL answered in this round (and the data directory is not empty).
    pub(crate) fn reusable(
        &self,
        running: Option<Incarnation>,
        answered: bool,
    ) -> Option<&ControlData> {
        let running = running?;
        match &self.last {
            Some((seen, control)) if *seen == running && answered => Some(control),
            _ => None,
        }
    }

    /// Keep a fresh reading taken while `running` ran (forget it when nothing runs).
    pub(crate) fn store(&mut self, running: Option<Incarnation>, control: &ControlData) {
        self.last = running.map(|r| (r, control.clone()));
    }

    /// Forget the reading (the postmaster stopped, or the read failed).
    pub(crate) fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{ClusterState, Timeline};

    fn pm(pid: i32, started: u64) -> Option<Incarnation> {
        Some(Incarnation { pid, started })
    }

    fn control(system_id: &str) -> ControlData {
        ControlData {
            system_id: system_id.into(),
            state: ClusterState::InArchiveRecovery,
            timeline: Timeline(3),
            ..ControlData::default()
        }
    }

    #[test]
    fn a_reading_is_reused_for_the_same_postmaster_while_sql_answers() {
        let mut cache = ControlCache::default();
        assert_eq!(cache.reusable(pm(100, 7), true), None, "nothing read yet");
        cache.store(pm(100, 7), &control("1"));
        assert_eq!(cache.reusable(pm(100, 7), true), Some(&control("1")));
    }

    #[test]
    fn the_control_file_is_read_again_when_sql_does_not_answer() {
        let mut cache = ControlCache::default();
        cache.store(pm(100, 7), &control("1"));
        // A running server that does not answer SQL: its state (may it be a primary?) and
        // timeline come from the control file, which must be fresh.
        assert_eq!(cache.reusable(pm(100, 7), false), None);
    }

    #[test]
    fn the_control_file_is_read_again_for_another_postmaster_or_none() {
        let mut cache = ControlCache::default();
        cache.store(pm(100, 7), &control("1"));
        assert_eq!(cache.reusable(None, true), None, "stopped");
        assert_eq!(cache.reusable(pm(101, 7), true), None, "another PID");
        assert_eq!(
            cache.reusable(pm(100, 8), true),
            None,
            "the PID reused by a later postmaster"
        );
    }

    #[test]
    fn a_reading_without_a_postmaster_or_after_clear_is_not_kept() {
        let mut cache = ControlCache::default();
        cache.store(None, &control("1"));
        assert_eq!(cache.reusable(pm(100, 7), true), None);
        cache.store(pm(100, 7), &control("1"));
        cache.clear();
        assert_eq!(cache.reusable(pm(100, 7), true), None);
    }

    #[test]
    fn this_process_has_an_incarnation() {
        let me = std::process::id() as i32;
        let inc = Incarnation::of(me).expect("/proc is mounted");
        assert_eq!(inc.pid, me);
        assert_eq!(Incarnation::of(me), Some(inc), "the start time is stable");
    }
}
