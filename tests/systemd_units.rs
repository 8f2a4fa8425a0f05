//! The systemd units in contrib/systemd: systemd itself accepts them, they delegate the
//! unit's cgroup and keep workloads running across a restart, and corral parses the
//! command line they run. (Running them under systemd is the VM's job: `self` roots are
//! tested there, in a group marked delegated as systemd marks it.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert_eq!(units.len(), 2, "{units:?}");
    units
}

fn setting<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_units_delegate_their_cgroup_and_leave_workloads_running_on_restart() {
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        let name = unit.display();
        assert_eq!(setting(&text, "Delegate"), ["yes"], "{name}");
        assert_eq!(setting(&text, "KillMode"), ["process"], "{name}");
        assert_eq!(setting(&text, "StateDirectoryMode"), ["0700"], "{name}");
        let exec = setting(&text, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}");
        assert!(
            exec[0].contains("--cgroup-root self"),
            "{name}: {}",
            exec[0]
        );
    }
}

#[test]
fn systemd_accepts_the_units() {
    let tmp = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for unit in units() {
        // The binary it names must exist for systemd-analyze: this build's.
        let text = std::fs::read_to_string(&unit)
            .unwrap()
            .replace("/usr/local/bin/corral", env!("CARGO_BIN_EXE_corral"))
            .replace("EnvironmentFile=/", "EnvironmentFile=-/");
        let copy = tmp.path().join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .expect("systemd-analyze (Debian's systemd package) checks the units");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// corral parses each unit's command line. On this v1 host `self` is refused as it should
/// be, naming cgroup v2; that is the proof that the arguments reached the root resolution.
#[test]
fn corral_parses_the_units_command_lines() {
    let state = tempfile::tempdir().unwrap();
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        let exec = setting(&text, "ExecStart")[0];
        let mut args: Vec<String> = exec
            .split_whitespace()
            .skip(1)
            .map(|a| a.replace("/var/lib/corral", &state.path().display().to_string()))
            .map(|a| a.replace("%H", "node-a"))
            .map(|a| {
                a.replace(
                    "/etc/corral/manifests",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart"),
                )
            })
            .collect();
        if args[0] == "agent" {
            args.extend(["--zookeeper".into(), "127.0.0.1:1".into()]);
        } else {
            args.push("--once".into());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let v2 = corral::cgroup::layout::Layout::detect().unwrap().is_v2();
        if v2 {
            // On a v2 host outside a delegated unit, self is refused for another reason.
            assert!(stderr.contains("--cgroup-root self"), "{args:?}: {stderr}");
        } else {
            assert!(
                stderr.contains("--cgroup-root self needs cgroup v2"),
                "{args:?}: {stderr}"
            );
        }
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
}
