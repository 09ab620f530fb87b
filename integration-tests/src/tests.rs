//! Self-tests of the harness: pure pieces, and the pieces that need only etcd, HAProxy or
//! PostgreSQL (not `pgbaton`), so the harness can be trusted before the agent exists.
//! Programs that are missing make a test skip, or fail under `PGBATON_REQUIRE_INTEGRATION=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::cluster::Timing;
use crate::etcd::Etcd;
use crate::haproxy::{Backend, HaproxyConfig, HaproxyPorts, HaproxyTiming};
use crate::node::{NodeConfig, PgAuth, deep_merge};
use crate::pg::PgTarget;
use crate::ports::free_port;
use crate::process::{kill_postmaster, kill_processes_under, pid_alive, postmaster_pid};
use crate::tools::{find_program, required};

/// `Some(path)` of a program, or `None` after printing a SKIP line (panics when required).
pub(crate) fn program(test: &str, env: &str, name: &str) -> Option<PathBuf> {
    let found = find_program(env, name);
    if found.is_none() {
        assert!(
            !required(),
            "{test}: {name} not found and PGBATON_REQUIRE_INTEGRATION=1"
        );
        println!("SKIP {test}: {name} not found");
    }
    found
}

fn pg_bin_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("PGBATON_PG_BIN_DIR")
        .or_else(|| std::env::var_os("PGBATON_PG_BIN"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    if dir.join("initdb").exists() {
        Some(dir)
    } else {
        assert!(
            !required(),
            "{test}: no PostgreSQL in {} and PGBATON_REQUIRE_INTEGRATION=1",
            dir.display()
        );
        println!("SKIP {test}: no PostgreSQL in {}", dir.display());
        None
    }
}

fn sample_config(dir: &Path) -> NodeConfig {
    NodeConfig {
        scope: "batman".to_owned(),
        namespace: "/service/".to_owned(),
        name: "node1".to_owned(),
        rest_port: 18008,
        pg_port: 15432,
        etcd_hosts: vec!["127.0.0.1:12379".to_owned()],
        dir: dir.to_owned(),
        data_dir: dir.join("data"),
        bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
        timing: Timing::fast(),
        auth: PgAuth::test_default(),
        extra: json!({}),
    }
}

#[test]
fn deep_merge_merges_objects_replaces_values_and_deletes_nulls() {
    let mut base = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"});
    deep_merge(
        &mut base,
        &json!({"a": {"b": 10, "z": 3}, "d": [3], "e": null}),
    );
    assert_eq!(base, json!({"a": {"b": 10, "c": 2, "z": 3}, "d": [3]}));
}

#[test]
fn composed_overlays_keep_deletions() {
    let mut extra = json!({"tags": {"nosync": true}});
    crate::node::compose_overlays(&mut extra, &json!({"tags": {"clonefrom": null}, "x": 1}));
    let mut cfg = sample_config(Path::new("/tmp/x/node1"));
    cfg.extra = extra;
    let v = cfg.to_value();
    assert_eq!(v["tags"]["nosync"], true);
    assert!(v["tags"].get("clonefrom").is_none());
    assert_eq!(v["x"], 1);
}

#[test]
fn node_config_has_patroni_shape_and_extra_config_wins() {
    let mut cfg = sample_config(Path::new("/tmp/x/node1"));
    cfg.extra = json!({"bootstrap": {"dcs": {"synchronous_mode": true}}, "tags": null});
    let v = cfg.to_value();
    assert_eq!(v["restapi"]["listen"], "127.0.0.1:18008");
    assert_eq!(v["postgresql"]["listen"], "127.0.0.1:15432");
    assert_eq!(v["etcd3"]["hosts"], json!(["127.0.0.1:12379"]));
    assert_eq!(v["bootstrap"]["dcs"]["ttl"], 10);
    assert_eq!(v["bootstrap"]["dcs"]["synchronous_mode"], true);
    assert_eq!(
        v["bootstrap"]["initdb"],
        json!([{"encoding": "UTF8"}, "data-checksums"])
    );
    assert_eq!(
        v["postgresql"]["authentication"]["replication"]["username"],
        "replicator"
    );
    assert!(v.get("tags").is_none());
    // The YAML parses back to the same document.
    let yaml = cfg.to_yaml().unwrap();
    let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back, v);
}

#[test]
fn timing_rule_is_enforced() {
    assert!(Timing::fast().check().is_ok());
    let bad = Timing {
        ttl: 10,
        loop_wait: 5,
        retry_timeout: 3,
    };
    assert!(bad.check().is_err());
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len());
    for p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}

