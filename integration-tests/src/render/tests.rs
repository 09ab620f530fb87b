//! The checked-in copies match the renderer; the renderer's output is what HAProxy and
//! `pgbaton validate-config` accept; the systemd unit keeps the agent running.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::demo::Layout;
use crate::tests::program;
use crate::tools::find_program;

#[test]
fn checked_in_copies_match_the_renderer() {
    let drifted = drift(&repo_root()).unwrap();
    let report: String = drifted
        .iter()
        .map(|(path, diff)| {
            format!(
                "{path} differs from the renderer's output (- the file, + the renderer):\n{diff}\n"
            )
        })
        .collect();
    assert!(
        drifted.is_empty(),
        "{report}Change the renderer (integration-tests/src/render.rs) rather than the copy, \
         then regenerate the copies: {REGENERATE}"
    );
}

/// A copy that differs is found, with a diff naming the line, and rewriting fixes it.
#[test]
fn a_drifted_copy_is_reported_and_rewritten() {
    let root = tempfile::tempdir().unwrap();
    for file in checked_in() {
        let path = root.path().join(file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
    assert_eq!(
        write_checked_in(root.path()).unwrap().len(),
        checked_in().len()
    );
    assert!(drift(root.path()).unwrap().is_empty());
    let cfg = root.path().join("deploy/haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("inter 3s fall 3", "inter 2s fall 3")).unwrap();
    let drifted = drift(root.path()).unwrap();
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    let (path, diff) = &drifted[0];
    assert_eq!(path, "deploy/haproxy.cfg");
    assert!(
        diff.contains("- ") && diff.contains("inter 2s fall 3"),
        "{diff}"
    );
    assert!(
        diff.contains("+ ") && diff.contains("inter 3s fall 3"),
        "{diff}"
    );
    assert_eq!(
        write_checked_in(root.path()).unwrap(),
        ["deploy/haproxy.cfg"]
    );
    assert!(drift(root.path()).unwrap().is_empty());
}

#[test]
fn line_diff_marks_removed_and_added_lines() {
    assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n- b\n+ x\n  c\n");
    assert_eq!(line_diff("a\n", "a\nb\n"), "  a\n+ b\n");
    assert_eq!(
        line_diff("a", "a\n"),
        "  a\n(the two differ in the newline at the end)\n"
    );
}

#[test]
fn backends_parse_from_the_command_line() {
    let b = parse_backend("pg1=10.0.0.11:5432:8008").unwrap();
    assert_eq!(
        (b.name.as_str(), b.host.as_str(), b.pg_port, b.rest_port),
        ("pg1", "10.0.0.11", 5432, 8008)
    );
    for bad in [
        "pg1",
        "pg1=10.0.0.11:5432",
        "=h:1:2",
        "pg1=h:x:2",
        "pg1=:1:2",
    ] {
        let err = parse_backend(bad).unwrap_err().to_string();
        assert!(
            err.contains(bad) && err.contains("NAME=HOST"),
            "{bad}: {err}"
        );
    }
}

/// The same renderer makes the demo's and the checked-in configurations: only the values
/// differ.
#[test]
fn haproxy_profiles_differ_only_where_they_should() {
    let demo = haproxy_config(HaproxyProfile::Demo, &Layout::default()).render();
    assert!(demo.contains("    bind 127.0.0.1:5000\n"), "{demo}");
    assert!(demo.contains("    server node2 127.0.0.1:5434 maxconn 100 check port 8010\n"));
    assert!(!demo.contains("resolvers") && !demo.contains("daemon"));
    let docker = haproxy_config(HaproxyProfile::Docker, &Layout::default()).render();
    assert!(docker.contains("    server node3 node3:5432 maxconn 100 check port 8008\n"));
    assert!(docker.contains("resolvers docker\n    parse-resolv-conf\n"));
    let deploy = haproxy_config(HaproxyProfile::Deploy, &Layout::default()).render();
    assert!(deploy.contains("    server pg1 10.0.0.11:5432 maxconn 300 check port 8008\n"));
    assert!(deploy.contains("default-server inter 3s fall 3 rise 2 on-marked-down"));
    assert!(deploy.contains("    user haproxy\n") && deploy.contains("    option tcplog\n"));
    for cfg in [&demo, &docker, &deploy] {
        assert_eq!(cfg.matches("option httpchk OPTIONS /primary").count(), 1);
        assert_eq!(cfg.matches("option httpchk OPTIONS /replica").count(), 1);
    }
}

#[test]
fn every_haproxy_profile_passes_haproxy_check() {
    let Some(haproxy) = program(
        "every_haproxy_profile_passes_haproxy_check",
        "PGBATON_HAPROXY_BIN",
        "haproxy",
    ) else {
        return;
    };
    let has_haproxy_user = nix::unistd::User::from_name("haproxy")
        .ok()
        .flatten()
        .is_some();
    for profile in [
        HaproxyProfile::Demo,
        HaproxyProfile::Docker,
        HaproxyProfile::DockerRegionB,
        HaproxyProfile::Deploy,
    ] {
        if profile == HaproxyProfile::Deploy && !has_haproxy_user {
            // `user haproxy` needs that user, which the haproxy package creates.
            println!("SKIP haproxy -c of the deploy profile: no user haproxy");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let text = haproxy_config(profile, &Layout::default()).render();
        crate::haproxy::write_checked_config(&haproxy, dir.path(), &text)
            .unwrap_or_else(|e| panic!("{profile:?}: {e:#}"));
    }
}

#[test]
fn node_yaml_keys_come_in_patroni_order() {
    let layout = Layout::new(PathBuf::from("/tmp/demo"));
    let yaml = layout
        .node_config(0, Path::new("/usr/lib/postgresql/15/bin"))
        .to_yaml()
        .unwrap();
    let top: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
        .collect();
    assert_eq!(
        top,
        [
            "scope: demo",
            "namespace: /service/",
            "name: node1",
            "restapi:",
            "etcd3:",
            "bootstrap:",
            "postgresql:",
            "tags:"
        ],
        "{yaml}"
    );
    let dcs = yaml.find("  dcs:\n    ttl: 10\n    loop_wait: 2\n    retry_timeout: 4\n");
    assert!(dcs.is_some(), "{yaml}");
}

/// Without `name` and the connect addresses (the compose file sets them in the environment).
#[test]
fn docker_node_config_leaves_the_node_specific_keys_to_the_environment() {
    let v = docker_node().to_value();
    assert!(v.get("name").is_none());
    assert!(v["restapi"].get("connect_address").is_none());
    assert!(v["postgresql"].get("connect_address").is_none());
    assert_eq!(v["restapi"]["listen"], "0.0.0.0:8008");
    assert!(
        v["postgresql"]["parameters"]
            .get("logging_collector")
            .is_none()
    );
    assert_eq!(v["etcd3"]["hosts"][2], "etcd3:2379");
}

/// `pgbaton validate-config` accepts every rendered node configuration (the compose one with
/// the environment the compose file gives it).
#[test]
fn rendered_node_configs_pass_validate_config() {
    let Some(tools) = crate::Tools::for_test("rendered_node_configs_pass_validate_config").unwrap()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("demo"));
    let mut files = Vec::new();
    for name in layout.names() {
        let (comment, config) =
            node_config(NodeProfile::Demo, &name, &layout, &tools.pg_bin_dir).unwrap();
        files.push((name, node_file(&comment, &config).unwrap()));
    }
    files.push((
        "docker".to_owned(),
        node_file(DOCKER_NODE_COMMENT, &docker_node()).unwrap(),
    ));
    for (name, text) in files {
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, &text).unwrap();
        let mut cmd = Command::new(&tools.pgbaton);
        cmd.arg("validate-config").arg(&path);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PATRONI") {
                cmd.env_remove(key);
            }
        }
        if name == "docker" {
            cmd.env("PATRONI_NAME", "node1")
                .env("PATRONI_RESTAPI_CONNECT_ADDRESS", "node1:8008")
                .env("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "node1:5432");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: pgbaton validate-config failed:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `[Service]` (or any other section's) value of `key` in a unit file.
fn unit_values<'a>(unit: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let mut current = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line;
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim());
        }
    }
    out
}

