//! The dependency rules of the workspace and the purity of `baton-core`, as data and as checks.
//!
//! - [`RULES`]: which crate may not depend on what (normal and build dependencies; a test may
//!   use anything). [`check_graph`] applies them to parsed manifests ([`parse_manifest`], a small
//!   parser for the subset of TOML our manifests use, which refuses what it does not understand
//!   rather than miss a dependency).
//! - [`core_violations`]: clocks, filesystem, network, processes, threads, randomness and async
//!   in `baton-core`'s non-test code ([`code_only`] blanks comments and literals first).
//!
//! The tests at the bottom run both on the real workspace, check that every rule fires on a
//! manifest that breaks it, and that `ARCHITECTURE.md` lists every rule ([`Rule::doc_line`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a dependency is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `[dependencies]` and `[build-dependencies]` (also under `[target.'...']`): part of what
    /// the crate is.
    Normal,
    /// `[dev-dependencies]`: tests, examples and benchmarks only.
    Dev,
}

/// One dependency of one manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// The package depended on (after a `package = "..."` rename).
    pub package: String,
    pub kind: Kind,
    /// 1-based line of the manifest that names it.
    pub line: usize,
}

/// What the rules need of a `Cargo.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// `[package] name`; `None` for a virtual manifest.
    pub package: Option<String>,
    pub deps: Vec<Dep>,
}

/// A manifest line the parser does not understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Package,
    /// A dependency list (`[dependencies]`, `[target.x.dev-dependencies]`, ...).
    Deps(Kind),
    /// One dependency as a table (`[dependencies.name]`); its `package` key renames it.
    DepTable(Kind, usize),
    Other,
}

/// `dependencies` → Normal, `dev-dependencies` → Dev, `build-dependencies` → Normal.
fn deps_kind(word: &str) -> Option<Kind> {
    match word {
        "dependencies" | "build-dependencies" => Some(Kind::Normal),
        "dev-dependencies" => Some(Kind::Dev),
        _ => None,
    }
}

/// The text of a line before its comment (a `#` outside a string).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// `target.'cfg(..)'.dependencies.x` → `dependencies.x` (the cfg may contain dots in quotes);
/// any other header as it is.
fn without_target(header: &str) -> &str {
    let Some(rest) = header.strip_prefix("target.") else {
        return header;
    };
    let after_cfg = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => rest[1..].find(q).map(|end| &rest[end + 2..]),
        _ => rest.find('.').map(|dot| &rest[dot..]),
    };
    after_cfg
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(header)
}

/// The value of `key = "value"` inside an inline table's text, if present.
fn inline_string(table: &str, key: &str) -> Option<String> {
    let inner = table.trim().strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (unquote(k) == key).then(|| unquote(v).to_owned())
    })
}

/// Parses the subset of TOML the workspace's manifests use: section headers, `key = value`
/// lines with single-line values (inline tables and arrays on one line), comments. A multi-line
/// value in a dependency section is an error, so that a dependency is never missed silently.
pub fn parse_manifest(text: &str) -> Result<Manifest, ParseError> {
    let mut manifest = Manifest::default();
    let mut section = Section::Other;
    let mut open_array = false;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let error = |message: String| ParseError {
            line: line_no,
            message,
        };
        if open_array {
            // Continuation of a multi-line array outside a dependency section (`members`).
            open_array = !line.ends_with(']');
            continue;
        }
        if line.starts_with('[') {
            let header = line
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_owned();
            let words: Vec<&str> = without_target(&header).split('.').map(unquote).collect();
            section = match words.as_slice() {
                ["package"] => Section::Package,
                [word] => deps_kind(word).map_or(Section::Other, Section::Deps),
                [word, name] => match deps_kind(word) {
                    Some(kind) => {
                        manifest.deps.push(Dep {
                            package: (*name).to_owned(),
                            kind,
                            line: line_no,
                        });
                        Section::DepTable(kind, manifest.deps.len() - 1)
                    }
                    None => Section::Other,
                },
                _ => Section::Other,
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(error(format!("expected `key = value`, found {line:?}")));
        };
        let (key, value) = (key.trim(), value.trim());
        let multi_line = (value.starts_with('{') && !value.ends_with('}'))
            || (value.starts_with('[') && !value.ends_with(']'));
        match section {
            Section::Package => {
                if key == "name" {
                    manifest.package = Some(unquote(value).to_owned());
                }
                open_array = multi_line;
            }
            Section::Deps(kind) => {
                if multi_line {
                    return Err(error(format!(
                        "a dependency written over several lines is not understood: {line:?}"
                    )));
                }
                // `name = ...`, `name.workspace = true`, `"name" = ...`.
                let name = unquote(key.split('.').next().unwrap_or(key));
                let package = inline_string(value, "package").unwrap_or_else(|| name.to_owned());
                manifest.deps.push(Dep {
                    package,
                    kind,
                    line: line_no,
                });
            }
            Section::DepTable(_, at) => {
                if multi_line {
                    return Err(error(format!(
                        "a value written over several lines is not understood: {line:?}"
                    )));
                }
                if key == "package"
                    && let Some(dep) = manifest.deps.get_mut(at)
                {
                    dep.package = unquote(value).to_owned();
                }
            }
            Section::Other => open_array = multi_line,
        }
    }
    Ok(manifest)
}

