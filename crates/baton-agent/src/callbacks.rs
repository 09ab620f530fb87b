//! The scripts the agent runs at PostgreSQL events (`postgresql.callbacks`, `pre_promote`,
//! `before_stop`, `bootstrap.post_bootstrap`), as Patroni runs them.
//!
//! Callbacks get the arguments `action role scope` (`on_role_change primary batman`) and never
//! block the HA loop: each is a child process with the clean environment PostgreSQL's binaries
//! get ([`baton_pg::clean_command`]), in a process group of its own. One runs at a time: a new
//! callback kills the running one's whole group first (Patroni's `CallbackExecutor`); an
//! `on_reload` has its own slot, so it only replaces an earlier `on_reload`.
//!
//! The events come from what the HA loop observes between two cycles ([`Callbacks::observed`]),
//! not from the actions it ran: PostgreSQL seen running (`on_start`), seen stopped
//! (`on_stop`), seen running under another postmaster (`on_restart`), seen in another role
//! (`on_role_change`, also when it comes back in another role than it had when it stopped),
//! and PostgreSQL's files re-read (`on_reload`).
//!
//! `pre_promote`, `before_stop` and `post_bootstrap` are waited for, up to a timeout.
//! A callback that cannot be started is logged once (until it starts again) and changes no role.

use std::collections::BTreeSet;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use baton_config::{Config, DynamicConfig, Script};
use baton_core::{Action, ActionKind, PgProcess, PgState, StopMode};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A PostgreSQL event a callback runs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    Restart,
    Reload,
    RoleChange,
}

impl Event {
    /// The callback's name, also its first argument.
    pub fn action(self) -> &'static str {
        match self {
            Event::Start => "on_start",
            Event::Stop => "on_stop",
            Event::Restart => "on_restart",
            Event::Reload => "on_reload",
            Event::RoleChange => "on_role_change",
        }
    }
}

/// The role argument, with Patroni's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// A primary that stopped without the leader key (handed over, or demoted).
    Demoted,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Demoted => "demoted",
        }
    }
}

/// What one observation said about PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Down,
    Up { pid: i32, role: Role },
}

/// A callback that runs: a message to its task kills its process group.
struct Running {
    kill: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Kill it (if it still runs); the handle to wait for its end.
    fn kill(mut self) -> JoinHandle<()> {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.task
    }
}

/// Why a waited-for script did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// It could not be started (missing, not executable).
    Spawn(String),
    /// It exited with a non-zero status (or was killed by a signal).
    Failed { status: String, output: String },
    /// It ran longer than allowed and was killed.
    Timeout(Duration),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Spawn(e) => write!(f, "could not be started: {e}"),
            ScriptError::Failed { status, output } if output.is_empty() => {
                write!(f, "{status}")
            }
            ScriptError::Failed { status, output } => write!(f, "{status}: {output}"),
            ScriptError::Timeout(after) => write!(f, "did not finish within {after:?}, killed"),
        }
    }
}

impl std::error::Error for ScriptError {}

/// `pre_promote` failed: the promotion is cancelled (and `decide` gives the key up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrePromoteFailed(pub ScriptError);

impl std::fmt::Display for PrePromoteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for PrePromoteFailed {}

/// The kind a failed `action` is recorded under for the next decision: a promotion its
/// `pre_promote` script cancelled is [`ActionKind::PrePromote`].
pub fn failed_kind(action: &Action, error: &anyhow::Error) -> ActionKind {
    if error.downcast_ref::<PrePromoteFailed>().is_some() {
        ActionKind::PrePromote
    } else {
        action.kind()
    }
}

