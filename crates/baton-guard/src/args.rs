//! The guard's command line, read without a parser library (`pgbaton-fence-guard` links
//! nothing it does not need): `fence-guard --data-dir D --agent-pid P [--vip A/L
//! --vip-interface I]`, the arguments `pgbaton fence-guard` takes too. The leading
//! `fence-guard` is the marker a new agent looks for before it stops a previous agent's guard
//! ([`crate::GUARD_ARG`]).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::GuardVip;

/// What the guard was started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardArgs {
    pub data_dir: PathBuf,
    pub agent_pid: i32,
    pub vip: Option<GuardVip>,
}

/// Parse the arguments after the program name; the error names the argument at fault.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<GuardArgs, String> {
    let mut args = args.into_iter();
    match args.next() {
        Some(first) if first == crate::GUARD_ARG => {}
        Some(first) => {
            return Err(format!(
                "expected `{}` as the first argument, not {first:?}",
                crate::GUARD_ARG
            ));
        }
        None => {
            return Err(format!(
                "expected `{}` as the first argument",
                crate::GUARD_ARG
            ));
        }
    }
    let (mut data_dir, mut agent_pid, mut vip, mut vip_interface) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let slot = match flag.to_str() {
            Some("--data-dir") => &mut data_dir,
            Some("--agent-pid") => &mut agent_pid,
            Some("--vip") => &mut vip,
            Some("--vip-interface") => &mut vip_interface,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        let Some(value) = args.next() else {
            return Err(format!("{}: missing value", flag.to_string_lossy()));
        };
        if slot.replace(value).is_some() {
            return Err(format!("{}: given twice", flag.to_string_lossy()));
        }
    }
    let data_dir = PathBuf::from(data_dir.ok_or("--data-dir: missing")?);
    let agent_pid = agent_pid
        .ok_or("--agent-pid: missing")?
        .to_str()
        .and_then(|s| s.parse::<i32>().ok())
        .ok_or("--agent-pid: not a process ID")?;
    let text = |v: OsString, flag: &str| {
        v.into_string()
            .map_err(|v| format!("{flag}: not valid UTF-8: {v:?}"))
    };
    let vip = match (vip, vip_interface) {
        (None, None) => None,
        (Some(address), Some(interface)) => Some(GuardVip::parse(
            &text(address, "--vip")?,
            &text(interface, "--vip-interface")?,
        )?),
        (Some(_), None) => return Err("--vip needs --vip-interface".to_owned()),
        (None, Some(_)) => return Err("--vip-interface needs --vip".to_owned()),
    };
    Ok(GuardArgs {
        data_dir,
        agent_pid,
        vip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_agents_command_line_is_read_back() {
        let vip = GuardVip {
            address: "10.0.0.100/24".parse().expect("valid"),
            interface: "eth0".to_owned(),
        };
        let mut line = args(&["fence-guard", "--data-dir", "/pg/data", "--agent-pid", "42"]);
        assert_eq!(
            parse(line.clone()),
            Ok(GuardArgs {
                data_dir: PathBuf::from("/pg/data"),
                agent_pid: 42,
                vip: None,
            })
        );
        line.extend(vip.args().map(OsString::from));
        assert_eq!(
            parse(line),
            Ok(GuardArgs {
                data_dir: PathBuf::from("/pg/data"),
                agent_pid: 42,
                vip: Some(vip),
            })
        );
    }

    #[test]
    fn a_bad_command_line_is_refused_with_the_argument_named() {
        for (line, error) in [
            (
                &["--data-dir", "/d"][..],
                "expected `fence-guard` as the first argument, not \"--data-dir\"",
            ),
            (&["fence-guard", "--agent-pid", "1"], "--data-dir: missing"),
            (&["fence-guard", "--data-dir", "/d"], "--agent-pid: missing"),
            (
                &["fence-guard", "--data-dir", "/d", "--agent-pid", "x"],
                "--agent-pid: not a process ID",
            ),
            (&["fence-guard", "--data-dir"], "--data-dir: missing value"),
            (
                &["fence-guard", "--data-dir", "/d", "--data-dir", "/e"],
                "--data-dir: given twice",
            ),
            (
                &["fence-guard", "--bogus", "1"],
                "unknown argument \"--bogus\"",
            ),
            (
                &[
                    "fence-guard",
                    "--data-dir",
                    "/d",
                    "--agent-pid",
                    "1",
                    "--vip",
                    "10.0.0.1/24",
                ],
                "--vip needs --vip-interface",
            ),
            (
                &[
                    "fence-guard",
                    "--data-dir",
                    "/d",
                    "--agent-pid",
                    "1",
                    "--vip",
                    "10.0.0.300/24",
                    "--vip-interface",
                    "eth0",
                ],
                "--vip: \"10.0.0.300\" is not an IP address",
            ),
        ] {
            assert_eq!(parse(args(line)), Err(error.to_owned()), "{line:?}");
        }
    }
}
