//! Has a member forked off the leader's timeline? Patroni's `_check_timeline_and_lsn`, as a
//! pure function of the positions both sides publish.

use crate::types::{Lsn, Timeline};
use crate::view::HistoryLine;

/// Where a member's WAL ends, compared with the leader's timeline history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// Every WAL record the member holds is in the leader's history: it can stream.
    OnHistory,
    /// The member holds WAL on `timeline` past `switch`, the point where the leader's history
    /// left that timeline (or a timeline the leader never had): it needs `pg_rewind`.
    Diverged {
        timeline: Timeline,
        switch: Option<Lsn>,
    },
    /// No conclusion: the history lacks the member's timeline, or the member is on a later
    /// timeline than the leader has published.
    Unknown,
}

/// Compare a member on `timeline` whose WAL ends at `end` with a leader on `leader_timeline`
/// whose timeline history (oldest first, one line per timeline switch: the timeline that
/// ended and the position where it ended) is `history`.
pub fn divergence(
    timeline: Timeline,
    end: Lsn,
    leader_timeline: Timeline,
    history: &[HistoryLine],
) -> Divergence {
    if timeline == leader_timeline {
        return Divergence::OnHistory;
    }
    if timeline > leader_timeline {
        // Ahead of what the leader published: right after its promotion, the leader's member
        // key and the history lag behind the standbys that already follow it. No conclusion.
        return Divergence::Unknown;
    }
    match history.iter().find(|h| h.timeline == timeline) {
        Some(h) if end > h.lsn => Divergence::Diverged {
            timeline,
            switch: Some(h.lsn),
        },
        Some(_) => Divergence::OnHistory,
        None => Divergence::Unknown,
    }
}

/// The leader's timeline: the larger of what its member key says and what the history implies
/// (a history line for timeline N means the leader is at least on N + 1).
pub fn leader_timeline(published: Option<Timeline>, history: &[HistoryLine]) -> Option<Timeline> {
    let from_history = history.iter().map(|h| Timeline(h.timeline.0 + 1)).max();
    published.max(from_history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tl: u32, lsn: u64) -> HistoryLine {
        HistoryLine {
            timeline: Timeline(tl),
            lsn: Lsn(lsn),
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: None,
        }
    }

    #[test]
    fn a_member_is_judged_against_the_switch_point_of_its_timeline() {
        let history = [line(1, 1000), line(2, 5000)];
        let tl3 = Timeline(3);
        assert_eq!(
            divergence(Timeline(1), Lsn(1000), tl3, &history),
            Divergence::OnHistory,
            "up to the switch point is shared"
        );
        assert_eq!(
            divergence(Timeline(1), Lsn(1001), tl3, &history),
            Divergence::Diverged {
                timeline: Timeline(1),
                switch: Some(Lsn(1000))
            }
        );
        assert_eq!(
            divergence(Timeline(2), Lsn(4000), tl3, &history),
            Divergence::OnHistory
        );
        assert_eq!(
            divergence(Timeline(3), Lsn(9000), tl3, &history),
            Divergence::OnHistory,
            "same timeline"
        );
        assert_eq!(
            divergence(Timeline(4), Lsn(1), tl3, &history),
            Divergence::Unknown,
            "ahead of what the leader published (it may not have published its promotion yet)"
        );
        assert_eq!(
            divergence(Timeline(1), Lsn(9000), tl3, &[line(2, 5000)]),
            Divergence::Unknown,
            "history without the member's timeline"
        );
    }

    #[test]
    fn the_leader_timeline_is_at_least_one_past_its_history() {
        let history = [line(1, 1000), line(2, 5000)];
        assert_eq!(leader_timeline(None, &history), Some(Timeline(3)));
        assert_eq!(
            leader_timeline(Some(Timeline(2)), &history),
            Some(Timeline(3)),
            "a member key not yet updated after the promotion"
        );
        assert_eq!(
            leader_timeline(Some(Timeline(4)), &history),
            Some(Timeline(4))
        );
        assert_eq!(leader_timeline(None, &[]), None);
    }
}