/// The agent's scripts and the state of the ones running. Owned by `ha::Agent`.
pub struct Callbacks {
    scope: String,
    scripts: baton_config::Callbacks,
    pre_promote: Option<Script>,
    before_stop: Option<Script>,
    post_bootstrap: Option<Script>,
    /// How long `pre_promote`, `before_stop` and `post_bootstrap` may run.
    timeout: Duration,
    running: Option<Running>,
    reloading: Option<Running>,
    seen: Option<Seen>,
    /// The role PostgreSQL had when last seen running.
    last_role: Option<Role>,
    /// A restart of pgbaton's own (`POST /restart`, a scheduled one) runs.
    restarting: bool,
    /// PostgreSQL was seen down during that restart: when it is seen up again, that is the
    /// restart's end (`on_restart`, as Patroni calls it, not `on_stop` + `on_start`).
    restart_gap: bool,
    /// Commands whose start failed, logged once until one starts again.
    failed: BTreeSet<String>,
}

impl Callbacks {
    pub fn new(config: &Config) -> Callbacks {
        let mut c = Callbacks {
            scope: config.scope.clone(),
            scripts: Default::default(),
            pre_promote: None,
            before_stop: None,
            post_bootstrap: None,
            timeout: config.postgresql.pg_ctl_timeout,
            running: None,
            reloading: None,
            seen: None,
            last_role: None,
            restarting: false,
            restart_gap: false,
            failed: BTreeSet::new(),
        };
        c.configure(config);
        c
    }

    /// Take the scripts of a reloaded configuration (they apply from the next event on).
    pub fn configure(&mut self, config: &Config) {
        self.scope = config.scope.clone();
        self.scripts = config.postgresql.callbacks.clone();
        self.pre_promote = config.postgresql.pre_promote.clone();
        self.before_stop = config.postgresql.before_stop.clone();
        self.post_bootstrap = config
            .bootstrap
            .as_ref()
            .and_then(|b| b.post_bootstrap.clone());
        self.timeout = config.postgresql.pg_ctl_timeout;
    }

    fn script(&self, event: Event) -> Option<&Script> {
        let s = &self.scripts;
        match event {
            Event::Start => s.on_start.as_ref(),
            Event::Stop => s.on_stop.as_ref(),
            Event::Restart => s.on_restart.as_ref(),
            Event::Reload => s.on_reload.as_ref(),
            Event::RoleChange => s.on_role_change.as_ref(),
        }
    }

    /// Whether a restart of pgbaton's own runs (see [`Callbacks::observed`]): PostgreSQL seen
    /// down and up again across it fires `on_restart` once, not `on_stop` and `on_start`.
    pub fn set_restarting(&mut self, restarting: bool) {
        self.restarting = restarting;
    }

