//! Parser for timeline history files (`pg_wal/0000000N.history`).

use baton_core::{HistoryLine, Lsn, Timeline};

/// File name of the history file that created `timeline`, relative to `pg_wal`.
pub fn file_name(timeline: Timeline) -> String {
    format!("{:08X}.history", timeline.0)
}

/// Parse `<parent tli>\t<switchpoint>\t<reason>` lines (blank lines and `#` comments skipped)
/// into history lines without timestamp or new leader.
pub fn parse(text: &str) -> Result<Vec<HistoryLine>, String> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, char::is_whitespace);
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: expected a timeline and an LSN: {line:?}",
                number + 1
            ));
        };
        let timeline = tli
            .parse::<u32>()
            .map_err(|_| format!("line {}: invalid timeline {tli:?}", number + 1))?;
        let lsn = lsn
            .trim()
            .parse::<Lsn>()
            .map_err(|e| format!("line {}: {e}", number + 1))?;
        let reason = fields.next().unwrap_or("").trim().to_owned();
        out.push(HistoryLine {
            timeline: Timeline(timeline),
            lsn,
            reason,
            timestamp: None,
            new_leader: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn parses_history_files() {
        let text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000148\tbefore 2024-08-28 19:39:26.352526+00\n";
        expect![[r#"
            Ok(
                [
                    HistoryLine {
                        timeline: Timeline(
                            1,
                        ),
                        lsn: 0/3000000,
                        reason: "no recovery target specified",
                        timestamp: None,
                        new_leader: None,
                    },
                    HistoryLine {
                        timeline: Timeline(
                            2,
                        ),
                        lsn: 0/5000148,
                        reason: "before 2024-08-28 19:39:26.352526+00",
                        timestamp: None,
                        new_leader: None,
                    },
                ],
            )
        "#]]
        .assert_debug_eq(&parse(text));
        expect![[r#"
            Err(
                "line 1: invalid LSN \"zz\": expected X/X in hex",
            )
        "#]]
        .assert_debug_eq(&parse("1\tzz\treason"));
        expect![[r#"
            Err(
                "line 2: expected a timeline and an LSN: \"7\"",
            )
        "#]]
        .assert_debug_eq(&parse("# comment\n7\n"));
        expect!["0000000A.history"].assert_eq(&file_name(Timeline(10)));
    }
}
