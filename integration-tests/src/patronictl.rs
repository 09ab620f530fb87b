//! Patroni's own `patronictl`, run against a test cluster: the compatibility oracle for the
//! etcd layout and the REST API as Patroni's tools use them.
//!
//! `patronictl` comes from PyPI (`patroni[etcd3]` at [`PATRONI_REQUIREMENT`], plus
//! `psycopg2-binary` for `patronictl query`) in a virtualenv made with the system's
//! `/usr/bin/python3 -m venv` (Debian package `python3-venv`), the recipe of the Makefile's
//! `bench-patroni`. The virtualenv is made once and kept: by default in
//! `$CARGO_TARGET_DIR/patroni-venv` (the target directory the test executable lives in), or
//! where `PGBATON_PATRONI_VENV` says; an exclusive lock on `<venv>.lock` serialises tests
//! that want it at the same time, and a stamp file inside it marks a complete installation
//! (a venv whose `pip install` was interrupted is made again).
//!
//! When it cannot be made (no `python3-venv`, no network), [`patronictl_venv`] prints a SKIP
//! line, or fails under `PGBATON_REQUIRE_INTEGRATION=1`. `patronictl` runs as the test's own
//! user (it is a client: etcd over HTTP, the agents' REST API, `query` over TCP).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::tools::{required, scaled};

/// What `pip install` gets: Patroni 4.1 with its etcd v3 client.
pub const PATRONI_REQUIREMENT: &str = "patroni[etcd3]==4.1.*";
/// The PostgreSQL driver `patronictl query` imports.
const PSYCOPG_REQUIREMENT: &str = "psycopg2-binary";
/// Written inside the venv once everything is installed; holds the requirements.
const STAMP: &str = ".pgbaton-venv-complete";

/// Where the virtualenv lives: `PGBATON_PATRONI_VENV`, else `patroni-venv` in the cargo
/// target directory of the running test executable (`$target/debug/deps/<test>` →
/// `$target/patroni-venv`), else under the temporary directory.
pub fn default_venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBATON_PATRONI_VENV") {
        return PathBuf::from(dir);
    }
    let target = std::env::current_exe().ok().and_then(|exe| {
        let mut dir = exe.parent()?;
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir = dir.parent()?;
        }
        // `debug` or `release`: the target directory is above it.
        Some(dir.parent()?.to_owned())
    });
    target
        .unwrap_or_else(std::env::temp_dir)
        .join("patroni-venv")
}