/// Which crates a rule is about.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    Only(&'static [&'static str]),
    /// Every manifest except these.
    AllBut(&'static [&'static str]),
}

/// What they may not depend on. A name ending in `*` is a prefix.
#[derive(Clone, Copy, Debug)]
pub enum Deny {
    Any(&'static [&'static str]),
    /// Everything except these.
    AllBut(&'static [&'static str]),
}

/// One rule of the dependency graph.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub who: Who,
    pub deny: Deny,
    /// Why, in the words `ARCHITECTURE.md` uses.
    pub why: &'static str,
}

fn matches(pattern: &str, package: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => package.starts_with(prefix),
        None => pattern == package,
    }
}

fn code_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

impl Rule {
    fn applies_to(&self, package: &str) -> bool {
        match self.who {
            Who::Only(names) => names.contains(&package),
            Who::AllBut(names) => !names.contains(&package),
        }
    }

    fn forbids(&self, dep: &str) -> bool {
        match self.deny {
            Deny::Any(names) => names.iter().any(|p| matches(p, dep)),
            Deny::AllBut(names) => !names.iter().any(|p| matches(p, dep)),
        }
    }

    /// The rule as one Markdown list item; `ARCHITECTURE.md` contains each verbatim.
    pub fn doc_line(&self) -> String {
        let who = match self.who {
            Who::Only(names) => code_list(names),
            Who::AllBut(names) => format!("every crate but {}", code_list(names)),
        };
        let deny = match self.deny {
            Deny::Any(names) => format!("never {}", code_list(names)),
            Deny::AllBut([]) => "no dependencies at all".to_owned(),
            Deny::AllBut(names) => format!("only {}", code_list(names)),
        };
        format!("- {who} → {deny}: {}.", self.why)
    }
}

