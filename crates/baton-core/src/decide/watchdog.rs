//! The watchdog rules (Patroni's `watchdog.mode`): the watchdog is armed before this member
//! takes the leader role (an `ArmWatchdog` action ahead of the first action that does), and
//! with `watchdog.mode: required` a member whose watchdog cannot be armed does not race (a
//! `NotHealthiest` reason, so the others see `watchdog_failed` and take over) and gives the
//! leader key up when it holds it (Patroni's "Demoting self because watchdog could not be
//! activated"). Kicking and disarming are the agent's (`baton-agent::watchdog`): they follow
//! the lease renewals and the leading signal, not the decisions. In maintenance mode nothing
//! here applies (Patroni does not activate the watchdog while paused).

use crate::decision::{Action, Memory, Reason, StartRole, StopMode, WatchdogMode};

use super::{Ctx, may_be_primary};

impl Ctx<'_> {
    /// `watchdog.mode: required` and the watchdog is neither armed nor armable.
    pub(super) fn watchdog_blocks(&self) -> bool {
        let wd = self.obs.watchdog;
        self.cfg.watchdog == WatchdogMode::Required && !self.cfg.pause && wd.failed && !wd.armed
    }

    /// We hold the key and the required watchdog cannot be armed: stop a primary, give the
    /// key up. Runs before PostgreSQL is started or promoted under the key.
    pub(super) fn watchdog_unavailable(&self, next: &mut Memory) -> Option<(Vec<Action>, Reason)> {
        if !self.holds_key() || !self.watchdog_blocks() {
            return None;
        }
        next.following = None;
        let demoting = may_be_primary(&self.obs.pg);
        let mut actions = vec![];
        if demoting {
            actions.push(Action::StopPostgres {
                mode: StopMode::Immediate,
            });
        }
        actions.push(Action::ReleaseLeader { last_lsn: None });
        Some((actions, Reason::WatchdogUnavailable { demoting }))
    }

    /// Put `ArmWatchdog` first when the actions make (or keep) this member the leader and the
    /// watchdog is not armed yet: before the leader key is taken, PostgreSQL promoted or
    /// started as a primary, a cluster bootstrapped; and for a leader whose watchdog is not
    /// armed (agent restarted, device re-opened). With `automatic`, a watchdog that already
    /// failed is not tried again.
    pub(super) fn arm_watchdog_first(&self, actions: &mut Vec<Action>) {
        let wd = self.obs.watchdog;
        let wanted = match self.cfg.watchdog {
            WatchdogMode::Off => false,
            WatchdogMode::Automatic => !wd.failed,
            WatchdogMode::Required => true,
        };
        if !wanted || wd.armed || self.cfg.pause {
            return;
        }
        let takes_lead = actions.iter().any(|a| {
            matches!(
                a,
                Action::AcquireLeader
                    | Action::ReattachLeader
                    | Action::Promote
                    | Action::BootstrapCluster
                    | Action::BootstrapStandbyCluster { .. }
                    | Action::StartPostgres {
                        role: StartRole::Primary
                    }
            )
        });
        let stays_leader = self.holds_key()
            && may_be_primary(&self.obs.pg)
            && !actions.iter().any(|a| {
                matches!(
                    a,
                    Action::HandOver | Action::StopPostgres { .. } | Action::ReleaseLeader { .. }
                )
            });
        if takes_lead || stays_leader {
            actions.insert(0, Action::ArmWatchdog);
        }
    }
}