    /// Compare what this cycle observed (`pg`, after its actions) with the last observation
    /// and fire the callbacks for what changed; `reloaded`: PostgreSQL re-read its files in
    /// this cycle. `holds_key`: we hold the leader key (a primary stopped without it was
    /// demoted). PostgreSQL running without answering SQL yet tells nothing: it is looked at
    /// again next cycle.
    pub fn observed(&mut self, pg: &PgState, holds_key: bool, reloaded: bool) {
        let now = match (&pg.process, &pg.sql) {
            (PgProcess::Stopped, _) => Seen::Down,
            (PgProcess::Running { pid }, Some(sql)) => Seen::Up {
                pid: *pid,
                role: if sql.in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                },
            },
            (PgProcess::Running { .. }, None) => return,
        };
        if matches!(now, Seen::Down) && !self.restarting {
            // The restart ended with PostgreSQL down (it failed): Patroni calls nothing for
            // it, and a later start is an `on_start`.
            self.restart_gap = false;
        }
        let event = match (self.seen, now) {
            (Some(Seen::Up { .. }), Seen::Down) if self.restarting => {
                self.restart_gap = true;
                None
            }
            (Some(Seen::Down), Seen::Up { role, .. }) if self.restart_gap => {
                self.restart_gap = false;
                Some((Event::Restart, role))
            }
            // The agent starts beside a running PostgreSQL: Patroni calls on_start once.
            (None, Seen::Up { role, .. }) => Some((Event::Start, role)),
            (None | Some(Seen::Down), Seen::Down) => None,
            (Some(Seen::Down), Seen::Up { role, .. }) => match self.last_role {
                Some(before) if before != role => Some((Event::RoleChange, role)),
                _ => Some((Event::Start, role)),
            },
            (Some(Seen::Up { role, .. }), Seen::Down) => {
                let role = if role == Role::Primary && !holds_key {
                    Role::Demoted
                } else {
                    role
                };
                Some((Event::Stop, role))
            }
            (Some(Seen::Up { pid: a, role: r }), Seen::Up { pid: b, role }) => {
                if r != role {
                    Some((Event::RoleChange, role))
                } else if a != b {
                    Some((Event::Restart, role))
                } else {
                    None
                }
            }
        };
        self.seen = Some(now);
        if let Seen::Up { role, .. } = now {
            self.last_role = Some(role);
        }
        if let Some((event, role)) = event {
            self.fire(event, role);
        }
        if reloaded && let Seen::Up { role, .. } = now {
            self.fire(Event::Reload, role);
        }
    }

    /// Run the callback of `event` (if configured) without waiting for it: kill the running
    /// one first (for `on_reload`, the running `on_reload`).
    pub fn fire(&mut self, event: Event, role: Role) {
        let Some(script) = self.script(event).cloned() else {
            return;
        };
        let mut argv = script.argv;
        argv.extend([
            event.action().to_owned(),
            role.name().to_owned(),
            self.scope.clone(),
        ]);
        let slot = if event == Event::Reload {
            &mut self.reloading
        } else {
            &mut self.running
        };
        let before = slot.take().map(Running::kill);
        let mut cmd = baton_pg::clean_command(&argv[0], None);
        cmd.args(&argv[1..])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let shown = argv.join(" ");
        match cmd.spawn() {
            Ok(child) => {
                self.failed.remove(&argv[0]);
                info!(callback = %shown, "running callback");
                let (kill, killed) = oneshot::channel();
                let task = tokio::spawn(supervise(child, shown, before, killed));
                *slot = Some(Running {
                    kill: Some(kill),
                    task,
                });
            }
            Err(e) => {
                if self.failed.insert(argv[0].clone()) {
                    warn!(
                        "postgresql.callbacks.{}: {shown} could not be started: {e}",
                        event.action()
                    );
                }
            }
        }
    }

    /// `postgresql.pre_promote`, waited for: `Ok` when none is set or it exited 0.
    pub async fn pre_promote(&mut self) -> Result<(), PrePromoteFailed> {
        let Some(script) = self.pre_promote.clone() else {
            return Ok(());
        };
        info!(command = %script.argv.join(" "), "running pre_promote");
        run_waited(&script.argv, &[], self.timeout)
            .await
            .map_err(PrePromoteFailed)
    }

    /// `postgresql.before_stop`, waited for, before a stop in `mode` of a PostgreSQL not
    /// last seen stopped; a failure is logged and nothing else. Never before an immediate
    /// stop: that is fencing (or a demotion that must not wait).
    pub async fn before_stop(&mut self, mode: StopMode) {
        if mode == StopMode::Immediate || self.seen == Some(Seen::Down) {
            return;
        }
        self.before_stop_job().run().await;
    }

    /// `postgresql.before_stop` as a job a restart runs (beside the loop) before its stop.
    pub fn before_stop_job(&self) -> BeforeStop {
        BeforeStop {
            script: self.before_stop.clone(),
            timeout: self.timeout,
        }
    }

    /// `bootstrap.post_bootstrap` as a job the bootstrap runs (beside the loop): waited for,
    /// with the superuser's connection URL to the local PostgreSQL (over its Unix socket) as
    /// its last argument and `PGPASSFILE` set to the pgpass file. Its failure fails the
    /// bootstrap.
    pub fn post_bootstrap(&self, config: &Config, dynamic: &DynamicConfig) -> PostBootstrap {
        PostBootstrap {
            script: self.post_bootstrap.clone(),
            url: local_url(config, dynamic),
            pgpass: config.postgresql.pgpass.clone(),
            timeout: self.timeout,
        }
    }
}

/// `postgresql.before_stop`, ready to run (see [`Callbacks::before_stop_job`]).
#[derive(Clone, Debug)]
pub struct BeforeStop {
    script: Option<Script>,
    timeout: Duration,
}

