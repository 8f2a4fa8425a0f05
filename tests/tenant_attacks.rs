//! A tenant's attacks, run as a tenant runs them: from inside a replica that `corral run`
//! started on this machine's real cgroups, under the example-like policy of two teams that
//! do not trust each other. Each attack must fail, and the other team must be untouched:
//! its process running (not stopped), its secret unread, its cgroup values as corral wrote
//! them. (The attacks on ZooKeeper are in the ZooKeeper tests.)

mod common;

use std::path::{Path, PathBuf};

use common::cluster::sweep;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The policy: each team its own users; team-a may not adopt.
const POLICY: &str = "apiVersion: corral.dev/v1alpha1
kind: ResourcePolicy
metadata: {name: shared}
spec:
  namespaces: [team-a, team-b]
  tenants:
  - namespace: team-a
    maxPriority: 10
    security: {runAsUser: 10100, runAsGroup: 10100}
  - namespace: team-b
    security: {runAsUser: 10200, runAsGroup: 10200}
";

/// team-b's service, with a secret in its environment.
const VICTIM: &str = "apiVersion: corral.dev/v1alpha1
kind: Workload
metadata: {name: victim, namespace: team-b}
spec:
  resources:
    requests: {cpu: 100m, memory: 16Mi}
    limits: {cpu: 200m, memory: 32Mi}
  command:
    args: [/bin/sh, -c, 'while :; do sleep 1; done', victim-marker]
    env: [{name: DB_PASSWORD, value: hunter2}]
";

/// The attacks that only read, which root outside corral can do: the control that shows
/// the checks can fail.
const READS: &[&str] = &[
    "read-team-b-environ",
    "read-credentials",
    "read-leases",
    "read-logs",
];

/// Each attack prints `ATTACK <name> ok` when it worked and `ATTACK <name> blocked` when
/// it did not; `$VICTIM` is team-b's process, found by its marker.
const ATTACKS: &str = r#"
find_victim() {
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < $p/cmdline | grep -q '^/bin/sh -c while.*victim-marker' && basename $p; } 2>/dev/null
  done | head -n1
}
for i in $(seq 50); do victim=$(find_victim); [ -n "$victim" ] && break; sleep 0.1; done
echo "VICTIM $victim"
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "ATTACK $name ok"; else echo "ATTACK $name blocked"; fi; }
try leave-to-the-cpu-root sh -c "echo $$ > /sys/fs/cgroup/cpu/cgroup.procs"
try leave-to-the-memory-root sh -c "echo $$ > /sys/fs/cgroup/memory/cgroup.procs"
try join-team-b sh -c "echo $$ > $TEAM_B/cgroup.procs"
try write-team-b-cgroup sh -c "echo 2 > $TEAM_B/cpu.shares"
try raise-own-quota sh -c "echo -1 > $OWN/cpu.cfs_quota_us"
try read-team-b-environ sh -c "grep -a hunter2 /proc/$victim/environ"
try read-team-b-memory sh -c "head -c1 /proc/$victim/mem"
try stop-team-b kill -STOP "$victim"
try write-etc touch /etc/corral-tenant-attack
try read-credentials cat "$CREDENTIALS"
try read-leases sh -c "grep -a hunter2 $STATE/store/leases.json"
try read-logs ls "$STATE/logs"
try user-namespace unshare --user true
try mount mount -t tmpfs none /mnt
try setuid-root su -c true root
echo DONE
sleep 600 &
wait
"#;

fn attacker(team_b: &Path, own: &Path, state: &Path, credentials: &Path) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1
kind: Workload
metadata: {{name: attacker, namespace: team-a}}
spec:
  priority: 10
  resources:
    requests: {{cpu: 100m, memory: 16Mi}}
    limits: {{cpu: 200m, memory: 32Mi}}
  command:
    args: [/bin/sh, -c, {attacks:?}]
    restartPolicy: Never
    env:
    - {{name: TEAM_B, value: {team_b:?}}}
    - {{name: OWN, value: {own:?}}}
    - {{name: STATE, value: {state:?}}}
    - {{name: CREDENTIALS, value: {credentials:?}}}
