//! Finding the external programs a test needs, and deciding whether to skip.
//!
//! Overrides (environment):
//! - `PGBATON_BIN`: the `pgbaton` binary (default: `pgbaton` next to the test executable's
//!   `deps/` directory, i.e. `$CARGO_TARGET_DIR/debug/pgbaton`);
//! - `PGBATON_PG_BIN_DIR` (or `PGBATON_PG_BIN`, as baton-pg's tests call it): PostgreSQL
//!   binaries (default `/usr/lib/postgresql/15/bin`);
//! - `PGBATON_ETCD_BIN`, `PGBATON_HAPROXY_BIN`: etcd and HAProxy (default: found in `PATH`,
//!   `/usr/sbin`, `/usr/bin`);
//! - `PGBATON_TEST_TMPDIR`: where test directories are created (default `/tmp`);
//! - `PGBATON_TEST_TIMEOUT_SCALE`: multiply every deadline (default 1; slow CI may use 2–3);
//! - `PGBATON_REQUIRE_INTEGRATION=1`: a missing program fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid, User};

/// Everything a real-process test needs, found and checked.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The `pgbaton` binary as built by cargo (copied into each test directory before use).
    pub pgbaton: PathBuf,
    /// PostgreSQL's `bin_dir`.
    pub pg_bin_dir: PathBuf,
    pub etcd: PathBuf,
    pub haproxy: PathBuf,
    /// Agents (and so PostgreSQL) run as this user; `None` = as the current user.
    /// When the tests run as root this is `postgres`, because PostgreSQL refuses to run as root.
    pub run_as: Option<RunAs>,
    /// Parent of the per-test temporary directories.
    pub tmp_root: PathBuf,
}

/// The unprivileged OS user that runs agents when the tests run as root.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// `runuser`, used to drop privileges.
    pub runuser: PathBuf,
}

