//! The `log` section mapped onto tracing: Python-format or JSON lines, on standard error or in
//! `log.dir/pgbaton.log` rotated by size as Python's `RotatingFileHandler` does.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_config::{DatePiece, FormatPiece, Log, LogField, LogLevel};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Python's level names and numbers.
fn level_name(level: &Level) -> (&'static str, u32) {
    match *level {
        Level::TRACE => ("TRACE", 5),
        Level::DEBUG => ("DEBUG", 10),
        Level::INFO => ("INFO", 20),
        Level::WARN => ("WARNING", 30),
        Level::ERROR => ("ERROR", 40),
    }
}

/// The tracing filter for a `log.level` (tracing has nothing above ERROR). At DEBUG,
/// tokio-postgres stays at INFO: its debug lines are every statement's text, and the one that
/// sets a role's password carries its SCRAM verifier (not the password, but material for
/// guessing it offline); `PGBATON_LOG=debug` shows them when really needed.
pub fn filter_directive(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug,tokio_postgres=info",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error | LogLevel::Critical => "error",
    }
}

/// A time as `asctime`: `dateformat`, or Python's default `2026-01-31 12:00:00,123`; UTC.
pub fn asctime(unix_ms: u64, dateformat: Option<&[DatePiece]>) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = baton_core::civil_from_days(days);
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    let Some(pieces) = dateformat else {
        return format!(
            "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02},{:03}",
            unix_ms % 1000
        );
    };
    let mut out = String::new();
    for p in pieces {
        match p {
            DatePiece::Text(t) => out.push_str(t),
            DatePiece::Directive(c) => {
                let _ = match c {
                    'Y' => write!(out, "{y:04}"),
                    'y' => write!(out, "{:02}", y.rem_euclid(100)),
                    'm' => write!(out, "{m:02}"),
                    'd' => write!(out, "{d:02}"),
                    'H' => write!(out, "{hh:02}"),
                    'M' => write!(out, "{mm:02}"),
                    'S' => write!(out, "{ss:02}"),
                    'j' => write!(
                        out,
                        "{:03}",
                        days - baton_core::days_from_civil(y, 1, 1) + 1
                    ),
                    'z' => write!(out, "+0000"),
                    'Z' => write!(out, "UTC"),
                    _ => Ok(()),
                };
            }
        }
    }
    out
}

/// What one event carries, as a Python `LogRecord` would.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub unix_ms: u64,
    pub level: &'static str,
    pub levelno: u32,
    /// The message, then the event's other fields as `key=value`.
    pub message: String,
    pub target: String,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub pid: u32,
    pub thread: String,
}

impl Record {
    fn value(&self, field: LogField, dateformat: Option<&[DatePiece]>) -> Value {
        match field {
            LogField::Asctime => Value::from(asctime(self.unix_ms, dateformat)),
            LogField::Levelname => Value::from(self.level),
            LogField::Levelno => Value::from(self.levelno),
            LogField::Message => Value::from(self.message.clone()),
            LogField::Name => Value::from(self.target.clone()),
            LogField::Module => Value::from(
                self.module
                    .as_deref()
                    .and_then(|m| m.rsplit("::").next())
                    .unwrap_or_default(),
            ),
            LogField::Filename => Value::from(
                self.file
                    .as_deref()
                    .and_then(|f| Path::new(f).file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            LogField::Pathname => Value::from(self.file.clone().unwrap_or_default()),
            LogField::Lineno => Value::from(self.line.unwrap_or(0)),
            LogField::Process => Value::from(self.pid),
            LogField::ThreadName => Value::from(self.thread.clone()),
        }
    }
}

/// One line (without the newline) for `record` in `log`'s format.
pub fn format_record(log: &Log, record: &Record) -> String {
    let dateformat = log.dateformat.as_deref();
    if log.json {
        // Keys in the format's order, then the static fields (a later duplicate wins).
        let mut entries: Vec<(String, Value)> = Vec::new();
        let fields = log
            .json_fields
            .iter()
            .map(|(field, key)| (key.clone(), record.value(*field, dateformat)))
            .chain(log.static_fields.iter().cloned());
        for (k, v) in fields {
            entries.retain(|(e, _)| *e != k);
            entries.push((k, v));
        }
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
            .collect();
        return format!("{{{}}}", body.join(","));
    }
    let mut out = String::new();
    for piece in &log.format {
        match piece {
            FormatPiece::Text(t) => out.push_str(t),
            FormatPiece::Field { field, left, width } => {
                let text = match record.value(*field, dateformat) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let _ = if *left {
                    write!(out, "{text:<width$}")
                } else {
                    write!(out, "{text:>width$}")
                };
            }
        }
    }
    out
}

/// Collects the message and the other fields of an event.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// The tracing formatter for a `log` section.
pub struct PythonFormat {
    pub log: Log,
}

impl<S, N> FormatEvent<S, N> for PythonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let (level, levelno) = level_name(meta.level());
        let thread = std::thread::current();
        let record = Record {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            level,
            levelno,
            message: format!("{}{}", fields.message, fields.rest),
            target: meta.target().to_owned(),
            module: meta.module_path().map(str::to_owned),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
            pid: std::process::id(),
            thread: thread.name().unwrap_or("unnamed").to_owned(),
        };
        writeln!(writer, "{}", format_record(&self.log, &record))
    }
}

