//! Every example configuration in `examples/` validates.

use std::path::PathBuf;

#[test]
fn every_example_config_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in ["patroni-postgres0.yml", "pgbaton.yml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/{expected} is missing: {names:?}"
        );
    }
    let no_env = |_: &str| None;
    let mut failures = Vec::new();
    for file in &files {
        match baton_config::load_file(file, &no_env) {
            Ok(loaded) => {
                // The examples show supported keys only: none may need a warning.
                if !loaded.warnings.is_empty() {
                    failures.push(format!(
                        "{}: unexpected warnings:\n{}",
                        file.display(),
                        loaded.warnings.join("\n")
                    ));
                }
            }
            Err(e) => failures.push(format!("{}:\n{e}", file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
