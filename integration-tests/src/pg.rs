//! SQL access to a node (or to HAProxy's ports), with timeouts on every step.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls, Row, SimpleQueryMessage};

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

/// Connecting and each statement are bounded by this.
const SQL_TIMEOUT: Duration = Duration::from_secs(5);

impl PgTarget {
    /// The same credentials on another port (e.g. HAProxy's).
    pub fn with_port(&self, port: u16) -> PgTarget {
        PgTarget {
            port,
            ..self.clone()
        }
    }

    /// Open a connection (its driver task runs on the current tokio runtime).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_with_timeout(SQL_TIMEOUT).await
    }

    pub async fn connect_with_timeout(&self, timeout: Duration) -> anyhow::Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .application_name("pgbaton-it")
            .connect_timeout(timeout);
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
            .await
            .with_context(|| format!("connect to {}:{}: timed out", self.host, self.port))?
            .with_context(|| format!("connect to {}:{}", self.host, self.port))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Run `sql` (simple protocol, may contain several statements) on a fresh connection and
    /// return the rows of the last statement as text (NULL → `None`).
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let client = self.connect().await?;
        simple_query(&client, sql).await
    }

    /// The single value of a one-row, one-column query.
    pub async fn query_one(&self, sql: &str) -> anyhow::Result<String> {
        let rows = self.query(sql).await?;
        one_value(&rows).with_context(|| format!("{sql} on port {}", self.port))
    }

    /// Run statements for their effect.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.query(sql).await.map(drop)
    }

    /// `pg_is_in_recovery()`: `false` on a primary.
    pub async fn in_recovery(&self) -> anyhow::Result<bool> {
        Ok(self.query_one("SELECT pg_is_in_recovery()").await? == "t")
    }
}

/// Simple-protocol query with a timeout; the rows of the last statement as text.
pub async fn simple_query(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let msgs = tokio::time::timeout(SQL_TIMEOUT, client.simple_query(sql))
        .await
        .with_context(|| format!("{sql}: timed out"))?
        .with_context(|| sql.to_owned())?;
    let (mut current, mut last) = (Vec::new(), Vec::new());
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                current.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
            SimpleQueryMessage::CommandComplete(_) => last = std::mem::take(&mut current),
            _ => {}
        }
    }
    Ok(last)
}

/// Extended-protocol query with a timeout.
pub async fn query_rows(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<Row>> {
    tokio::time::timeout(SQL_TIMEOUT, client.query(sql, params))
        .await
        .with_context(|| format!("{sql}: timed out"))?
        .with_context(|| sql.to_owned())
}

fn one_value(rows: &[Vec<Option<String>>]) -> anyhow::Result<String> {
    match rows {
        [row] if row.len() == 1 => row[0].clone().context("value is NULL"),
        _ => anyhow::bail!("expected one row with one column, got {rows:?}"),
    }
}

/// Whether the server at `target` (a standby) has replayed up to `lsn` (text form `X/X`).
pub async fn lsn_reached(target: &PgTarget, lsn: &str) -> anyhow::Result<bool> {
    let sql = format!(
        "SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)",
        lsn = lsn.replace('\'', "")
    );
    Ok(target.query_one(&sql).await? == "t")
}