/// `pgbaton.log` and its rotated copies: before a line would make the file reach `max_bytes`,
/// `.N-1` → `.N`, …, the file → `.1`, and a new file (Python's `RotatingFileHandler`).
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    mode: Option<u32>,
    file: Option<File>,
    size: u64,
    /// The last write error was reported (once until a write succeeds again).
    reported: bool,
}

impl RotatingFile {
    pub fn open(
        path: PathBuf,
        max_bytes: u64,
        backups: u32,
        mode: Option<u32>,
    ) -> io::Result<Self> {
        let mut f = RotatingFile {
            path,
            max_bytes,
            backups,
            mode,
            file: None,
            size: 0,
            reported: false,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        if let Some(mode) = self.mode {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        }
        let file = options.open(&self.path)?;
        if let Some(mode) = self.mode {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rollover(&mut self) -> io::Result<()> {
        self.file = None;
        if self.backups > 0 {
            for n in (1..self.backups).rev() {
                let from = self.backup(n);
                if from.exists() {
                    std::fs::rename(&from, self.backup(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.backup(1))?;
        }
        self.reopen()
    }

    fn write_line(&mut self, buf: &[u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        // Python's shouldRollover, except that an empty file is never rotated away.
        if self.max_bytes > 0
            && self.backups > 0
            && self.size > 0
            && self.size + len >= self.max_bytes
        {
            self.rollover()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        file.write_all(buf)?;
        self.size += len;
        Ok(())
    }
}

/// A [`MakeWriter`] over a shared [`RotatingFile`]; each formatted event is one write.
#[derive(Clone)]
pub struct LogFile(Arc<Mutex<RotatingFile>>);

impl LogFile {
    pub fn new(file: RotatingFile) -> LogFile {
        LogFile(Arc::new(Mutex::new(file)))
    }
}

pub struct LogFileWriter<'a>(MutexGuard<'a, RotatingFile>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write_line(buf) {
            Ok(()) => self.0.reported = false,
            Err(e) => {
                if !self.0.reported {
                    eprintln!("pgbaton: cannot write {}: {e}", self.0.path.display());
                    self.0.reported = true;
                }
            }
        }
        // A log line that cannot be written is dropped, never an error for the caller.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Installs the global subscriber for `log`: `PGBATON_LOG` (a tracing filter) overrides
/// `log.level`. A panic is logged at ERROR, its backtrace at `log.traceback_level`.
pub fn init(log: &Log) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGBATON_LOG")
        .unwrap_or_else(|_| filter_directive(log.level).into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(PythonFormat { log: log.clone() });
    match &log.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("log.dir: create {}", dir.display()))?;
            let path = dir.join(baton_config::LOG_FILE_NAME);
            let file = RotatingFile::open(path.clone(), log.file_size, log.file_num, log.mode)
                .with_context(|| format!("log.dir: open {}", path.display()))?;
            builder
                .with_writer(LogFile::new(file))
                .try_init()
                .map_err(|e| anyhow::anyhow!("install the logger: {e}"))?;
        }
        None => builder
            .with_writer(io::stderr)
            .try_init()
            .map_err(|e| anyhow::anyhow!("install the logger: {e}"))?,
    }
    let traceback = log.traceback_level;
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        match traceback {
            LogLevel::Debug => tracing::debug!("panic backtrace:\n{trace}"),
            LogLevel::Info => tracing::info!("panic backtrace:\n{trace}"),
            LogLevel::Warning => tracing::warn!("panic backtrace:\n{trace}"),
            LogLevel::Error | LogLevel::Critical => tracing::error!("panic backtrace:\n{trace}"),
        }
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            unix_ms: 1_790_000_000_123,
            level: "WARNING",
            levelno: 30,
            message: "lost the leader key".into(),
            target: "baton_agent::ha".into(),
            module: Some("baton_agent::ha".into()),
            file: Some("crates/baton-agent/src/ha.rs".into()),
            line: Some(42),
            pid: 7,
            thread: "main".into(),
        }
    }

    fn log_with(format: &str, json: bool) -> Log {
        let pieces = baton_config::parse_format(format).expect("format");
        let fields = pieces
            .iter()
            .filter_map(|p| match p {
                FormatPiece::Field { field, .. } => Some((*field, field.key().to_owned())),
                FormatPiece::Text(_) => None,
            })
            .collect();
        Log {
            json,
            format: pieces,
            json_fields: fields,
            ..Log::default()
        }
    }

    #[test]
    fn debug_level_keeps_tokio_postgres_statements_out() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter_directive(
                LogLevel::Debug,
            )))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "executing simple query: ALTER ROLE r PASSWORD 'SCRAM-SHA-256$4096:x'");
            tracing::info!(target: "tokio_postgres::connection", "connection closed");
            tracing::debug!(target: "baton_agent::ha", "a pgbaton debug line");
        });
        let out =
            String::from_utf8_lossy(&buf.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        assert!(!out.contains("ALTER ROLE"), "{out}");
        assert!(out.contains("connection closed"), "{out}");
        assert!(out.contains("a pgbaton debug line"), "{out}");
    }

    #[test]
    fn plain_lines_follow_the_python_format() {
        assert_eq!(
            format_record(&Log::default(), &record()),
            "2026-09-21 14:13:20,123 WARNING: lost the leader key"
        );
        let log = log_with(
            "[%(levelname)-8s] %(name)s %(module)s %(filename)s:%(lineno)d pid=%(process)d %(levelno)s %%",
            false,
        );
        assert_eq!(
            format_record(&log, &record()),
            "[WARNING ] baton_agent::ha ha ha.rs:42 pid=7 30 %"
        );
    }

    #[test]
    fn json_lines_have_the_format_fields_and_static_fields() {
        let mut log = log_with("%(asctime)s %(levelname)s %(message)s", true);
        log.static_fields = vec![("app".into(), Value::from("pgbaton"))];
        log.dateformat = Some(baton_config::parse_dateformat("%Y-%m-%dT%H:%M:%S%z").expect("d"));
        let line = format_record(&log, &record());
        assert!(line.starts_with("{\"asctime\":"), "format order: {line}");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"asctime": "2026-09-21T14:13:20+0000", "levelname": "WARNING",
                "message": "lost the leader key", "app": "pgbaton"})
        );
    }

    #[test]
    fn dates_cover_every_directive() {
        let pieces = baton_config::parse_dateformat("%y %j %Z").expect("d");
        assert_eq!(asctime(1_790_000_000_123, Some(&pieces)), "26 264 UTC");
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    #[test]
    fn files_rotate_by_size_and_keep_file_num_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgbaton.log");
        let file = RotatingFile::open(path.clone(), 25, 2, Some(0o640)).expect("open");
        let make = LogFile::new(file);
        for i in 0..7 {
            // 10 bytes a line: two lines fit below 25 bytes, the third rotates.
            make.make_writer()
                .write_all(format!("line {i:04}\n").as_bytes())
                .expect("write");
        }
        let backup = |n: u32| dir.path().join(format!("pgbaton.log.{n}"));
        assert_eq!(lines(&path), ["line 0006"]);
        assert_eq!(lines(&backup(1)), ["line 0004", "line 0005"]);
        assert_eq!(lines(&backup(2)), ["line 0002", "line 0003"]);
        assert!(!backup(3).exists(), "only file_num backups are kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn file_num_zero_or_file_size_zero_never_rotate() {
        for (size, num) in [(25, 0), (0, 3)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("pgbaton.log");
            let make = LogFile::new(RotatingFile::open(path.clone(), size, num, None).expect("o"));
            for i in 0..5 {
                make.make_writer()
                    .write_all(format!("line {i:04}\n").as_bytes())
                    .expect("write");
            }
            assert_eq!(lines(&path).len(), 5);
            assert!(!dir.path().join("pgbaton.log.1").exists());
        }
    }

    #[test]
    fn an_existing_file_counts_toward_the_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgbaton.log");
        std::fs::write(&path, "old line 1\nold line 2\n").expect("seed");
        let make = LogFile::new(RotatingFile::open(path.clone(), 25, 1, None).expect("open"));
        make.make_writer()
            .write_all(b"new line 1\n")
            .expect("write");
        assert_eq!(lines(&path), ["new line 1"]);
        assert_eq!(
            lines(&dir.path().join("pgbaton.log.1")),
            ["old line 1", "old line 2"]
        );
    }
}