#[test]
fn haproxy_accepts_the_generated_config() {
    let Some(haproxy) = program(
        "haproxy_accepts_the_generated_config",
        "PGBATON_HAPROXY_BIN",
        "haproxy",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backends: Vec<Backend> = (1..=3)
        .map(|i| Backend {
            name: format!("node{i}"),
            host: "127.0.0.1".to_owned(),
            pg_port: 15430 + i,
            rest_port: 18000 + i,
        })
        .collect();
    let ports = HaproxyPorts {
        primary: 15000,
        replica: 15001,
        stats: 17000,
    };
    let cfg = HaproxyConfig::harness("127.0.0.1", ports, &backends, HaproxyTiming::fast()).render();
    assert!(cfg.contains("option httpchk OPTIONS /primary"));
    assert!(cfg.contains("option httpchk OPTIONS /replica"));
    assert!(cfg.contains("default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions"));
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The production example in deploy/ stays valid and Patroni-compatible.
#[test]
fn deploy_haproxy_cfg_is_valid() {
    let Some(haproxy) = program(
        "deploy_haproxy_cfg_is_valid",
        "PGBATON_HAPROXY_BIN",
        "haproxy",
    ) else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg");
    let text = std::fs::read_to_string(&path).unwrap();
    for line in [
        "option httpchk OPTIONS /primary",
        "option httpchk OPTIONS /replica",
        "http-check expect status 200",
        "default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions",
        "bind *:5000",
        "bind *:5001",
    ] {
        assert!(text.contains(line), "deploy/haproxy.cfg lacks {line:?}");
    }
    // `user haproxy` needs that user, which the haproxy package creates.
    if nix::unistd::User::from_name("haproxy")
        .ok()
        .flatten()
        .is_none()
    {
        println!("SKIP deploy_haproxy_cfg_is_valid (haproxy -c): no user haproxy");
        return;
    }
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_starts_answers_through_the_gateway_and_dies_on_drop() {
    let Some(bin) = program("etcd_gateway", "PGBATON_ETCD_BIN", "etcd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&bin, dir.path()).await.unwrap();
    assert_eq!(etcd.get("/service/batman/leader").await.unwrap(), None);
    etcd.put("/service/batman/leader", "node1").await.unwrap();
    etcd.put("/service/batman/members/node1", "{}")
        .await
        .unwrap();
    etcd.put("/service/batmanx/leader", "other").await.unwrap();
    let kv = etcd.get("/service/batman/leader").await.unwrap().unwrap();
    assert_eq!(kv.value, "node1");
    assert!(kv.create_revision > 0 && kv.lease == 0);
    let keys: Vec<String> = etcd
        .get_prefix("/service/batman/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        keys,
        ["/service/batman/leader", "/service/batman/members/node1"]
    );
    etcd.delete_prefix("/service/batman/").await.unwrap();
    assert!(
        etcd.get_prefix("/service/batman/")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(etcd.get_prefix("/service/batmanx/").await.unwrap().len(), 1);
    let client = etcd.client();
    drop(etcd);
    assert!(
        client.get("/service/batmanx/leader").await.is_err(),
        "etcd still answers after drop"
    );
    assert!(
        kill_processes_under(dir.path()).is_empty(),
        "etcd left processes behind"
    );
}

/// Start PostgreSQL directly with `pg_ctl` (as the agent would), then check that
/// `kill_postmaster` leaves no process of that data directory behind and PostgreSQL can start
/// again on it (no orphaned backend holds shared memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_postmaster_leaves_nothing_behind_and_postgres_restarts() {
    let test = "kill_postmaster";
    crate::process::start_reaper();
    let Some(bin_dir) = pg_bin_dir(test) else {
        return;
    };
    let run_as = if nix::unistd::Uid::effective().is_root() {
        let Some(runuser) = program(test, "", "runuser") else {
            return;
        };
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("user postgres");
        Some((runuser, user))
    } else {
        None
    };
    let dir = tempfile::Builder::new()
        .prefix("pgbaton-selftest-")
        .tempdir()
        .unwrap();
    let chown = |p: &Path| {
        if let Some((_, user)) = &run_as {
            nix::unistd::chown(p, Some(user.uid), Some(user.gid)).unwrap();
        }
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = dir.path().join("node");
    std::fs::create_dir(&node).unwrap();
    chown(&node);
    let data = node.join("data");
    let port = free_port().unwrap();
    let as_agent = |prog: &str| {
        let mut cmd = match &run_as {
            Some((runuser, user)) => {
                let mut c = Command::new(runuser);
                c.arg("-u")
                    .arg(&user.name)
                    .arg("--")
                    .arg(bin_dir.join(prog));
                c
            }
            None => Command::new(bin_dir.join(prog)),
        };
        cmd.current_dir(&node);
        cmd
    };
    let ok = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            crate::tail_file(&node.join("pg.log"), 20)
        );
    };
    let mut initdb = as_agent("initdb");
    initdb
        .arg("-D")
        .arg(&data)
        .arg("--auth=trust")
        .arg("-U")
        .arg("postgres");
    ok(initdb);
    let start = || {
        let mut c = as_agent("pg_ctl");
        c.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(node.join("pg.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=16MB",
                node.display()
            ))
            .arg("start");
        c
    };
    let target = PgTarget {
        host: "127.0.0.1".to_owned(),
        port,
        user: "postgres".to_owned(),
        password: String::new(),
        dbname: "postgres".to_owned(),
    };
    ok(start());
    // Two client backends, so there are children besides the auxiliary processes.
    let c1 = target.connect().await.unwrap();
    let _c2 = target.connect().await.unwrap();
    crate::pg::simple_query(&c1, "SELECT 1").await.unwrap();
    let pid = postmaster_pid(&data).expect("postmaster running");
    let killed = kill_postmaster(&data).expect("killed a postmaster");
    assert_eq!(killed, pid);
    assert!(!pid_alive(pid));
    assert!(postmaster_pid(&data).is_none());
    assert!(
        kill_processes_under(dir.path()).is_empty(),
        "processes of the data directory survived"
    );
    // PostgreSQL starts again on the same data directory (crash recovery).
    ok(start());
    let rows = target.query("SELECT 1").await.unwrap();
    assert_eq!(rows, vec![vec![Some("1".to_owned())]]);
    kill_postmaster(&data).expect("second postmaster");
    assert!(
        c1.simple_query("SELECT 1").await.is_err(),
        "a connection survived its server"
    );
}