/// The dependency rules (normal and build dependencies only).
pub const RULES: &[Rule] = &[
    Rule {
        who: Who::Only(&["baton-core"]),
        deny: Deny::AllBut(&[]),
        why: "pure: no IO, no clock, no async runtime, no serde",
    },
    Rule {
        who: Who::Only(&["baton-ports"]),
        deny: Deny::AllBut(&["baton-core", "thiserror", "tokio"]),
        why: "the traits and plain data the adapters implement, no adapter and no IO client \
              (`tokio` for `watch` only)",
    },
    Rule {
        who: Who::Only(&["baton-config"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-dcs-mem",
            "baton-pg",
            "baton-vip",
            "baton-api",
            "baton-agent",
            "etcd-client",
            "tokio-postgres",
        ]),
        why: "configuration never touches the network or PostgreSQL",
    },
    Rule {
        who: Who::Only(&["baton-api"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-dcs-mem",
            "baton-pg",
            "baton-vip",
            "etcd-client",
            "tokio-postgres",
        ]),
        why: "REST handlers answer from the published snapshot and send commands to the agent; \
              they never touch etcd or PostgreSQL",
    },
    Rule {
        who: Who::Only(&["baton-dcs"]),
        deny: Deny::Any(&[
            "baton-pg",
            "baton-vip",
            "baton-config",
            "baton-api",
            "baton-agent",
            "baton-cli",
            "baton-sim",
        ]),
        why: "adapters do not depend on each other or on what uses them",
    },
    Rule {
        who: Who::Only(&["baton-dcs-mem"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-pg",
            "baton-vip",
            "etcd-client",
            "tonic",
            "baton-config",
            "baton-api",
            "baton-agent",
            "baton-cli",
            "baton-sim",
        ]),
        why: "the in-memory DCS has no etcd client and no other adapter",
    },
    Rule {
        who: Who::Only(&["baton-pg"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-dcs-mem",
            "baton-vip",
            "etcd-client",
            "baton-config",
            "baton-api",
            "baton-agent",
            "baton-cli",
            "baton-sim",
        ]),
        why: "adapters do not depend on each other or on what uses them",
    },
    Rule {
        who: Who::Only(&["baton-vip"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-dcs-mem",
            "baton-pg",
            "tokio-postgres",
            "baton-config",
            "baton-api",
            "baton-agent",
            "baton-cli",
            "baton-sim",
        ]),
        why: "adapters do not depend on each other or on what uses them",
    },
    Rule {
        who: Who::Only(&["baton-pg-model"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-dcs-mem",
            "baton-pg",
            "baton-vip",
            "etcd-client",
            "tokio-postgres",
            "baton-config",
            "baton-api",
            "baton-agent",
            "baton-cli",
            "baton-sim",
        ]),
        why: "the PostgreSQL model and its `Postgres` adapter (`SimulatedPostgres`) run no \
              PostgreSQL and depend on no other adapter or on what uses them",
    },
    Rule {
        who: Who::Only(&["baton-sim"]),
        deny: Deny::Any(&[
            "baton-dcs",
            "baton-pg",
            "baton-vip",
            "etcd-client",
            "tonic",
            "tokio-postgres",
            "rtnetlink",
            "pnet_datalink",
            "reqwest",
        ]),
        why: "the simulator runs the agent over `MemDcs` and a PostgreSQL model, never a real \
              adapter",
    },
    Rule {
        who: Who::AllBut(&["baton-dcs"]),
        deny: Deny::Any(&["etcd-client", "tonic"]),
        why: "only `baton-dcs` talks to etcd",
    },
    Rule {
        who: Who::Only(&["baton-integration-tests"]),
        deny: Deny::Any(&["baton-*"]),
        why: "the harness is an independent oracle (tests may use a crate, the harness does not)",
    },
];

/// One broken rule or unreadable manifest, as `path:line: ...`.
pub type Violation = String;

/// Applies [`RULES`] to the manifests; also reports a rule naming a crate that does not exist
/// (a renamed crate would otherwise escape its rules).
pub fn check_graph(manifests: &[(PathBuf, Manifest)]) -> Vec<Violation> {
    let mut out = Vec::new();
    let packages: BTreeSet<&str> = manifests
        .iter()
        .filter_map(|(_, m)| m.package.as_deref())
        .collect();
    for rule in RULES {
        let named = match rule.who {
            Who::Only(names) | Who::AllBut(names) => names,
        };
        for name in named {
            if !packages.contains(name) {
                out.push(format!(
                    "xtask/src/tidy.rs: a rule names `{name}`, which no manifest defines"
                ));
            }
        }
    }
    for (path, manifest) in manifests {
        let Some(package) = manifest.package.as_deref() else {
            continue;
        };
        for rule in RULES.iter().filter(|r| r.applies_to(package)) {
            for dep in &manifest.deps {
                if dep.kind == Kind::Normal && rule.forbids(&dep.package) {
                    out.push(format!(
                        "{}:{}: `{package}` depends on `{}`, against the rule \"{}\"",
                        path.display(),
                        dep.line,
                        dep.package,
                        rule.doc_line()
                    ));
                }
            }
        }
    }
    out
}