",
        attacks = ATTACKS,
        team_b = team_b.display().to_string(),
        own = own.display().to_string(),
        state = state.display().to_string(),
        credentials = credentials.display().to_string(),
    )
}

/// Manifests, a state directory and a cgroup root of the test's own; on drop, `corral
/// down`, then whatever is left below the root is killed and removed.
struct Setup {
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
    root: String,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            manifests: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            root: format!("corral-attack-{}", std::process::id()),
        }
    }

    fn corral(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap()
    }

    fn group(&self, controller: &str, tenant: &str, name: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.root)
            .join(tenant)
            .join(format!("{name}.0"))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.corral(&["down", "--cgroup-root", &self.root.clone()]);
        for hierarchy in common::cgroups::hierarchies() {
            sweep(&hierarchy.join(&self.root));
        }
    }
}

/// Live (not zombie) processes whose real user is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if real == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_tenant_cannot_reach_root_another_tenant_or_corral() {
    let setup = Setup::new();
    let secrets = tempfile::tempdir().unwrap();
    let credentials = secrets.path().join("zk-credentials");
    std::fs::write(&credentials, "corral:s3cr3t\n").unwrap();
    std::fs::set_permissions(
        &credentials,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let team_b = setup.group("cpu", "team-b", "victim");
    let own = setup.group("cpu", "team-a", "attacker");
    let dir = setup.manifests.path();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("victim.yaml"), VICTIM).unwrap();
    std::fs::write(
        dir.join("attacker.yaml"),
        attacker(&team_b, &own, setup.state.path(), &credentials),
    )
    .unwrap();
    let run = setup.corral(&[
        "run",
        "--once",
        "--ui",
        "log",
        "--cgroup-root",
        &setup.root,
        "-f",
        &dir.to_string_lossy(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shares_before = std::fs::read_to_string(team_b.join("cpu.shares")).unwrap();

    let log = setup.state.path().join("logs/team-a.attacker.0.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let output = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("DONE") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the attacks did not finish: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let victim: u32 = output
        .lines()
        .find_map(|l| l.strip_prefix("VICTIM "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the attacker could not even see team-b's process: {output}"));
    let attacks: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("ATTACK "))
        .collect();
    assert_eq!(attacks.len(), 15, "{output}");
    let succeeded: Vec<&&str> = attacks.iter().filter(|l| l.ends_with(" ok")).collect();
    assert!(
        succeeded.is_empty(),
        "attacks that worked: {succeeded:?}\n{output}"
    );

    // The control: root, outside corral, reads what the tenant could not.
    let mut control = String::from(
        "try() { name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"ATTACK $name ok\"; else echo \"ATTACK $name blocked\"; fi; }\n",
    );
    for line in ATTACKS
        .lines()
        .filter(|l| READS.iter().any(|r| l.starts_with(&format!("try {r} "))))
    {
        control.push_str(line);
        control.push('\n');
    }
    let control = Command::new("sh")
        .args(["-c", &control])
        .env("victim", victim.to_string())
        .env("STATE", setup.state.path())
        .env("CREDENTIALS", &credentials)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout);
    for read in READS {
        assert!(
            control.contains(&format!("ATTACK {read} ok")),
            "as root outside corral, {read} works: {control}"
        );
    }

    // team-b is untouched: running, not stopped, its group as corral wrote it.
    let stat = std::fs::read_to_string(format!("/proc/{victim}/stat")).unwrap();
    let state = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        matches!(state, "S" | "R"),
        "team-b's process is in state {state}"
    );
    assert_eq!(
        std::fs::read_to_string(team_b.join("cpu.shares")).unwrap(),
        shares_before
    );
    assert!(!Path::new("/etc/corral-tenant-attack").exists());
    let procs = std::fs::read_to_string(team_b.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == victim.to_string()), "{procs}");

    // Nothing of team-a outlives corral down: it could not leave its groups.
    assert!(!processes_of(10100).is_empty());
    let down = setup.corral(&["down", "--cgroup-root", &setup.root]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = processes_of(10100);
    assert!(
        left.is_empty(),
        "team-a's processes outlived corral down: {left:?}"
    );
}
