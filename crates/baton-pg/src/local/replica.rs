//! Creating a replica by the configured methods (`postgresql.create_replica_methods`):
//! `pg_basebackup` with `postgresql.basebackup`'s options, or an operator's command with
//! Patroni's arguments (`baton_core::custom_method_args`), tried in order until one succeeds
//! (`baton_core::methods_to_try`). Every process runs in its own process group, killed when
//! the future is dropped (a shutdown cancels a clone).

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use baton_core::{CustomMethod, ReplicaMethod, Upstream, custom_method_args, methods_to_try};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::time::sleep;
use tracing::{info, warn};

use super::{
    CONNECT_TIMEOUT_SECS, GroupGuard, LocalPostgres, RunOpts, STALL_TIMEOUT, clean_command, stalled,
};
use crate::{PgError, render};

/// Lines of a custom method's output kept for its error message.
const ERROR_TAIL_LINES: usize = 5;

impl LocalPostgres {
    /// Create this member's data directory from `source` by `methods` (the configured
    /// `create_replica_methods`; empty: `pg_basebackup`), in order, falling back to the next
    /// when one fails. Without a source (no member to copy from) only methods with
    /// `no_leader` run. PostgreSQL must be stopped. The data directory is emptied before each
    /// method, except for a custom method with `keep_data`. Starting the server afterwards is
    /// the caller's (as a standby of the source, or whatever it chooses).
    pub async fn create_replica(
        &self,
        source: Option<&Upstream>,
        methods: &[ReplicaMethod],
    ) -> Result<(), PgError> {
        self.refuse_if_running("create a replica")?;
        let tries = methods_to_try(methods, source.is_some());
        if tries.is_empty() {
            return Err(PgError::Other(
                "no replica creation method works without a member to copy from (none has \
                 no_leader)"
                    .to_owned(),
            ));
        }
        let mut failures = Vec::new();
        for method in tries {
            let result = match (method, source) {
                (ReplicaMethod::Basebackup, Some(source)) => self.basebackup(source).await,
                (ReplicaMethod::Basebackup, None) => Err(PgError::Other(
                    "basebackup needs a member to copy from".to_owned(),
                )),
                (ReplicaMethod::Custom(m), source) => self.custom_method(m, source).await,
            };
            match result {
                Ok(()) => {
                    self.after_replica_created()?;
                    info!("replica created using {}", method.name());
                    return Ok(());
                }
                Err(e) => {
                    warn!("creating the replica using {} failed: {e}", method.name());
                    failures.push(format!("{}: {e}", method.name()));
                }
            }
        }
        Err(PgError::Other(format!(
            "every replica creation method failed ({})",
            failures.join("; ")
        )))
    }

    /// Copied or restored from elsewhere: that server's startup log and a promote trigger
    /// are not ours; the directory gets our owner and mode.
    pub(super) fn after_replica_created(&self) -> Result<(), PgError> {
        self.ensure_data_dir()?;
        self.remove_file(&self.data_file("postmaster.log"))?;
        self.remove_file(&self.data_file("promote"))?;
        Ok(())
    }

    /// The source's libpq connection string as the replication user (its password is in the
    /// pgpass file), with `extra` pairs.
    fn source_dsn(&self, source: &Upstream, extra: &[(&str, &str)]) -> String {
        let s = &self.settings;
        let port = source.port.to_string();
        let connect_timeout = CONNECT_TIMEOUT_SECS.to_string();
        let mut pairs = vec![
            ("host", source.host.as_str()),
            ("port", &port),
            ("user", &s.replication.username),
        ];
        pairs.extend_from_slice(extra);
        pairs.push(("connect_timeout", &connect_timeout));
        pairs.extend(render::role_options(&s.replication));
        render::conninfo(&pairs)
    }