impl BeforeStop {
    /// Run it and wait (nothing when none is set); a failure is logged and the stop goes on.
    pub async fn run(self) {
        let Some(script) = self.script else {
            return;
        };
        info!(command = %script.argv.join(" "), "running before_stop");
        if let Err(e) = run_waited(&script.argv, &[], self.timeout).await {
            warn!("postgresql.before_stop failed, stopping PostgreSQL anyway: {e}");
        }
    }
}

/// `bootstrap.post_bootstrap`, ready to run (see [`Callbacks::post_bootstrap`]).
#[derive(Clone, Debug)]
pub struct PostBootstrap {
    script: Option<Script>,
    url: String,
    pgpass: std::path::PathBuf,
    timeout: Duration,
}

impl PostBootstrap {
    /// Run it (nothing when none is set); a failure names the key.
    pub async fn run(&self) -> anyhow::Result<()> {
        self.run_script()
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap.post_bootstrap failed: {e}"))
    }

    async fn run_script(&self) -> Result<(), ScriptError> {
        let Some(script) = self.script.clone() else {
            return Ok(());
        };
        let mut argv = script.argv;
        argv.push(self.url.clone());
        info!(command = %argv.join(" "), "running post_bootstrap");
        run_waited(
            &argv,
            &[("PGPASSFILE", self.pgpass.as_os_str().to_owned())],
            self.timeout,
        )
        .await
    }
}

/// `postgresql://<superuser>@<socket directory>:<port>/postgres`, the host percent-encoded
/// (libpq reads a host starting with `/` as a socket directory).
pub fn local_url(config: &Config, dynamic: &DynamicConfig) -> String {
    let settings = crate::pg_settings(config, dynamic);
    let socket = baton_pg::render::socket_dir(&settings);
    format!(
        "postgresql://{}@{}:{}/postgres",
        encode(&config.postgresql.superuser.username),
        encode(&socket.display().to_string()),
        config.postgresql.port
    )
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wait for the previous callback to be gone, then for this one, or kill its process group
/// when told to. Reaps the child either way.
async fn supervise(
    mut child: tokio::process::Child,
    shown: String,
    before: Option<JoinHandle<()>>,
    killed: oneshot::Receiver<()>,
) {
    if let Some(before) = before {
        let _ = before.await;
    }
    let status = tokio::select! {
        status = child.wait() => status,
        _ = killed => {
            kill_group(&child);
            info!(callback = %shown, "killed the running callback for a newer one");
            child.wait().await
        }
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => warn!(callback = %shown, "callback failed: {}", describe(s)),
        Err(e) => warn!(callback = %shown, "failed to wait for the callback: {e}"),
    }
}

/// SIGKILL to the child's process group (it leads one: `clean_command`), children included.
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{status}"),
    }
}

/// Run `argv` and wait for it up to `limit` (then kill its process group); its output's last
/// line is kept for the error.
async fn run_waited(
    argv: &[String],
    env: &[(&str, std::ffi::OsString)],
    limit: Duration,
) -> Result<(), ScriptError> {
    let mut cmd = baton_pg::clean_command(&argv[0], None);
    cmd.args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ScriptError::Spawn(format!("{}: {e}", argv[0])))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Both pipes at once: a script that fills one while the other is read would hang.
    let read = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(o) = stdout.as_mut() {
                let _ = o.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        out.extend(err);
        out
    };
    let waited = tokio::time::timeout(limit, async {
        let text = read.await;
        (child.wait().await, text)
    })
    .await;
    match waited {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), text)) => Err(ScriptError::Failed {
            status: describe(status),
            output: last_line(&text),
        }),
        Ok((Err(e), _)) => Err(ScriptError::Spawn(format!("wait for {}: {e}", argv[0]))),
        Err(_) => {
            kill_group(&child);
            let _ = child.wait().await;
            Err(ScriptError::Timeout(limit))
        }
    }
}

/// The last non-empty line of a script's output, shortened, for a one-line message.
fn last_line(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