/// Issue 15: `systemctl reload` sends SIGHUP, which re-reads the configuration (the agent
/// never ends on it: tests/reload.rs), and the agent comes back after any exit that is not
/// `systemctl stop` (systemd counts exit status 0 as clean, which `on-failure` does not
/// restart).
#[test]
fn systemd_unit_reloads_with_sighup_and_restarts_the_agent() {
    let path = repo_root().join("deploy/pgbaton.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        unit_values(&unit, "[Service]", "ExecReload"),
        ["/bin/kill -s HUP $MAINPID"]
    );
    assert_eq!(unit_values(&unit, "[Service]", "Restart"), ["always"]);
    assert_eq!(unit_values(&unit, "[Unit]", "StartLimitIntervalSec"), ["0"]);
    assert_eq!(unit_values(&unit, "[Service]", "KillMode"), ["process"]);
    assert_eq!(unit_values(&unit, "[Service]", "KillSignal"), ["SIGTERM"]);
    assert_eq!(
        unit_values(&unit, "[Service]", "AmbientCapabilities"),
        ["CAP_NET_ADMIN CAP_NET_RAW"]
    );
    let Some(analyze) = find_program("", "systemd-analyze") else {
        println!("SKIP systemd-analyze verify: systemd-analyze not found");
        return;
    };
    // `verify` wants ExecStart's program to exist.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pgbaton.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/pgbaton", "/bin/true")).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("pgbaton.service"),
        "systemd-analyze verify: {stderr}"
    );
}
