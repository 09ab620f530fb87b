use crate::decision::{Decision, HaConfig, Memory, Observation, Reason};
use crate::types::Mono;

/// Placeholder until the decision logic lands (next commit).
pub fn decide(memory: &Memory, _obs: &Observation, config: &HaConfig, now: Mono) -> Decision {
    Decision { actions: vec![], reason: Reason::NoLeaderWaiting, next_memory: memory.clone(), wake_at: now + config.loop_wait }
}
