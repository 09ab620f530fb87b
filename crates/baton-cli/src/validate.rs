//! `pgbaton validate-config`: what it prints for a loaded (or rejected) configuration.

use std::fmt;

use baton_config::{ConfigErrors, Loaded};

/// The outcome of checking one configuration: a `warning:` or `error:` line per problem (for
/// standard error), then one verdict line (for standard output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub diagnostics: Vec<String>,
    pub verdict: String,
    pub ok: bool,
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The report for the configuration shown as `shown` (its path).
pub fn report(shown: &str, result: &Result<Loaded, ConfigErrors>) -> Report {
    match result {
        Ok(loaded) => Report {
            diagnostics: loaded
                .warnings
                .iter()
                .map(|w| format!("warning: {w}"))
                .collect(),
            verdict: if loaded.warnings.is_empty() {
                format!("{shown}: configuration is valid")
            } else {
                format!(
                    "{shown}: configuration is valid ({})",
                    count(loaded.warnings.len(), "warning")
                )
            },
            ok: true,
        },
        Err(errors) => Report {
            diagnostics: errors.0.iter().map(|e| format!("error: {e}")).collect(),
            verdict: format!(
                "{shown}: configuration is invalid ({})",
                count(errors.0.len(), "error")
            ),
            ok: false,
        },
    }
}

/// The diagnostics, then the verdict, one per line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.diagnostics {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "{}", self.verdict)
    }
}
