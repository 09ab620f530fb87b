//! Has a member forked off the leader's timeline? Patroni's `_check_timeline_and_lsn`, as a
//! pure function of the positions both sides publish.

use crate::pg::TimelineStart;
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

/// Is the member's timeline `start.timeline` another timeline than the cluster's of that
/// number? Its own history says it began where `start.parent` ended, at `start.at`; the
/// cluster's history (the leader's, on `leader_timeline`) says where `start.parent` ended and
/// which timeline followed. A different switch point, or another successor, means two
/// promotions made the same timeline number (Patroni's `_check_timeline_and_lsn` compares
/// the same lines of the two history files). Returns the cluster's switch point of
/// `start.parent` when they disagree; `None` when they agree or the cluster's history has no
/// line for `start.parent` (no conclusion).
pub fn foreign_timeline(
    start: TimelineStart,
    leader_timeline: Timeline,
    history: &[HistoryLine],
) -> Option<Lsn> {
    if start.timeline > leader_timeline {
        return None;
    }
    let i = history.iter().position(|h| h.timeline == start.parent)?;
    let successor = history.get(i + 1).map_or(leader_timeline, |h| h.timeline);
    let theirs = history[i].lsn;
    (theirs != start.at || successor != start.timeline).then_some(theirs)
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
    fn a_timeline_number_made_by_another_promotion_is_foreign() {
        let start = |tl: u32, parent: u32, at: u64| TimelineStart {
            timeline: Timeline(tl),
            parent: Timeline(parent),
            at: Lsn(at),
        };
        let history = [line(1, 1000), line(2, 5000)];
        let tl3 = Timeline(3);
        assert_eq!(
            foreign_timeline(start(3, 2, 5000), tl3, &history),
            None,
            "the cluster's timeline 3"
        );
        assert_eq!(
            foreign_timeline(start(3, 2, 4000), tl3, &history),
            Some(Lsn(5000)),
            "F7: another promotion into 3, from an earlier point of 2"
        );
        assert_eq!(
            foreign_timeline(start(3, 1, 1000), tl3, &history),
            Some(Lsn(1000)),
            "a 3 promoted straight from 1: the cluster's 1 was followed by 2"
        );
        assert_eq!(
            foreign_timeline(start(2, 1, 900), tl3, &history),
            Some(Lsn(1000)),
            "an older timeline of the same number"
        );
        assert_eq!(foreign_timeline(start(2, 1, 1000), tl3, &history), None);
        assert_eq!(
            foreign_timeline(start(3, 2, 4000), tl3, &[line(1, 1000)]),
            None,
            "the history has no line for the parent yet: no conclusion"
        );
        assert_eq!(
            foreign_timeline(start(4, 3, 4000), tl3, &history),
            None,
            "ahead of what the leader published"
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
