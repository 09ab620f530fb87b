//! The properties the fuzz targets (`fuzz/`, cargo-fuzz, nightly) and this crate's proptest
//! smoke tests (stable, part of `make test`) check on what PostgreSQL and the kernel hand the
//! agent as text: `pg_controldata` output, timeline history files, `/proc/<pid>/stat`. Each
//! function panics when a property fails and is otherwise silent.

use baton_core::{ClusterState, ControlData, HistoryLine, Lsn, Timeline};

use crate::{controldata, history, procs};

/// Any text as each of the outputs: never panics.
pub fn outputs(text: &str) {
    if let Ok(c) = controldata::parse(text) {
        assert!(!c.system_id.is_empty() && c.system_id.bytes().all(|b| b.is_ascii_digit()));
    }
    let _ = history::parse(text);
    if let Some(stat) = procs::parse_stat(text) {
        assert!(text.contains(&stat.comm));
    }
}

const STATES: [(ClusterState, &str); 7] = [
    (ClusterState::Starting, "starting up"),
    (ClusterState::ShutDown, "shut down"),
    (ClusterState::ShutDownInRecovery, "shut down in recovery"),
    (ClusterState::ShuttingDown, "shutting down"),
    (ClusterState::InCrashRecovery, "in crash recovery"),
    (ClusterState::InArchiveRecovery, "in archive recovery"),
    (ClusterState::InProduction, "in production"),
];

/// `pg_controldata` output as PostgreSQL 15 prints it (the fields the parser reads, among
/// others), with `extra` lines in between: reads back as the values printed.
#[allow(clippy::too_many_arguments)]
pub fn controldata_round_trip(
    system_id: u64,
    state: usize,
    timeline: u32,
    lsns: [u64; 3],
    min_timeline: u32,
    hints: bool,
    checksums: u32,
    extra: &str,
) {
    let (state, label) = STATES[state % STATES.len()];
    let extra: String = extra
        .lines()
        .filter(|l| {
            // A line that repeats a label the parser reads would change the value.
            !l.contains(':')
                || ![
                    "Database",
                    "Latest",
                    "Minimum",
                    "Min ",
                    "wal_log",
                    "Data page",
                ]
                .iter()
                .any(|p| l.trim_start().starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "pg_control version number:            1300\n\
         Database system identifier:           {system_id}\n\
         {extra}\
         Database cluster state:               {label}\n\
         Latest checkpoint location:           {}\n\
         Latest checkpoint's REDO location:    {}\n\
         Latest checkpoint's TimeLineID:       {timeline}\n\
         Minimum recovery ending location:     {}\n\
         Min recovery ending loc's timeline:   {min_timeline}\n\
         wal_log_hints setting:                {}\n\
         Data page checksum version:           {checksums}\n",
        Lsn(lsns[0]),
        Lsn(lsns[1]),
        Lsn(lsns[2]),
        if hints { "on" } else { "off" },
    );
    let expected = ControlData {
        system_id: system_id.to_string(),
        state,
        timeline: Timeline(timeline),
        checkpoint_lsn: Lsn(lsns[0]),
        redo_lsn: Lsn(lsns[1]),
        min_recovery_end_lsn: Lsn(lsns[2]),
        min_recovery_end_timeline: Timeline(min_timeline),
        rewindable: hints || checksums > 0,
    };
    assert_eq!(controldata::parse(&text), Ok(expected), "{text}");
}

/// A history file written as PostgreSQL writes it (`parent<TAB>switchpoint<TAB>reason`)
/// reads back as those lines (reasons are one line, trimmed).
pub fn history_round_trip(lines: &[(u32, u64, String)]) {
    let mut text = String::new();
    let mut expected = Vec::new();
    for (tli, lsn, reason) in lines {
        let reason = reason.replace(['\n', '\r'], " ").trim().to_owned();
        text.push_str(&format!("{tli}\t{}\t{reason}\n", Lsn(*lsn)));
        expected.push(HistoryLine {
            timeline: Timeline(*tli),
            lsn: Lsn(*lsn),
            reason,
            timestamp: None,
            new_leader: None,
        });
    }
    assert_eq!(history::parse(&text), Ok(expected), "{text}");
}

/// The fuzz targets' properties on stable, with bounded case counts (seconds in `make test`).
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_output_parses_or_is_refused(
            s in any::<String>(),
            lines in "([A-Za-z' ]{0,12}:[ 0-9A-F/a-z]{0,12}\n){0,8}",
            stat in "[0-9 ]{0,4}\\([ -~]{0,8}\\)?[ A-Z0-9]{0,60}",
        ) {
            outputs(&s);
            outputs(&lines);
            outputs(&stat);
            outputs(include_str!("../testdata/controldata-pg15-shut-down.txt"));
        }

        #[test]
        fn controldata_reads_back(
            system_id in any::<u64>(),
            state in 0usize..7,
            timeline in any::<u32>(),
            lsns in any::<[u64; 3]>(),
            min_timeline in any::<u32>(),
            hints in any::<bool>(),
            checksums in 0u32..3,
            extra in "([ -~]{0,30}\n){0,3}",
        ) {
            controldata_round_trip(system_id, state, timeline, lsns, min_timeline, hints, checksums, &extra);
        }

        #[test]
        fn history_reads_back(lines in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<String>()), 0..5)) {
            history_round_trip(&lines);
        }
    }
}