/// `src` with comments and the contents of string and character literals replaced by spaces,
/// line breaks kept (so that line numbers stay right).
pub fn code_only(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br#".."#.
        if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let mut j = start;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                let hashes = j - start;
                for &k in &chars[i..=j] {
                    out.push(k);
                }
                i = j + 1;
                while i < chars.len() {
                    if chars[i] == '"' && (1..=hashes).all(|h| chars.get(i + h) == Some(&'#')) {
                        out.push('"');
                        out.extend(std::iter::repeat_n('#', hashes));
                        i += 1 + hashes;
                        break;
                    }
                    out.push(blank(chars[i]));
                    i += 1;
                }
                continue;
            }
        }
        if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() {
                match chars[i] {
                    '\\' => {
                        out.push(' ');
                        if let Some(&e) = chars.get(i + 1) {
                            out.push(blank(e));
                        }
                        i += 2;
                    }
                    '"' => {
                        out.push('"');
                        i += 1;
                        break;
                    }
                    other => {
                        out.push(blank(other));
                        i += 1;
                    }
                }
            }
            continue;
        }
        if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'); otherwise a lifetime or label.
            let end = if next == Some('\\') {
                (i + 3..chars.len()).find(|&k| chars[k] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.push('\'');
                out.extend(std::iter::repeat_n(' ', end - i - 1));
                out.push('\'');
                i = end + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Punct(char),
}

/// Identifiers and punctuation of code-only text, with their 1-based lines.
fn tokens(code: &str) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut Vec<(usize, Token)>, line: usize| {
        if !ident.is_empty() {
            out.push((line, Token::Ident(std::mem::take(ident))));
        }
    };
    for c in code.chars() {
        if c.is_alphanumeric() || c == '_' {
            ident.push(c);
            continue;
        }
        flush(&mut ident, &mut out, line);
        if c == '\n' {
            line += 1;
        } else if !c.is_whitespace() {
            out.push((line, Token::Punct(c)));
        }
    }
    flush(&mut ident, &mut out, line);
    out
}