/// The `patronictl` of a complete virtualenv at `venv`, making the virtualenv first when
/// needed (`/usr/bin/python3 -m venv`, then `pip install`).
pub async fn ensure_venv(venv: &Path) -> anyhow::Result<PathBuf> {
    let lock_path = venv.with_extension("lock");
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    // Blocks while another test makes the venv.
    let _lock = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
    })
    .await?
    .with_context(|| format!("lock {}", lock_path.display()))?;

    let patronictl = venv.join("bin").join("patronictl");
    let wanted = format!("{PATRONI_REQUIREMENT} {PSYCOPG_REQUIREMENT}\n");
    let stamp = venv.join(STAMP);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && patronictl.exists() {
        return Ok(patronictl);
    }
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("remove the incomplete venv {}", venv.display()))?;
    }
    eprintln!(
        "harness: making a virtualenv with {PATRONI_REQUIREMENT} in {}",
        venv.display()
    );
    let python = Path::new("/usr/bin/python3");
    run_setup(
        python,
        &["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
        Duration::from_secs(120),
    )
    .await
    .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    run_setup(
        &venv.join("bin").join("pip"),
        &[
            "install".as_ref(),
            "--quiet".as_ref(),
            "--disable-pip-version-check".as_ref(),
            PATRONI_REQUIREMENT.as_ref(),
            PSYCOPG_REQUIREMENT.as_ref(),
        ],
        Duration::from_secs(600),
    )
    .await
    .context("pip install patroni (needs access to PyPI)")?;
    if !patronictl.exists() {
        bail!(
            "pip installed patroni but {} is missing",
            patronictl.display()
        );
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(patronictl)
}

async fn run_setup(
    program: &Path,
    args: &[&std::ffi::OsStr],
    limit: Duration,
) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(scaled(limit), cmd.output())
        .await
        .with_context(|| format!("{} did not finish in time", program.display()))?
        .with_context(|| format!("run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed ({}): {}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// For a test named `test`: `patronictl` of the shared virtualenv ([`default_venv_dir`]), or
/// `Ok(None)` after printing a SKIP line when it cannot be made, or `Err` when it cannot be
/// made and `PGBATON_REQUIRE_INTEGRATION=1`.
pub async fn patronictl_venv(test: &str) -> anyhow::Result<Option<PathBuf>> {
    venv_or_skip(test, &default_venv_dir(), required()).await
}

async fn venv_or_skip(test: &str, venv: &Path, required: bool) -> anyhow::Result<Option<PathBuf>> {
    match ensure_venv(venv).await {
        Ok(patronictl) => Ok(Some(patronictl)),
        Err(e) if required => Err(e.context(format!(
            "{test}: PGBATON_REQUIRE_INTEGRATION=1 but no patronictl in {}",
            venv.display()
        ))),
        Err(e) => {
            println!(
                "SKIP {test}: cannot make a virtualenv with patronictl in {}: {e:#} \
                 (set PGBATON_REQUIRE_INTEGRATION=1 to make this a failure)",
                venv.display()
            );
            Ok(None)
        }
    }
}

/// The `patronictl.yml` for a cluster: its scope, namespace and etcd v3 hosts, and the REST
/// API's basic-auth credentials (as `ctl.authentication`) when it has them.
pub fn ctl_config(
    scope: &str,
    namespace: &str,
    etcd_hosts: &[String],
    rest_auth: Option<(&str, &str)>,
) -> Value {
    let mut config = json!({
        "scope": scope,
        "namespace": namespace,
        "etcd3": { "hosts": etcd_hosts },
    });
    if let Some((username, password)) = rest_auth {
        config["ctl"] = json!({
            "authentication": { "username": username, "password": password },
        });
    }
    config
}

/// What one `patronictl` run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub args: Vec<String>,
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    fn from_output(args: &[&str], out: Output) -> CtlOutput {
        CtlOutput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "patronictl {:?} exited {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// `patronictl -c <patronictl.yml>` for one cluster.
#[derive(Clone, Debug)]
pub struct Patronictl {
    pub bin: PathBuf,
    pub config_path: PathBuf,
    /// The cluster name (`scope`), the positional argument of most commands.
    pub scope: String,
}

impl Patronictl {
    /// Write `patronictl.yml` for `cluster` into its directory. `rest_auth` must match the
    /// agents' `restapi.authentication`, if they have one.
    pub fn for_cluster(
        bin: PathBuf,
        cluster: &Cluster,
        rest_auth: Option<(&str, &str)>,
    ) -> anyhow::Result<Patronictl> {
        let spec = cluster.spec();
        let config = ctl_config(
            &spec.scope,
            &spec.namespace,
            &cluster.etcd().hosts(),
            rest_auth,
        );
        let config_path = cluster.dir().join("patronictl.yml");
        let yaml = crate::node::value_to_yaml(&config)?;
        std::fs::write(&config_path, yaml)
            .with_context(|| format!("write {}", config_path.display()))?;
        Ok(Patronictl {
            bin,
            config_path,
            scope: spec.scope.clone(),
        })
    }

    /// Run `patronictl -c <config> <args>` with a 90 s limit (scaled), without the caller's
    /// Patroni, pgbaton and libpq environment variables, plus `env`.
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<CtlOutput> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&self.config_path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PATRONI")
                || k.starts_with("PGBATON")
                || k.starts_with("PG")
                || k == "DCS_URL"
                || k.contains("LOGLEVEL")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied());
        // No pager, no colours, a wide terminal so that tables are not wrapped.
        cmd.env("PAGER", "cat").env("COLUMNS", "250");
        let out = tokio::time::timeout(scaled(Duration::from_secs(90)), cmd.output())
            .await
            .with_context(|| format!("patronictl {args:?} did not finish"))?
            .with_context(|| format!("run patronictl {args:?}"))?;
        let out = CtlOutput::from_output(args, out);
        eprintln!(
            "harness: patronictl {args:?} -> {:?}\n{}",
            out.code,
            out.text().trim_end()
        );
        Ok(out)
    }

    /// [`Patronictl::run_env`] with no extra environment.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CtlOutput> {
        self.run_env(args, &[]).await
    }

    /// Run, and fail (with everything it printed) unless it exits 0.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<CtlOutput> {
        let out = self.run(args).await?;
        if !out.success {
            bail!("{out}");
        }
        Ok(out)
    }

    /// Run (the arguments should ask for `-f json`) and decode stdout as JSON.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(args).await?;
        serde_json::from_str(&out.stdout).with_context(|| format!("stdout is not JSON: {out}"))
    }

    /// `patronictl list -f json`: one object per member (`Cluster`, `Member`, `Host`, `Role`,
    /// `State`, `TL`, `Receive LSN`, `Receive Lag`, `Replay LSN`, `Replay Lag`, ...).
    pub async fn list(&self) -> anyhow::Result<Vec<Value>> {
        match self.json(&["list", "-f", "json"]).await? {
            Value::Array(rows) => Ok(rows),
            other => bail!("patronictl list -f json printed {other}"),
        }
    }

    /// `patronictl history -f json`: one object per line (`TL`, `LSN`, `Reason`,
    /// `Timestamp`, `New Leader`).
    pub async fn history(&self) -> anyhow::Result<Vec<Value>> {
        match self.json(&["history", "-f", "json"]).await? {
            Value::Array(rows) => Ok(rows),
            other => bail!("patronictl history -f json printed {other}"),
        }
    }

    /// `patronictl show-config`, parsed from YAML.
    pub async fn show_config(&self) -> anyhow::Result<Value> {
        let out = self.ok(&["show-config"]).await?;
        serde_yaml::from_str(&out.stdout).with_context(|| format!("stdout is not YAML: {out}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_config_names_the_cluster_etcd_and_the_rest_credentials() {
        let hosts = vec!["127.0.0.1:2379".to_owned()];
        assert_eq!(
            ctl_config("batman", "/service/", &hosts, None),
            json!({"scope": "batman", "namespace": "/service/", "etcd3": {"hosts": ["127.0.0.1:2379"]}})
        );
        let with_auth = ctl_config("batman", "/service/", &hosts, Some(("u", "p")));
        assert_eq!(
            with_auth["ctl"],
            json!({"authentication": {"username": "u", "password": "p"}})
        );
    }

    /// A virtualenv that cannot be made skips the test, or fails it when required.
    #[tokio::test]
    async fn an_impossible_venv_skips_or_fails_when_required() {
        let venv = Path::new("/proc/pgbaton-no-such-dir/patroni-venv");
        assert!(venv_or_skip("t", venv, false).await.unwrap().is_none());
        let err = venv_or_skip("t", venv, true).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("PGBATON_REQUIRE_INTEGRATION=1")
                && text.contains("/proc/pgbaton-no-such-dir"),
            "{text}"
        );
    }
}