    /// `pg_basebackup` from `source`, twice at most; `postgresql.basebackup`'s options after
    /// pgbaton's own.
    async fn basebackup(&self, source: &Upstream) -> Result<(), PgError> {
        // Not the member's name: the clone's WAL stream must not be taken for the member's
        // walreceiver (the leader would pick it as a synchronous standby mid-clone).
        let dsn = self.source_dsn(source, &[("application_name", "pgbaton_basebackup")]);
        let options = &self.settings.basebackup_options;
        let own_checkpoint = !options
            .iter()
            .any(|o| o == "--checkpoint" || o.starts_with("--checkpoint="));
        let mut last_error = None;
        for attempt in 1..=2 {
            if attempt > 1 {
                sleep(Duration::from_secs(2)).await;
            }
            self.wipe()?;
            self.ensure_data_dir()?;
            self.write_pgpass()?;
            info!("cloning from {source} with pg_basebackup (attempt {attempt})");
            let mut args: Vec<OsString> = vec![self.data_dir_arg(), "--wal-method=stream".into()];
            if own_checkpoint {
                args.push("--checkpoint=fast".into());
            }
            args.push(format!("--dbname={dsn}").into());
            args.extend(options.iter().map(OsString::from));
            let opts = RunOpts {
                env: vec![self.pgpass_env()],
                c_locale: true,
                timeout: None,
                stall: Some(STALL_TIMEOUT),
            };
            match self.run("pg_basebackup", args, opts).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    warn!("pg_basebackup from {source} failed: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| PgError::Other("pg_basebackup did not run".into())))
    }

    /// An operator's command: `argv` + Patroni's arguments, `PGPASSFILE` set, its output
    /// logged line by line; exit code 0 is success.
    async fn custom_method(
        &self,
        method: &CustomMethod,
        source: Option<&Upstream>,
    ) -> Result<(), PgError> {
        let name = &method.name;
        if method.keep_data {
            info!("{name}: leaving the data directory as it is (keep_data)");
        } else {
            self.wipe()?;
        }
        self.ensure_data_dir()?;
        self.write_pgpass()?;
        let connstring = source
            .map(|s| self.source_dsn(s, &[("dbname", "postgres")]))
            .unwrap_or_default();
        let data_dir = self.data_dir().to_string_lossy().into_owned();
        let args = custom_method_args(method, &self.settings.scope, &data_dir, &connstring);
        info!(
            "creating the replica using {name}: {}",
            method
                .argv
                .iter()
                .chain(&args)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.run_operator_command(name, &method.argv, &args).await
    }

    /// An operator's command (a custom replica method's, a custom bootstrap's): `argv` then
    /// `args`, as PostgreSQL's OS user, `PGPASSFILE` set, its output logged line by line
    /// under `name`; killed with its process group when it reads and writes nothing for the
    /// stall timeout. Exit code 0 is success; otherwise the error has the command line, the
    /// exit status and the last lines of its output.
    pub(super) async fn run_operator_command(
        &self,
        name: &str,
        argv: &[String],
        args: &[String],
    ) -> Result<(), PgError> {
        let Some((program, own_args)) = argv.split_first() else {
            return Err(PgError::Other(format!("{name}: no command")));
        };
        let command = argv
            .iter()
            .chain(args)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = clean_command(program, self.settings.run_as);
        cmd.args(own_args)
            .args(args)
            .env(self.pgpass_env().0, self.pgpass_env().1)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| PgError::Io {
            context: format!("{name}: run {program}"),
            source,
        })?;
        let mut guard = GroupGuard(child.id());
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = async {
            tokio::join!(
                child.wait(),
                log_lines(name, "stdout", stdout),
                log_lines(name, "stderr", stderr)
            )
        };
        // Killed (with its group, by the guard) when it reads and writes nothing for the stall
        // timeout, as pg_basebackup is.
        let (status, mut out_tail, err_tail) = match pgid {
            Some(pgid) => tokio::select! {
                done = finished => done,
                () = stalled(pgid, STALL_TIMEOUT) => {
                    return Err(PgError::Stalled {
                        what: command,
                        after: STALL_TIMEOUT,
                    });
                }
            },
            None => finished.await,
        };
        guard.0 = None;
        let status = status.map_err(|source| PgError::Io {
            context: format!("{name}: wait for {program}"),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        out_tail.extend(err_tail);
        let keep = out_tail.len().saturating_sub(ERROR_TAIL_LINES);
        Err(PgError::Command {
            command,
            detail: format!("{status}: {}", out_tail[keep..].join(" / ")),
        })
    }
}

/// Log each line of a child's output with the method's name; the last lines, for the error.
async fn log_lines(
    method: &str,
    stream: &'static str,
    pipe: Option<impl AsyncRead + Unpin>,
) -> Vec<String> {
    let mut last = Vec::new();
    let Some(pipe) = pipe else { return last };
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(method, stream, "{line}");
        if last.len() == ERROR_TAIL_LINES {
            last.remove(0);
        }
        last.push(line);
    }
    last
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.to_string_lossy().into_owned()
    }

    fn method(name: &str, argv: &[&str], no_leader: bool, keep_data: bool) -> ReplicaMethod {
        ReplicaMethod::Custom(CustomMethod {
            name: name.into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            no_leader,
            keep_data,
            no_params: false,
            options: vec![("stanza".into(), "main".into())],
        })
    }

    fn source() -> Upstream {
        Upstream::member(
            baton_core::MemberName::new("leader").expect("name"),
            "10.0.0.7".into(),
            5433,
        )
    }

    /// A failing method, then one that cannot be run, then one that works: the third creates
    /// the replica with Patroni's arguments and `PGPASSFILE`; the data directory was emptied
    /// first (no `keep_data`).
    #[tokio::test]
    async fn methods_are_tried_in_order_until_one_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = super::super::tests::settings(dir.path());
        settings.replication.username = "replicator".into();
        let pg = LocalPostgres::new(settings);
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::write(dir.path().join("data/stale"), "x").expect("stale file");
        let record = dir.path().join("args");
        let failing = script(
            dir.path(),
            "failing.sh",
            "echo 'no backup here' >&2; exit 3",
        );
        let working = script(
            dir.path(),
            "restore.sh",
            &format!(
                "printf '%s\\n' \"$@\" \"PGPASSFILE=$PGPASSFILE\" > {}; echo 15 > \"${{4#--datadir=}}\"/PG_VERSION",
                record.display()
            ),
        );
        let missing = dir.path().join("missing.sh").to_string_lossy().into_owned();
        let methods = [
            method("failing", &[&failing], false, false),
            method("missing", &[&missing], false, false),
            method("restore", &[&working], false, false),
            ReplicaMethod::Basebackup,
        ];
        pg.create_replica(Some(&source()), &methods)
            .await
            .expect("the third method works");
        let data = dir.path().join("data");
        let args = std::fs::read_to_string(&record).expect("recorded");
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "--stanza=main",
                "--scope=test",
                "--role=replica",
                &format!("--datadir={}", data.display()),
                "--connstring=host=10.0.0.7 port=5433 user=replicator dbname=postgres connect_timeout=10",
                &format!("PGPASSFILE={}", dir.path().join("pgpass").display()),
            ]
        );
        assert!(
            !data.join("stale").exists(),
            "emptied before the method ran"
        );
        assert!(data.join("PG_VERSION").exists());
    }

    #[tokio::test]
    async fn without_a_source_only_no_leader_methods_run_and_keep_data_keeps_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(super::super::tests::settings(dir.path()));
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::write(dir.path().join("data/kept"), "x").expect("file");
        let marker = dir.path().join("ran");
        let needs_leader = script(
            dir.path(),
            "needs_leader.sh",
            &format!("touch {}", marker.display()),
        );
        let methods = [method("needs_leader", &[&needs_leader], false, false)];
        let err = pg
            .create_replica(None, &methods)
            .await
            .expect_err("nothing works without a source");
        assert!(err.to_string().contains("no_leader"), "{err}");
        assert!(!marker.exists());
        let restore = script(
            dir.path(),
            "restore.sh",
            &format!("echo \"$@\" > {}", marker.display()),
        );
        let methods = [
            method("needs_leader", &[&needs_leader], false, false),
            method("restore", &[&restore], true, true),
        ];
        pg.create_replica(None, &methods).await.expect("restored");
        let args = std::fs::read_to_string(&marker).expect("ran");
        assert!(
            args.contains("--connstring= ") || args.trim_end().ends_with("--connstring="),
            "{args}"
        );
        assert!(dir.path().join("data/kept").exists(), "keep_data");
    }

    /// The port's entry point is this implementation (not the basebackup-only default).
    #[tokio::test]
    async fn the_port_runs_the_custom_methods() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(super::super::tests::settings(dir.path()));
        let marker = dir.path().join("ran");
        let restore = script(
            dir.path(),
            "restore.sh",
            &format!("touch {}", marker.display()),
        );
        let methods = [method("restore", &[&restore], true, false)];
        crate::Postgres::create_replica(&pg, None, &methods)
            .await
            .expect("restored");
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn when_every_method_fails_the_error_names_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(super::super::tests::settings(dir.path()));
        let failing = script(
            dir.path(),
            "failing.sh",
            "echo 'bucket not found' >&2; exit 2",
        );
        let methods = [
            method("failing", &[&failing], true, false),
            method("absent", &["/nonexistent/restore"], true, false),
        ];
        let err = pg
            .create_replica(Some(&source()), &methods)
            .await
            .expect_err("all fail")
            .to_string();
        assert!(
            err.starts_with("every replica creation method failed (failing: "),
            "{err}"
        );
        assert!(err.contains("bucket not found"), "{err}");
        assert!(
            err.contains("absent: absent: run /nonexistent/restore"),
            "{err}"
        );
    }
}