impl Tools {
    /// Find every program; `Err` lists all that are missing.
    pub fn discover() -> Result<Tools, Vec<String>> {
        crate::tls::install_provider();
        let mut missing = Vec::new();
        let pgbaton = match std::env::var_os("PGBATON_BIN") {
            Some(p) => Some(PathBuf::from(p)),
            None => default_pgbaton_path(),
        };
        let pgbaton = match pgbaton {
            Some(p) if is_executable(&p) => Some(p),
            Some(p) => {
                missing.push(format!(
                    "pgbaton binary {} (build it: cargo build -p baton-cli, or set PGBATON_BIN)",
                    p.display()
                ));
                None
            }
            None => {
                missing.push("pgbaton binary (set PGBATON_BIN)".to_owned());
                None
            }
        };
        let pg_bin_dir = std::env::var_os("PGBATON_PG_BIN_DIR")
            .or_else(|| std::env::var_os("PGBATON_PG_BIN"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        for prog in [
            "postgres",
            "initdb",
            "pg_ctl",
            "pg_basebackup",
            "pg_rewind",
            "pg_controldata",
        ] {
            if !is_executable(&pg_bin_dir.join(prog)) {
                missing.push(format!(
                    "{} (apt-get install postgresql-15, or set PGBATON_PG_BIN_DIR)",
                    pg_bin_dir.join(prog).display()
                ));
            }
        }
        let etcd = find_program("PGBATON_ETCD_BIN", "etcd");
        if etcd.is_none() {
            missing.push("etcd (apt-get install etcd-server, or set PGBATON_ETCD_BIN)".to_owned());
        }
        let haproxy = find_program("PGBATON_HAPROXY_BIN", "haproxy");
        if haproxy.is_none() {
            missing
                .push("haproxy (apt-get install haproxy, or set PGBATON_HAPROXY_BIN)".to_owned());
        }
        let run_as = if Uid::effective().is_root() {
            match (User::from_name("postgres"), find_program("", "runuser")) {
                (Ok(Some(user)), Some(runuser)) => Some(RunAs {
                    name: user.name,
                    uid: user.uid,
                    gid: user.gid,
                    runuser,
                }),
                (_, None) => {
                    missing
                        .push("runuser (util-linux), needed to run agents as postgres".to_owned());
                    None
                }
                _ => {
                    missing.push(
                        "OS user postgres (running as root; PostgreSQL refuses to run as root)"
                            .to_owned(),
                    );
                    None
                }
            }
        } else {
            None
        };
        let tmp_root = std::env::var_os("PGBATON_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(Tools {
            pgbaton: pgbaton.expect("checked above"),
            pg_bin_dir,
            etcd: etcd.expect("checked above"),
            haproxy: haproxy.expect("checked above"),
            run_as,
            tmp_root,
        })
    }

    /// For a test named `test`: the tools, or `Ok(None)` after printing a SKIP line when some
    /// are missing, or `Err` when they are missing and `PGBATON_REQUIRE_INTEGRATION=1`.
    pub fn for_test(test: &str) -> anyhow::Result<Option<Tools>> {
        match Tools::discover() {
            Ok(tools) => Ok(Some(tools)),
            Err(missing) => {
                let list = missing.join("; ");
                if required() {
                    bail!(
                        "{test}: PGBATON_REQUIRE_INTEGRATION=1 but the integration test \
                         prerequisites are missing: {list} (scripts/install-deps.sh installs them)"
                    );
                }
                println!(
                    "SKIP {test}: missing {list} (set PGBATON_REQUIRE_INTEGRATION=1 to make this a failure)"
                );
                Ok(None)
            }
        }
    }

    /// [`Tools::for_test`] for a test whose nodes are hosts in network namespaces: also needs
    /// root, `ip`, `iptables`, `nsenter`, `setpriv` and the right to create namespaces
    /// (see [`crate::NetTools`]).
    pub fn for_netns_test(test: &str) -> anyhow::Result<Option<Tools>> {
        let mut missing = Tools::discover().err().unwrap_or_default();
        missing.extend(crate::netns::NetTools::discover().err().unwrap_or_default());
        if missing.is_empty() {
            return Tools::for_test(test);
        }
        let list = missing.join("; ");
        if required() {
            bail!(
                "{test}: PGBATON_REQUIRE_INTEGRATION=1 but the integration test prerequisites \
                 are missing: {list} (scripts/install-deps.sh installs the programs)"
            );
        }
        println!(
            "SKIP {test}: missing {list} (set PGBATON_REQUIRE_INTEGRATION=1 to make this a failure)"
        );
        Ok(None)
    }

    /// The `postgres` user's uid/gid when the tests run as root (for `chown`).
    pub fn owner(&self) -> Option<(Uid, Gid)> {
        self.run_as.as_ref().map(|r| (r.uid, r.gid))
    }

    /// Make `path` owned by the agents' user (no-op when not root).
    pub fn chown_to_agent_user(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner() {
            nix::unistd::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }

    /// A command that runs `program` as the agents' user.
    pub fn command_as_agent_user(&self, program: &Path) -> std::process::Command {
        match &self.run_as {
            Some(r) => {
                let mut cmd = std::process::Command::new(&r.runuser);
                cmd.arg("-u").arg(&r.name).arg("--").arg(program);
                cmd
            }
            None => std::process::Command::new(program),
        }
    }
}

/// `PGBATON_REQUIRE_INTEGRATION=1`.
pub(crate) fn required() -> bool {
    std::env::var("PGBATON_REQUIRE_INTEGRATION").as_deref() == Ok("1")
}

/// `d` multiplied by `PGBATON_TEST_TIMEOUT_SCALE` (default 1).
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("PGBATON_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// The fence guard binary's file name (`baton_agent::guard::GUARD_BINARY`).
pub(crate) const FENCE_GUARD_BINARY: &str = "pgbaton-fence-guard";

impl Tools {
    /// The fence guard binary built beside `pgbaton` (`cargo build -p baton-cli` builds both),
    /// if there is one.
    pub fn fence_guard(&self) -> Option<PathBuf> {
        Some(self.pgbaton.with_file_name(FENCE_GUARD_BINARY)).filter(|p| is_executable(p))
    }

    /// Copy `pgbaton` into `dir` (mode 0755), and the fence guard binary beside it when it was
    /// built (the agent starts the guard from its own directory; without it, the agent runs
    /// its built-in guard). Returns the copy of `pgbaton`.
    pub fn install_pgbaton(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let mut copies = vec![(self.pgbaton.clone(), dir.join("pgbaton"))];
        if let Some(guard) = self.fence_guard() {
            copies.push((guard, dir.join(FENCE_GUARD_BINARY)));
        }
        for (from, to) in &copies {
            std::fs::copy(from, to)
                .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", to.display()))?;
        }
        Ok(dir.join("pgbaton"))
    }
}

/// `$target/debug/deps/<test>-<hash>` → `$target/debug/pgbaton`.
fn default_pgbaton_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    Some(dir.join("pgbaton"))
}

pub(crate) fn find_program(env: &str, name: &str) -> Option<PathBuf> {
    if !env.is_empty()
        && let Some(p) = std::env::var_os(env)
    {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
