//! `query`: SQL on a member, as patronictl runs it (a libpq-style connection to the member's
//! `conn_url` host and port, autocommit, the last statement's rows).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_cli::cli::{Format, Role};
use baton_cli::table::{Table, render};
use serde_json::Value;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::{Ctx, pick_member, timestamp};

pub(crate) struct Query {
    pub(crate) sql: String,
    pub(crate) format: Format,
    pub(crate) delimiter: String,
    pub(crate) role: Option<Role>,
    pub(crate) member: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) dbname: Option<String>,
    pub(crate) ask_password: bool,
    pub(crate) watch: Option<Duration>,
}

/// What one run printed: rows, or a message row (`timestamp`, text) as patronictl prints them.
enum Outcome {
    Rows(Table),
    Message(String),
}

pub(crate) async fn run(ctx: &Ctx, q: Query) -> anyhow::Result<()> {
    let password = if q.ask_password {
        Some(read_password()?)
    } else {
        std::env::var("PGPASSWORD").ok()
    };
    let user = q
        .username
        .clone()
        .or_else(|| std::env::var("PGUSER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".to_owned());
    let dbname = q
        .dbname
        .clone()
        .or_else(|| std::env::var("PGDATABASE").ok())
        .unwrap_or_else(|| user.clone());
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failed = false;
    loop {
        if client.is_none() {
            client = match connect(ctx, &q, &user, &dbname, password.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    print_outcome(&Outcome::Message(error_text(&e)), &q);
                    failed = true;
                    None
                }
            };
            if client.is_none() && !failed {
                let message = match (&q.member, q.role) {
                    (Some(m), _) => format!("No connection to member {m} is available"),
                    (None, role) => format!(
                        "No connection to role={} is available",
                        role_name(role.unwrap_or(Role::Leader))
                    ),
                };
                print_outcome(&Outcome::Message(message), &q);
                failed = true;
            }
        }
        if let Some(c) = &client {
            match execute(c, &q.sql).await {
                Ok(table) => print_outcome(&Outcome::Rows(table), &q),
                Err(e) => {
                    print_outcome(&Outcome::Message(error_text(&e)), &q);
                    failed = true;
                    client = None;
                }
            }
        }
        match q.watch {
            Some(p) => {
                tokio::time::sleep(p).await;
                failed = false;
            }
            None if failed => anyhow::bail!("the query did not run"),
            None => return Ok(()),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Primary => "primary",
        Role::StandbyLeader => "standby-leader",
        Role::Replica => "replica",
        Role::Any => "any",
    }
}

/// patronictl's `ERROR, SQLSTATE: <code, else the message>`.
fn error_text(e: &anyhow::Error) -> String {
    let sqlstate = e
        .chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .and_then(|pg| pg.code().map(|c| c.code().to_owned()));
    let text = sqlstate.unwrap_or_else(|| format!("{e:#}"));
    format!("ERROR, SQLSTATE: {}", text.replace('\n', " "))
}

fn print_outcome(outcome: &Outcome, q: &Query) {
    match outcome {
        Outcome::Rows(table) => print!("{}", render(table, q.format, &q.delimiter)),
        Outcome::Message(m) => println!("{}{}{m}", timestamp(), q.delimiter),
    }
}

/// A connection to the chosen member, `None` when no member fits (or it has the wrong role).
async fn connect(
    ctx: &Ctx,
    q: &Query,
    user: &str,
    dbname: &str,
    password: Option<&str>,
) -> anyhow::Result<Option<tokio_postgres::Client>> {
    let view = ctx.read().await?;
    let Some(member) = pick_member(&view, q.role, q.member.as_deref()) else {
        return Ok(None);
    };
    let Some((host, port)) = member.pg_host_port() else {
        return Ok(None);
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .application_name("pgbaton ctl")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = password {
        config.password(p);
    }
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
        .await
        .with_context(|| format!("connect to {host}:{port}: timed out"))?
        .with_context(|| format!("connect to {host}:{port}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // patronictl checks the role it was asked for on the server itself.
    let wanted = match (q.member.as_ref(), q.role.unwrap_or(Role::Leader)) {
        // patronictl's get_cursor: the leader of a standby cluster is in recovery too, so
        // `leader` (like `any`) takes the member as it is.
        (Some(_), _) | (None, Role::Any | Role::Leader) => None,
        (None, Role::Replica | Role::StandbyLeader) => Some(true),
        (None, Role::Primary) => Some(false),
    };
    if let Some(in_recovery) = wanted {
        let rows = client
            .simple_query("SELECT pg_catalog.pg_is_in_recovery()")
            .await
            .context("SELECT pg_is_in_recovery()")?;
        let actual = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        });
        if actual != Some(in_recovery) {
            return Ok(None);
        }
    }
    Ok(Some(client))
}

/// Runs the SQL (several statements allowed); the last statement's rows as a table, values as
/// PostgreSQL's text (NULL as Python's `None`).
async fn execute(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Table> {
    let messages = client.simple_query(sql).await.context("run the query")?;
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                let cols: Arc<[tokio_postgres::SimpleColumn]> = cols;
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
                rows.clear();
            }
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| {
                        r.get(i)
                            .map_or(Value::Null, |v| Value::String(v.to_owned()))
                    })
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(Table {
        title: None,
        columns,
        rows,
        right: Vec::new(),
        members: false,
    })
}

/// `--password`: read from the terminal without echo.
fn read_password() -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "--password asks on a terminal and standard input is not one (set PGPASSWORD or use a \
             .pgpass file instead)"
        );
    }
    eprint!("Password: ");
    let saved = tcgetattr(&stdin).context("read the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turn off echo")?;
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut stdin.lock(), &mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read.context("read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
