//! `show-config` and `edit-config`.
//!
//! patronictl merges client-side and writes the DCS `config` key itself with compare-and-swap.
//! pgbaton merges client-side too (so the diff shown is exactly what gets written), then sends
//! the whole new document to the leader's REST API as `PUT /config` with `If-Match: <the
//! revision shown>`: the agent validates it and writes it with compare-and-swap on that
//! revision, and its audit log records who changed the configuration, in one place for the
//! REST API and the CLI.

use std::io::{IsTerminal, Read};
use std::process::Stdio;

use anyhow::Context;
use baton_cli::editconfig;
use serde_json::Value;

use super::{Ctx, confirm, http, leader_first, member_api};

pub(crate) async fn show(ctx: &Ctx) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let Some(c) = &view.config else {
        anyhow::bail!("the cluster has no dynamic configuration (config key missing)");
    };
    let value: Value =
        serde_json::from_str(&c.value).context("the config key does not hold JSON")?;
    print!(
        "{}",
        editconfig::to_yaml(&value).map_err(|e| anyhow::anyhow!(e))?
    );
    Ok(())
}

/// `edit-config`'s options.
pub(crate) struct Edit {
    pub(crate) quiet: bool,
    pub(crate) set: Vec<String>,
    pub(crate) pg: Vec<String>,
    pub(crate) apply: Option<String>,
    pub(crate) replace: Option<String>,
    pub(crate) force: bool,
}

/// A YAML file's text, `-` for standard input.
fn read_source(name: &str) -> anyhow::Result<String> {
    if name == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(name).with_context(|| format!("read {name}"))
    }
}

fn msg(e: String) -> anyhow::Error {
    anyhow::anyhow!(e)
}

pub(crate) async fn edit(ctx: &Ctx, edit: Edit) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let (data, revision) = match &view.config {
        Some(c) => (
            serde_json::from_str::<Value>(&c.value).context("the config key does not hold JSON")?,
            Some(c.mod_revision),
        ),
        None => (Value::Object(Default::default()), None),
    };
    let before = editconfig::to_yaml(&data).map_err(msg)?;
    let mut changed = data.clone();
    let mut requested = false;
    if let Some(file) = &edit.replace {
        changed = editconfig::replace_yaml(&read_source(file)?, file).map_err(msg)?;
        requested = true;
    }
    if let Some(file) = &edit.apply {
        changed = editconfig::apply_yaml(&changed, &read_source(file)?, file).map_err(msg)?;
        requested = true;
    }
    if !edit.set.is_empty() || !edit.pg.is_empty() {
        let pairs: Vec<String> = edit
            .set
            .iter()
            .cloned()
            .chain(edit.pg.iter().map(|p| editconfig::pg_pair(p)))
            .collect();
        changed = editconfig::set_values(&changed, &pairs).map_err(msg)?;
        requested = true;
    }
    if !requested {
        changed = run_editor(&before, &ctx.cluster)?;
    }
    if changed == data {
        if !edit.quiet {
            println!("Not changed");
        }
        return Ok(());
    }
    // Checked here first, so a bad value is reported with its key path before anything is
    // sent; the agent checks again before writing.
    if let Err(e) = baton_config::DynamicConfig::from_json_strict(&changed.to_string()) {
        anyhow::bail!("invalid configuration, nothing changed:\n{e}");
    }
    if !edit.quiet {
        let after = editconfig::to_yaml(&changed).map_err(msg)?;
        print!("{}", editconfig::unified_diff(&before, &after));
    }
    let from_stdin = edit.apply.as_deref() == Some("-") || edit.replace.as_deref() == Some("-");
    if from_stdin && !edit.force {
        println!("Use --force option to apply changes");
        return Ok(());
    }
    confirm(edit.force, "Apply these changes?")?;
    put_config(ctx, &view, &changed, revision).await?;
    println!("Configuration changed");
    Ok(())
}

/// `PUT /config` on the leader, else the first other member that answers.
async fn put_config(
    ctx: &Ctx,
    view: &baton_core::ClusterView,
    config: &Value,
    revision: Option<i64>,
) -> anyhow::Result<()> {
    let headers: Vec<(&str, String)> = revision
        .map(|r| vec![("If-Match", r.to_string())])
        .unwrap_or_default();
    let mut unreachable = Vec::new();
    for member in leader_first(view) {
        let url = format!("{}/config", member_api(member)?);
        match http::request(
            &ctx.config,
            reqwest::Method::PUT,
            &url,
            Some(config),
            &headers,
        )
        .await
        {
            Ok(reply) if reply.ok() => return Ok(()),
            Ok(reply) if reply.status == 409 => {
                anyhow::bail!(
                    "Config modification aborted due to concurrent changes: {}",
                    reply.body
                )
            }
            Ok(reply) => anyhow::bail!("PUT {url}: {}: {}", reply.status, reply.body),
            Err(e) => {
                eprintln!("warning: member {} is not accessible: {e:#}", member.name);
                unreachable.push(member.name.to_string());
            }
        }
    }
    if unreachable.is_empty() {
        anyhow::bail!(
            "no member of cluster {} has a REST API in the DCS",
            ctx.cluster
        )
    }
    anyhow::bail!(
        "no member's REST API answered ({}): nothing changed",
        unreachable.join(", ")
    )
}

/// The interactive path: `$EDITOR` (else `editor`, else `vi`) on a temporary YAML file.
fn run_editor(before: &str, cluster: &str) -> anyhow::Result<Value> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "nothing to change: give --set, --pg, --apply or --replace (an editor is started only \
             when standard input is a terminal)"
        );
    }
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            ["editor", "vi"]
                .iter()
                .find(|e| find_executable(e))
                .map(|e| (*e).to_owned())
        })
        .context("EDITOR environment variable is not set. editor or vi are not available")?;
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{cluster}-config-"))
        .suffix(".yaml")
        .tempfile()
        .context("create a temporary file to edit")?;
    std::io::Write::write_all(&mut file, before.as_bytes()).context("write the temporary file")?;
    let status = std::process::Command::new(&editor)
        .arg(file.path())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .status()
        .with_context(|| format!("start the editor {editor}"))?;
    if !status.success() {
        anyhow::bail!("Editor exited with {status}");
    }
    let text = std::fs::read_to_string(file.path()).context("read the edited file")?;
    editconfig::replace_yaml(&text, "the edited configuration").map_err(msg)
}

fn find_executable(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}