/// Removes the items under `#[cfg(test)]` from the token stream (a `mod x { .. }`, a `fn`,
/// an `impl`, a `use`: up to the item's `;` or its closing brace). Returns the names of test
/// modules declared as files (`#[cfg(test)] mod tests;`).
fn drop_test_items(tokens: Vec<(usize, Token)>) -> (Vec<(usize, Token)>, Vec<String>) {
    let is = |t: Option<&(usize, Token)>, p: &Token| t.is_some_and(|(_, x)| x == p);
    let ident = |s: &str| Token::Ident(s.to_owned());
    let mut out = Vec::new();
    let mut test_files = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let cfg_test = is(tokens.get(i), &Token::Punct('#'))
            && is(tokens.get(i + 1), &Token::Punct('['))
            && is(tokens.get(i + 2), &ident("cfg"))
            && is(tokens.get(i + 3), &Token::Punct('('))
            && is(tokens.get(i + 4), &ident("test"))
            && is(tokens.get(i + 5), &Token::Punct(')'))
            && is(tokens.get(i + 6), &Token::Punct(']'));
        if !cfg_test {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let mut j = i + 7;
        // `#[cfg(test)] mod name;`
        if is(tokens.get(j), &ident("mod"))
            && let Some((_, Token::Ident(name))) = tokens.get(j + 1)
            && is(tokens.get(j + 2), &Token::Punct(';'))
        {
            test_files.push(name.clone());
            i = j + 3;
            continue;
        }
        let mut depth = 0usize;
        while j < tokens.len() {
            match &tokens[j].1 {
                Token::Punct('{') => depth += 1,
                Token::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                Token::Punct(';') if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        i = j + 1;
    }
    (out, test_files)
}

/// What `baton-core` may not name, and why.
const CORE_WORDS: &[(&str, &str)] = &[
    ("Instant", "a clock; time comes from the caller's `now`"),
    ("SystemTime", "the wall clock"),
    ("UNIX_EPOCH", "the wall clock"),
    ("tokio", "an async runtime"),
    ("async", "async code"),
    ("await", "async code"),
    ("rand", "randomness"),
    ("getrandom", "randomness"),
];

/// `std::<module>` paths `baton-core` may not use.
const CORE_STD: &[(&str, &str)] = &[
    ("fs", "the filesystem"),
    ("io", "IO"),
    ("net", "the network"),
    ("process", "processes"),
    ("thread", "threads"),
    ("env", "the environment"),
    ("os", "the operating system"),
];

/// The forbidden names in one source file of `baton-core`, as `path:line: ...`, and the names
/// of the test modules it declares as separate files.
pub fn core_violations(path: &Path, src: &str) -> (Vec<Violation>, Vec<String>) {
    let (tokens, test_files) = drop_test_items(tokens(&code_only(src)));
    let mut out = Vec::new();
    let mut report = |line: usize, what: &str, why: &str| {
        out.push(format!(
            "{}:{line}: baton-core is pure, but this names `{what}`: {why}",
            path.display()
        ));
    };
    for (k, (line, token)) in tokens.iter().enumerate() {
        let Token::Ident(word) = token else { continue };
        if let Some((_, why)) = CORE_WORDS.iter().find(|(w, _)| w == word) {
            report(*line, word, why);
        }
        let path_sep = |at: usize| {
            matches!(tokens.get(at), Some((_, Token::Punct(':'))))
                && matches!(tokens.get(at + 1), Some((_, Token::Punct(':'))))
        };
        if word != "std" || !path_sep(k + 1) {
            continue;
        }
        // `std::fs` or `std::{collections::BTreeMap, fs}`: the first segment of each path.
        let mut firsts = Vec::new();
        match tokens.get(k + 3) {
            Some((l, Token::Ident(first))) => firsts.push((*l, first.clone())),
            Some((_, Token::Punct('{'))) => {
                let mut depth = 0usize;
                let mut expect_first = true;
                for (l, t) in &tokens[k + 3..] {
                    match t {
                        Token::Punct('{') => {
                            depth += 1;
                            expect_first = depth == 1;
                        }
                        Token::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Token::Punct(',') if depth == 1 => expect_first = true,
                        Token::Ident(name) if expect_first => {
                            firsts.push((*l, name.clone()));
                            expect_first = false;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        for (l, first) in firsts {
            if let Some((_, why)) = CORE_STD.iter().find(|(m, _)| *m == first) {
                report(l, &format!("std::{first}"), why);
            }
        }
    }
    (out, test_files)
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The directory holding the child modules of `file` (`lib.rs`, `mod.rs`: its own directory;
/// `foo.rs`: `foo/`).
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("lib" | "main" | "mod") | None => parent.to_path_buf(),
        Some(stem) => parent.join(stem),
    }
}

/// [`core_violations`] over a crate's `src/` directory, skipping test modules kept in files of
/// their own. Paths in the result are relative to `root`.
pub fn check_core_sources(root: &Path, src_dir: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    if let Err(e) = rust_files(src_dir, &mut files) {
        return vec![format!("{}: cannot list: {e}", src_dir.display())];
    }
    // First every file's findings and test modules, then only the findings of files that are
    // not test modules (a module's directory may sort before the file declaring it).
    let mut read = Vec::new();
    let mut test_only: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for file in &files {
        let shown = file.strip_prefix(root).unwrap_or(file);
        match std::fs::read_to_string(file) {
            Ok(src) => {
                let (violations, test_mods) = core_violations(shown, &src);
                let dir = module_dir(file);
                for name in test_mods {
                    test_only.push(dir.join(format!("{name}.rs")));
                    test_only.push(dir.join(&name));
                }
                read.push((file, violations));
            }
            Err(e) => out.push(format!("{}: cannot read: {e}", shown.display())),
        }
    }
    for (file, violations) in read {
        if !test_only.iter().any(|t| file.starts_with(t)) {
            out.extend(violations);
        }
    }
    out
}

/// The manifests the rules read: every `crates/*/Cargo.toml`, `integration-tests/` and
/// `xtask/`. Paths are relative to `root`.
pub fn workspace_manifests(root: &Path) -> Result<Vec<(PathBuf, Manifest)>, Vec<Violation>> {
    let mut paths = Vec::new();
    let crates = root.join("crates");
    let entries = std::fs::read_dir(&crates)
        .map_err(|e| vec![format!("{}: cannot list: {e}", crates.display())])?;
    for entry in entries {
        let entry = entry.map_err(|e| vec![format!("{}: {e}", crates.display())])?;
        let manifest = entry.path().join("Cargo.toml");
        if manifest.is_file() {
            paths.push(manifest);
        }
    }
    paths.sort();
    paths.push(root.join("integration-tests/Cargo.toml"));
    paths.push(root.join("xtask/Cargo.toml"));
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let shown = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_manifest(&text) {
                Ok(m) => out.push((shown, m)),
                Err(e) => errors.push(format!("{}:{}: {}", shown.display(), e.line, e.message)),
            },
            Err(e) => errors.push(format!("{}: cannot read: {e}", shown.display())),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask/ is inside the workspace")
            .to_path_buf()
    }

    fn fail_with(what: &str, violations: &[Violation]) {
        assert!(violations.is_empty(), "{what}:\n{}", violations.join("\n"));
    }

    #[test]
    fn the_dependency_graph_keeps_the_rules() {
        let manifests = workspace_manifests(&root())
            .unwrap_or_else(|errors| panic!("unreadable manifests:\n{}", errors.join("\n")));
        assert!(manifests.len() >= 10, "found {} manifests", manifests.len());
        fail_with("forbidden dependencies", &check_graph(&manifests));
    }

    #[test]
    fn baton_core_uses_no_clock_io_threads_randomness_or_async() {
        let root = root();
        fail_with(
            "baton-core is not pure",
            &check_core_sources(&root, &root.join("crates/baton-core/src")),
        );
    }

    #[test]
    fn architecture_md_lists_every_rule() {
        let text =
            std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
        let missing: Vec<String> = RULES
            .iter()
            .map(Rule::doc_line)
            .filter(|line| !text.lines().any(|l| l == line))
            .collect();
        fail_with(
            "ARCHITECTURE.md (\"Dependency rules\") lacks these lines",
            &missing,
        );
    }

    fn manifest(package: &str, deps: &str) -> (PathBuf, Manifest) {
        let text = format!("[package]\nname = \"{package}\"\n\n[dependencies]\n{deps}\n");
        let m = parse_manifest(&text).expect("parses");
        (PathBuf::from(format!("crates/{package}/Cargo.toml")), m)
    }

    /// Every crate a rule names, so that `check_graph` does not report missing crates.
    fn all_crates() -> Vec<(PathBuf, Manifest)> {
        let mut names = BTreeSet::new();
        for rule in RULES {
            match rule.who {
                Who::Only(n) | Who::AllBut(n) => names.extend(n.iter().copied()),
            }
        }
        names.insert("baton-cli");
        names.into_iter().map(|n| manifest(n, "")).collect()
    }

    #[test]
    fn every_rule_fires_on_a_manifest_that_breaks_it() {
        assert!(check_graph(&all_crates()).is_empty());
        for rule in RULES {
            // A crate no other rule forbids the same dependency to.
            let who = match rule.who {
                Who::Only(names) => names[0],
                Who::AllBut(_) => "baton-cli",
            };
            let dep = match rule.deny {
                Deny::Any(names) => names[0].replace('*', "x"),
                Deny::AllBut(_) => "serde".to_owned(),
            };
            let mut crates = all_crates();
            crates.retain(|(_, m)| m.package.as_deref() != Some(who));
            crates.push(manifest(who, &format!("{dep}.workspace = true")));
            let found = check_graph(&crates);
            assert_eq!(
                found.len(),
                1,
                "{}: {who} → {dep}: {found:?}",
                rule.doc_line()
            );
            assert!(
                found[0].starts_with(&format!(
                    "crates/{who}/Cargo.toml:5: `{who}` depends on `{dep}`"
                )),
                "{}",
                found[0]
            );
        }
    }

    #[test]
    fn the_simulator_may_not_name_a_real_adapter() {
        let mut crates = all_crates();
        crates.retain(|(_, m)| m.package.as_deref() != Some("baton-sim"));
        crates.push(manifest(
            "baton-sim",
            "baton-ports.workspace = true\nbaton-dcs-mem.workspace = true\nbaton-pg.workspace = true",
        ));
        let found = check_graph(&crates);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(":7: `baton-sim` depends on `baton-pg`"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_rule_about_a_crate_that_is_gone_fails() {
        let mut crates = all_crates();
        crates.retain(|(_, m)| m.package.as_deref() != Some("baton-dcs-mem"));
        let found = check_graph(&crates);
        assert_eq!(
            found,
            ["xtask/src/tidy.rs: a rule names `baton-dcs-mem`, which no manifest defines"]
        );
    }

    #[test]
    fn manifests_parse_in_every_form_the_workspace_uses() {
        let text = r#"
[package]
name = "baton-x" # a comment
description = "has a # inside"

[dependencies]
baton-core.workspace = true
tokio = { workspace = true, features = ["test-util"] }
yaml = { package = "yaml_serde", version = "0.10" }
"quoted" = "1"

[dependencies.table-form]
package = "renamed"
version = "1"

[target.'cfg(target_os = "linux")'.dependencies]
nix = "0.31"

[build-dependencies]
cc = "1"

[dev-dependencies]
expect-test.workspace = true

[[bin]]
name = "not-a-dep"
"#;
        let m = parse_manifest(text).expect("parses");
        assert_eq!(m.package.as_deref(), Some("baton-x"));
        let got: Vec<(&str, Kind, usize)> = m
            .deps
            .iter()
            .map(|d| (d.package.as_str(), d.kind, d.line))
            .collect();
        assert_eq!(
            got,
            [
                ("baton-core", Kind::Normal, 7),
                ("tokio", Kind::Normal, 8),
                ("yaml_serde", Kind::Normal, 9),
                ("quoted", Kind::Normal, 10),
                ("renamed", Kind::Normal, 12),
                ("nix", Kind::Normal, 17),
                ("cc", Kind::Normal, 20),
                ("expect-test", Kind::Dev, 23),
            ]
        );
    }

    #[test]
    fn a_dependency_over_several_lines_is_refused_not_missed() {
        let text = "[package]\nname = \"x\"\n[dependencies]\nbaton-pg = {\n  path = \"../pg\" }\n";
        let e = parse_manifest(text).expect_err("refused");
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn dev_dependencies_are_not_the_crate() {
        let text =
            "[package]\nname = \"baton-sim\"\n[dev-dependencies]\nbaton-pg.workspace = true\n";
        let m = parse_manifest(text).expect("parses");
        let mut crates = all_crates();
        crates.retain(|(_, m)| m.package.as_deref() != Some("baton-sim"));
        crates.push((PathBuf::from("crates/baton-sim/Cargo.toml"), m));
        assert!(check_graph(&crates).is_empty());
    }

    fn core(src: &str) -> Vec<Violation> {
        core_violations(Path::new("crates/baton-core/src/x.rs"), src).0
    }

    #[test]
    fn every_forbidden_name_in_core_is_reported_with_its_line() {
        let cases = [
            ("let t = std::time::Instant::now();", "`Instant`"),
            ("use std::time::SystemTime;", "`SystemTime`"),
            ("let e = UNIX_EPOCH;", "`UNIX_EPOCH`"),
            ("use tokio::sync::watch;", "`tokio`"),
            ("async fn f() {}", "`async`"),
            ("fn f() { g().await }", "`await`"),
            ("let x: u8 = rand::random();", "`rand`"),
            ("let _ = std::fs::read(\"x\");", "`std::fs`"),
            ("use std::{collections::BTreeMap, fs};", "`std::fs`"),
            ("use std::{io::{self, Write}};", "`std::io`"),
            ("std::thread::spawn(|| ());", "`std::thread`"),
            ("let _ = std::env::var(\"X\");", "`std::env`"),
            ("let _ = std::process::id();", "`std::process`"),
            ("let _ = std::net::Ipv4Addr::LOCALHOST;", "`std::net`"),
        ];
        for (code, what) in cases {
            let found = core(&format!("//! doc\n\nfn ok() {{}}\n{code}\n"));
            assert_eq!(found.len(), 1, "{code}: {found:?}");
            assert!(
                found[0].starts_with(&format!(
                    "crates/baton-core/src/x.rs:4: baton-core is pure, but this names {what}: "
                )),
                "{code}: {}",
                found[0]
            );
        }
    }

    #[test]
    fn comments_literals_and_test_code_are_not_core_code() {
        let src = r##"
//! No tokio, no async, no std::fs here.
/* Instant /* nested */ SystemTime */
use std::collections::BTreeMap;
use std::time::Duration;
fn f<'a>(x: &'a str) -> (char, char, &'static str, &'static str) {
    ('"', '\'', "tokio::spawn(async { std::fs::read(\"x\") })", r#"Instant "quoted" rand"#)
}
fn process(thread: u8, fs: u8) -> u8 { thread + fs }
#[cfg(test)]
mod tests {
    use std::fs;
    #[tokio::test]
    async fn t() { std::thread::sleep(std::time::Duration::ZERO); }
}
#[cfg(test)]
fn helper() { let _ = std::time::Instant::now(); }
#[cfg(test)]
mod more;
fn after() {}
"##;
        let (found, test_files) = core_violations(Path::new("x.rs"), src);
        assert_eq!(found, Vec::<String>::new());
        assert_eq!(test_files, ["more"]);
        // And code after the test items is still read.
        let late = src.lines().count() + 1;
        let (found, _) =
            core_violations(Path::new("x.rs"), &format!("{src}async fn late() {{}}\n"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(&format!(
                "x.rs:{late}: baton-core is pure, but this names `async`"
            )),
            "{}",
            found[0]
        );
    }

    #[test]
    fn code_only_keeps_lines_and_code() {
        let src = "let a = \"x\ny\"; // c\nlet b = 'q'; /* d\n e */ let c = r#\"z\"#;\n";
        let code = code_only(src);
        assert_eq!(code.lines().count(), src.lines().count());
        assert_eq!(
            code,
            "let a = \" \n \";     \nlet b = ' ';     \n      let c = r#\" \"#;\n"
        );
    }
}
