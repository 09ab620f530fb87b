//! Parser for `pg_controldata` output (run with `LC_ALL=C`, so the labels are English).

use std::collections::HashMap;

use baton_core::{ClusterState, ControlData, Lsn, Timeline};

/// Parse the `Label: value` lines of `pg_controldata` into the fields the HA logic needs.
/// Fails naming the first missing or malformed field.
pub fn parse(output: &str) -> Result<ControlData, String> {
    let fields: HashMap<&str, &str> = output
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(label, value)| (label.trim(), value.trim()))
        .collect();
    let field = |label: &str| -> Result<&str, String> {
        fields
            .get(label)
            .copied()
            .ok_or_else(|| format!("pg_controldata output lacks {label:?}"))
    };
    let lsn = |label: &str| -> Result<Lsn, String> {
        let value = field(label)?;
        value
            .parse()
            .map_err(|_| format!("{label}: invalid LSN {value:?}"))
    };
    let timeline = |label: &str| -> Result<Timeline, String> {
        let value = field(label)?;
        value
            .parse()
            .map(Timeline)
            .map_err(|_| format!("{label}: invalid timeline {value:?}"))
    };

    let system_id = field("Database system identifier")?;
    if system_id.is_empty() || !system_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "Database system identifier: invalid value {system_id:?}"
        ));
    }
    let state_text = field("Database cluster state")?;
    let state = ClusterState::parse(state_text)
        .ok_or_else(|| format!("Database cluster state: unknown state {state_text:?}"))?;
    let wal_log_hints = fields
        .get("wal_log_hints setting")
        .is_some_and(|v| *v == "on");
    let checksums = fields
        .get("Data page checksum version")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v > 0);

    Ok(ControlData {
        system_id: system_id.to_owned(),
        state,
        timeline: timeline("Latest checkpoint's TimeLineID")?,
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        redo_lsn: lsn("Latest checkpoint's REDO location")?,
        min_recovery_end_lsn: lsn("Minimum recovery ending location")?,
        min_recovery_end_timeline: timeline("Min recovery ending loc's timeline")?,
        rewindable: wal_log_hints || checksums,
    })
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    #[track_caller]
    fn check(output: &str, expected: Expect) {
        let actual = match super::parse(output) {
            Ok(c) => format!("{c:#?}"),
            Err(e) => format!("error: {e}"),
        };
        expected.assert_eq(&actual);
    }

    #[test]
    fn pg15_after_initdb() {
        check(
            include_str!("../testdata/controldata-pg15-shut-down.txt"),
            expect![[r#"
                ControlData {
                    system_id: "7710845344090345446",
                    state: ShutDown,
                    timeline: Timeline(
                        1,
                    ),
                    checkpoint_lsn: 0/1511A88,
                    redo_lsn: 0/1511A88,
                    min_recovery_end_lsn: 0/0,
                    min_recovery_end_timeline: Timeline(
                        0,
                    ),
                    rewindable: false,
                }"#]],
        );
    }

    #[test]
    fn pg15_running_with_wal_log_hints() {
        check(
            include_str!("../testdata/controldata-pg15-in-production.txt"),
            expect![[r#"
                ControlData {
                    system_id: "7710845344090345446",
                    state: InProduction,
                    timeline: Timeline(
                        1,
                    ),
                    checkpoint_lsn: 0/1511A88,
                    redo_lsn: 0/1511A88,
                    min_recovery_end_lsn: 0/0,
                    min_recovery_end_timeline: Timeline(
                        0,
                    ),
                    rewindable: true,
                }"#]],
        );
    }

    #[test]
    fn standby_with_checksums() {
        let output = include_str!("../testdata/controldata-pg15-shut-down.txt")
            .replace(
                "cluster state:               shut down",
                "cluster state:               shut down in recovery",
            )
            .replace("TimeLineID:       1", "TimeLineID:       3")
            .replace(
                "Minimum recovery ending location:     0/0",
                "Minimum recovery ending location:     2/5F000A28",
            )
            .replace("loc's timeline:   0", "loc's timeline:   3")
            .replace(
                "checksum version:           0",
                "checksum version:           1",
            );
        check(
            &output,
            expect![[r#"
                ControlData {
                    system_id: "7710845344090345446",
                    state: ShutDownInRecovery,
                    timeline: Timeline(
                        3,
                    ),
                    checkpoint_lsn: 0/1511A88,
                    redo_lsn: 0/1511A88,
                    min_recovery_end_lsn: 2/5F000A28,
                    min_recovery_end_timeline: Timeline(
                        3,
                    ),
                    rewindable: true,
                }"#]],
        );
    }

    #[test]
    fn errors_name_the_field() {
        check(
            "",
            expect![[r#"error: pg_controldata output lacks "Database system identifier""#]],
        );
        let sample = include_str!("../testdata/controldata-pg15-shut-down.txt");
        check(
            &sample.replace("shut down", "on fire"),
            expect![[r#"error: Database cluster state: unknown state "on fire""#]],
        );
        check(
            &sample.replace("0/1511A88", "nowhere"),
            expect![[r#"error: Latest checkpoint location: invalid LSN "nowhere""#]],
        );
        check(
            &sample.replace("Min recovery ending loc's timeline:", "Something else:"),
            expect![[r#"error: pg_controldata output lacks "Min recovery ending loc's timeline""#]],
        );
        check(
            "pg_controldata: error: could not open file \"global/pg_control\" for reading",
            expect![[r#"error: pg_controldata output lacks "Database system identifier""#]],
        );
    }
}
