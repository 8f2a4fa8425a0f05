#!/usr/bin/env python3
"""Measure `corral run` against its targets on this machine.

Two phases, each with its own temporary state directory and its own cgroup root
(corral-measure-<pid>-latency, corral-measure-<pid>-idle), each cleaned up before the next
starts:

1. latency: one Workload running `sleep infinity` with a cpu limit, `corral run --ui log
   --resync 30`; N times the manifest is replaced (written to a temporary file in the same
   directory and renamed over it, as editors do; or rewritten in place with
   --edit-mode inplace) with the other of two cpu limits, and cpu.cfs_quota_us of the
   replica's group is polled every millisecond until it shows the new quota.
2. idle: one Workload of R replicas of `sleep infinity`, `corral run --ui log` (default
   resync, 5 s); once every replica runs, corral run's own CPU time (utime + stime from
   /proc/PID/stat) and memory (VmRSS, VmHWM from /proc/PID/status) are measured over an
   idle window, with the agent's write and pass counters from `corral status -o json` at
   both ends of the window.

Prints progress on stderr, the table on stdout (and JSON with --json). Exit status: 0
when every target is met, 1 when one is missed (it says which), 2 when the measurement
could not be made, 3 when cleanup left something behind. Python 3 standard library only.
"""

import argparse
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or subprocess.run(
    [os.path.join(REPO, "scripts", "target-dir")], capture_output=True, text=True, check=True
).stdout.strip()
CGROUP_MOUNT = "/sys/fs/cgroup"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Targets from the issue.
TARGET_LATENCY_MS = 100.0
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MIB = 30.0
TARGET_WRITES_PER_RESYNC = 0

T0 = time.monotonic()


def log(msg):
    print(f"[measure {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class MeasureError(Exception):
    """The measurement could not be made."""


class Interrupted(Exception):
    """A signal asked us to stop."""

    def __init__(self, signum):
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}")
        self.signum = signum


def on_signal(signum, _frame):
    raise Interrupted(signum)


# ---------------------------------------------------------------------------------------
# Manifests


POLICY = """\
apiVersion: corral.dev/v1alpha1
kind: ResourcePolicy
metadata:
  name: measure
spec:
  strategy: Priority
  maxReplicasPerNode: 1000
"""

LATENCY_WORKLOAD = """\
apiVersion: corral.dev/v1alpha1
kind: Workload
metadata:
  name: edit
  namespace: measure
spec:
  resources:
    requests: {{cpu: 10m, memory: 1Mi}}
    limits: {{cpu: {cpu}}}
  command:
    args: ["sleep", "infinity"]
  terminationGracePeriodSeconds: 5
"""

IDLE_WORKLOAD = """\
apiVersion: corral.dev/v1alpha1
kind: Workload
metadata:
  name: idle
  namespace: measure
spec:
  replicas: {replicas}
  resources:
    requests: {{cpu: 1m, memory: 1Mi}}
    limits: {{cpu: 10m, memory: 16Mi, pids: 4}}
  command:
    args: ["sleep", "infinity"]
  terminationGracePeriodSeconds: 5
"""

# The two cpu limits the edits alternate between, and the quota each gives with the
# default period of 100000 us.
LIMITS = [("300m", "30000"), ("400m", "40000")]


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------
# /proc helpers


def proc_pss_kib(pid):
    """Pss of a process in KiB (shared pages split among their users), 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def proc_stat(pid):
    """(state, utime+stime ticks, starttime) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces; fields follow the last ')'.
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15, starttime 22.
    return rest[0], int(rest[11]) + int(rest[12]), int(rest[19])


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def proc_threads(pid):
    return proc_status_kib(pid, "Threads")


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------
# cgroup helpers


def root_dirs(root):
    """Every directory of the cgroup root `root` in every hierarchy (v1, hybrid or v2)."""
    found = set(glob.glob(os.path.join(CGROUP_MOUNT, "*", root)))
    if os.path.isdir(os.path.join(CGROUP_MOUNT, root)):
        found.add(os.path.join(CGROUP_MOUNT, root))
    return sorted(d for d in found if os.path.isdir(d))


def group_pids(root):
    """PIDs in any group under `root`, in any hierarchy."""
    pids = set()
    for top in root_dirs(root):
        for dirpath, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    pass
    return pids


def quota_file(root, namespace, group):
    for base in (os.path.join(CGROUP_MOUNT, "cpu"), os.path.join(CGROUP_MOUNT, "cpu,cpuacct")):
        if os.path.isdir(base):
            return os.path.join(base, root, namespace, group, "cpu.cfs_quota_us")
    raise MeasureError(
        "no cgroup v1 cpu hierarchy under /sys/fs/cgroup; this script measures cgroup v1 "
        "(cpu.cfs_quota_us)"
    )


def read_value(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"<error {e.errno}>"


# ---------------------------------------------------------------------------------------
# One `corral run` with its state dir and cgroup root, and its cleanup.


class Session:
    def __init__(self, corral, tmp, name, root):
        self.corral = corral
        self.name = name
        self.root = root
        self.dir = os.path.join(tmp, name)
        self.manifests = os.path.join(self.dir, "manifests")
        self.state = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "corral-run.log")
        os.makedirs(self.manifests)
        self.proc = None
        self.log_file = None
        # pid -> (starttime, cmdline) of every workload process seen.
        self.seen = {}
        self.cleaned = False
        self.ready = False  # past its first pass, so its signal handlers are in place
        self.problems = []  # cleanup problems and corral oddities

    def where(self):
        return ["--state-dir", self.state, "--cgroup-root", self.root]

    def start(self, resync=None):
        args = [self.corral, "run", "-f", self.manifests, *self.where(), "--ui", "log"]
        if resync is not None:
            args += ["--resync", str(resync)]
        log(f"{self.name}: starting {' '.join(args)}")
        self.log_file = open(self.log_path, "w")
        # Its own session: a Ctrl-C on the terminal reaches only this script, which stops
        # corral in order.
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.proc.pid

    def wait_ready(self, timeout=30):
        """Until corral run has finished its first pass (status.json appears)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(self.state, "status.json")):
            self.check_alive()
            if time.monotonic() > deadline:
                raise MeasureError(
                    f"corral run wrote no {self.state}/status.json within {timeout} s; its log "
                    f"ends with:\n{self.log_tail()}")
            time.sleep(0.05)
        self.ready = True

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise MeasureError(
                f"corral run ({self.name}) exited early with status {self.proc.returncode}; "
                f"its log ends with:\n{self.log_tail()}"
            )

    def status(self, timeout=20):
        """`corral status -o json`, parsed."""
        try:
            out = subprocess.run(
                [self.corral, "status", *self.where(), "-o", "json"],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise MeasureError(f"corral status did not answer within {timeout} s")
        if out.returncode != 0:
            raise MeasureError(f"corral status failed ({out.returncode}): {out.stderr.strip()}")
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError as e:
            raise MeasureError(f"corral status -o json printed no JSON ({e}): {out.stdout[:300]}")

    def run_counters(self, timeout=20):
        """run.agent of a status that has it (status.json appears after the first pass)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            run = st.get("run")
            if run and "agent" in run:
                return st, run["agent"]
            if time.monotonic() > deadline:
                raise MeasureError(f"corral status shows no `run` after {timeout} s: {json.dumps(st)[:300]}")
            self.check_alive()
            time.sleep(0.2)

    def remember_pids(self):
        for pid in group_pids(self.root):
            st = proc_stat(pid)
            if st and pid not in self.seen:
                self.seen[pid] = (st[2], proc_cmdline(pid))

    def stop_run(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log(f"{self.name}: stopping corral run (pid {self.proc.pid}) with SIGTERM")
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.problems.append(
                    f"corral run (pid {self.proc.pid}) did not exit within 20 s of SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(timeout=10)
            # Before its first pass corral has no handler yet and dies of the signal.
            if self.ready and self.proc.returncode != 0:
                self.problems.append(
                    f"corral run exited with status {self.proc.returncode} after SIGTERM")
        # else it had exited already; check_alive reported that.
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def cleanup(self):
        """Stop run, `corral down`, check nothing is left. Returns the problems found."""
        if self.cleaned:
            return []
        self.cleaned = True
        try:
            self.remember_pids()
        except Exception:  # noqa: BLE001 - best effort before stopping
            pass
        self.stop_run()
        if os.path.isdir(self.state):
            log(f"{self.name}: corral down {' '.join(self.where())}")
            try:
                out = subprocess.run(
                    [self.corral, "down", *self.where()], capture_output=True, text=True,
                    timeout=180,
                )
                if out.returncode != 0:
                    self.problems.append(
                        f"corral down exited {out.returncode}: {out.stderr.strip()[-800:]}")
                else:
                    last = out.stderr.strip().splitlines()[-1:] or [""]
                    log(f"{self.name}: {last[0]}")
            except subprocess.TimeoutExpired:
                self.problems.append("corral down did not finish within 180 s")
        self.check_left()
        return self.problems

    def check_left(self):
        # Processes that were in our groups: gone (or at least no longer the same process).
        deadline = time.monotonic() + 10
        while True:
            alive = []
            for pid, (start, cmd) in sorted(self.seen.items()):
                st = proc_stat(pid)
                if st and st[2] == start and st[0] != "Z":
                    alive.append((pid, cmd))
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if alive:
            self.problems.append(
                f"{len(alive)} workload process(es) still alive after corral down: "
                + ", ".join(f"{p} ({c})" for p, c in alive[:10]))
            for pid, _ in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Groups: none left under our root in any hierarchy.
        left = root_dirs(self.root)
        if left:
            subgroups = []
            for top in left:
                for dirpath, dirs, _files in os.walk(top):
                    subgroups.extend(os.path.join(dirpath, d) for d in dirs)
            in_groups = group_pids(self.root)
            if subgroups or in_groups:
                self.problems.append(
                    f"corral down left {len(subgroups)} group(s) under {self.root} "
                    f"(e.g. {subgroups[:3]}) holding {len(in_groups)} process(es)")
            else:
                # Empty roots are removed by down only when it stopped everything; note it.
                self.problems.append(
                    f"corral down left the empty root group in {len(left)} hierarchies: {left[:3]}")
            for pid in in_groups:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            for top in left:
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    try:
                        os.rmdir(dirpath)
                    except OSError as e:
                        self.problems.append(f"cannot remove {dirpath}: {e}")
        still = root_dirs(self.root)
        if still:
            self.problems.append(f"groups still present after rmdir: {still}")
        else:
            log(f"{self.name}: no group left under {self.root}; "
                f"{len(self.seen)} workload process(es) seen, none left")


# ---------------------------------------------------------------------------------------
# Phase 1: manifest edit to cgroup value


def percentile(sorted_values, p):
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def wait_value(path, want, timeout, session):
    deadline = time.monotonic() + timeout
    while True:
        v = read_value(path)
        if v == want:
            return
        if time.monotonic() > deadline:
            raise MeasureError(f"{path} shows {v!r}, not {want!r}, after {timeout} s")
        session.check_alive()
        time.sleep(0.01)


def measure_latency(s, edits, mode, gap_ms, timeout_s):
    wl = os.path.join(s.manifests, "workload.yaml")
    write_file(os.path.join(s.manifests, "policy.yaml"), POLICY)
    write_file(wl, LATENCY_WORKLOAD.format(cpu=LIMITS[0][0]))
    s.start(resync=30)
    s.wait_ready()
    path = quota_file(s.root, "measure", "edit.0")
    log(f"latency: waiting for {path} to show {LIMITS[0][1]}")
    wait_value(path, LIMITS[0][1], 30, s)
    _, before = s.run_counters()
    s.remember_pids()
    pids_before = group_pids(s.root)
    tmp = os.path.join(s.manifests, ".workload.yaml.tmp")
    samples = []
    odd_values = {}
    log(f"latency: {edits} edits ({mode}), polling every 1 ms, {gap_ms} ms between edits")
    for i in range(edits):
        cpu, want = LIMITS[(i + 1) % 2]
        old = LIMITS[i % 2][1]
        text = LATENCY_WORKLOAD.format(cpu=cpu)
        if mode == "rename":
            write_file(tmp, text)
            t0 = time.perf_counter()
            os.rename(tmp, wl)
        else:
            t0 = time.perf_counter()
            write_file(wl, text)
        deadline = t0 + timeout_s
        while True:
            v = read_value(path)
            now = time.perf_counter()
            if v == want:
                break
            if v != old:
                odd_values[v] = odd_values.get(v, 0) + 1
            if now > deadline:
                s.check_alive()
                raise MeasureError(
                    f"edit {i + 1}: {path} still shows {v!r} {timeout_s} s after the manifest "
                    f"said cpu {cpu} (quota {want}); the watch missed the edit?\n"
                    f"corral run log ends with:\n{s.log_tail()}")
            time.sleep(0.001)
        samples.append((now - t0) * 1000)
        if (i + 1) % 25 == 0:
            log(f"latency: {i + 1}/{edits} edits, last {samples[-1]:.1f} ms")
        time.sleep(gap_ms / 1000)
    s.check_alive()
    _, after = s.run_counters()
    s.remember_pids()
    pids_after = group_pids(s.root)
    notes = []
    if odd_values:
        notes.append(f"the quota file showed unexpected values while edits applied: {odd_values}")
    if after["starts"] != before["starts"] or pids_before != pids_after:
        notes.append(
            f"changing the cpu limit restarted the workload: starts {before['starts']} -> "
            f"{after['starts']}, pids {sorted(pids_before)} -> {sorted(pids_after)}")
    if after["failures"] != before["failures"]:
        notes.append(f"{after['failures'] - before['failures']} failed operation(s) during the edits")
    srt = sorted(samples)
    return {
        "edits": edits,
        "mode": mode,
        "p50_ms": percentile(srt, 50),
        "p99_ms": percentile(srt, 99),
        "max_ms": srt[-1],
        "min_ms": srt[0],
        "mean_ms": sum(srt) / len(srt),
        "over_target": sum(1 for x in srt if x >= TARGET_LATENCY_MS),
        "passes": after["passes"] - before["passes"],
        "writes": after["writes"] - before["writes"],
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------
# Phase 2: idle cost


def plan_check(corral, manifests, replicas):
    out = subprocess.run([corral, "plan", "-f", manifests, "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise MeasureError(f"corral plan failed ({out.returncode}): {out.stdout}{out.stderr}")
    plan = json.loads(out.stdout)
    if plan.get("pending"):
        reasons = {p["reason"] for p in plan["pending"]}
        raise MeasureError(
            f"corral plan leaves {len(plan['pending'])} replica(s) pending: {sorted(reasons)[:3]}; "
            "lower the requests in IDLE_WORKLOAD or --replicas")
    if len(plan.get("allocations", [])) != replicas:
        raise MeasureError(f"corral plan allocates {len(plan.get('allocations', []))} replicas, not {replicas}")


def replica_states(st):
    states = {}
    for row in st.get("replicas", []):
        rep = row.get("report") or {}
        state = (rep.get("process") or {}).get("state") or ("Pending" if row.get("pending") else "Allocated")
        states[state] = states.get(state, 0) + 1
    return states


def measure_idle(s, replicas, idle_seconds, resync=5.0):
    write_file(os.path.join(s.manifests, "policy.yaml"), POLICY)
    write_file(os.path.join(s.manifests, "workload.yaml"), IDLE_WORKLOAD.format(replicas=replicas))
    plan_check(s.corral, s.manifests, replicas)
    log(f"idle: corral plan places all {replicas} replicas")
    t_start = time.monotonic()
    pid = s.start()
    s.wait_ready(timeout=60)
    bound = 60 + replicas * 0.5
    log(f"idle: waiting for {replicas} replicas to run (at most {bound:.0f} s)")
    deadline = time.monotonic() + bound
    last_states = None
    while True:
        s.check_alive()
        st = s.status()
        states = replica_states(st)
        if states.get("Running", 0) == replicas and len(st.get("replicas", [])) == replicas:
            break
        if states != last_states:
            log(f"idle: replicas {states}")
            last_states = states
        if time.monotonic() > deadline:
            raise MeasureError(f"after {bound:.0f} s the replicas are {states}, not {replicas} Running\n"
                               f"corral run log ends with:\n{s.log_tail()}")
        time.sleep(0.5)
    startup_s = time.monotonic() - t_start
    log(f"idle: all {replicas} replicas Running after {startup_s:.1f} s")
    # Settle: let one resync pass after everything runs, so the window holds only steady
    # state.
    _, c = s.run_counters()
    deadline = time.monotonic() + 3 * resync + 10
    while True:
        _, c2 = s.run_counters()
        if c2["passes"] > c["passes"]:
            break
        if time.monotonic() > deadline:
            raise MeasureError(f"no agent pass within {3 * resync + 10:.0f} s (passes stay at {c['passes']}); "
                               "is the resync timer running?")
        s.check_alive()
        time.sleep(0.2)
    s.remember_pids()
    workload_pids = set(s.seen)
    ticks0 = proc_stat(pid)[1]
    w0 = time.monotonic()
    _, a0 = s.run_counters()
    log(f"idle: window of {idle_seconds} s starts (passes {a0['passes']}, writes {a0['writes']})")
    rss_samples = []
    next_log = w0 + 15
    while time.monotonic() - w0 < idle_seconds:
        s.check_alive()
        rss = proc_status_kib(pid, "VmRSS")
        if rss is not None:
            rss_samples.append(rss)
        if time.monotonic() >= next_log:
            log(f"idle: {time.monotonic() - w0:.0f}/{idle_seconds} s, RSS {rss / 1024:.1f} MiB")
            next_log += 15
        time.sleep(min(1.0, max(0.0, idle_seconds - (time.monotonic() - w0))))
    _, a1 = s.run_counters()
    ticks1 = proc_stat(pid)[1]
    w1 = time.monotonic()
    rss_end = proc_status_kib(pid, "VmRSS")
    hwm = proc_status_kib(pid, "VmHWM")
    threads = proc_threads(pid)
    st = s.status()
    states = replica_states(st)
    s.remember_pids()
    notes = []
    if states.get("Running", 0) != replicas:
        notes.append(f"at the end of the idle window the replicas are {states}")
    if set(s.seen) != workload_pids:
        notes.append(f"workload processes changed during the idle window: "
                     f"{len(set(s.seen) - workload_pids)} new pid(s)")
    d = {k: a1[k] - a0[k] for k in a0}
    # The log pumps (corral log-pump, one beside each replica, in its groups): their
    # proportional share of memory, shared pages split among them.
    pumps, pumps_pss = 0, 0
    for p in group_pids(s.root):
        if "log-pump" in (proc_cmdline(p) or ""):
            pumps += 1
            pumps_pss += proc_pss_kib(p)
    if d["starts"]:
        notes.append(f"{d['starts']} process start(s) during the idle window")
    if d["failures"]:
        notes.append(f"{d['failures']} failed operation(s) during the idle window")
    if d["driftCorrections"]:
        notes.append(f"{d['driftCorrections']} drift correction(s) though nothing changed the tree")
    wall = w1 - w0
    cpu_s = (ticks1 - ticks0) / CLK_TCK
    return {
        "replicas": replicas,
        "startup_s": startup_s,
        "idle_seconds": wall,
        "cpu_seconds": cpu_s,
        "cpu_percent": 100 * cpu_s / wall,
        "rss_end_mib": rss_end / 1024,
        "rss_max_mib": max(rss_samples + [rss_end]) / 1024,
        "hwm_mib": hwm / 1024,
        "threads": threads,
        "passes": d["passes"],
        "pass_ms": (d.get("passMicros", 0) / d["passes"] / 1000) if d["passes"] else None,
        "pumps": pumps,
        "pumps_pss_mib": pumps_pss / 1024,
        "writes": d["writes"],
        "drift_corrections": d["driftCorrections"],
        "writes_per_resync": (d["writes"] / d["passes"]) if d["passes"] else None,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------


def build():
    log(f"building: cargo build --release (CARGO_TARGET_DIR={TARGET_DIR})")
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR)
    try:
        out = subprocess.run(["cargo", "build", "--release"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise MeasureError("cargo not found; build corral and pass --corral PATH")
    except subprocess.TimeoutExpired:
        raise MeasureError("cargo build --release did not finish within 30 minutes")
    if out.returncode != 0:
        raise MeasureError(f"cargo build --release failed:\n{out.stderr[-3000:]}")
    return os.path.join(TARGET_DIR, "release", "corral")


def fmt_ms(x):
    return f"{x:.1f} ms"


def table(lat, idle, args):
    rows = []
    ok = []
    if lat:
        good = lat["p50_ms"] < TARGET_LATENCY_MS and lat["p99_ms"] < TARGET_LATENCY_MS
        ok.append(("latency", good))
        rows.append((
            f"manifest edit → cgroup value ({lat['edits']} edits, {lat['mode']})",
            f"p50 {fmt_ms(lat['p50_ms'])}   p99 {fmt_ms(lat['p99_ms'])}   "
            f"max {fmt_ms(lat['max_ms'])}   mean {fmt_ms(lat['mean_ms'])}",
            f"< {TARGET_LATENCY_MS:.0f} ms", good))
    if idle:
        n = idle["replicas"]
        good = idle["cpu_percent"] < TARGET_CPU_PERCENT
        ok.append(("cpu", good))
        rows.append((
            f"CPU holding {n} idle replicas ({idle['idle_seconds']:.0f} s)",
            f"{idle['cpu_percent']:.2f}% of a core   ({idle['cpu_seconds']:.2f} s CPU)",
            f"< {TARGET_CPU_PERCENT:g}%", good))
        good = idle["rss_max_mib"] < TARGET_RSS_MIB
        ok.append(("memory", good))
        rows.append((
            f"memory holding {n} idle replicas",
            f"RSS {idle['rss_end_mib']:.1f} MiB (max {idle['rss_max_mib']:.1f})   "
            f"peak VmHWM {idle['hwm_mib']:.1f} MiB",
            f"< {TARGET_RSS_MIB:g} MiB", good))
        wpr = idle["writes_per_resync"]
        good = wpr is not None and idle["writes"] == TARGET_WRITES_PER_RESYNC
        ok.append(("writes", good))
        rows.append((
            "writes in a resync when nothing changed",
            (f"{wpr:g} per resync   ({idle['writes']} writes in {idle['passes']} resyncs)"
             if wpr is not None else f"no resync observed ({idle['writes']} writes)"),
            f"{TARGET_WRITES_PER_RESYNC}", good))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{'measure':<{w0}}   {'figure':<{w1}}   {'target':<{w2}}   result",
             f"{'-' * w0}   {'-' * w1}   {'-' * w2}   ------"]
    for name, fig, tgt, good in rows:
        lines.append(f"{name:<{w0}}   {fig:<{w1}}   {tgt:<{w2}}   {'ok' if good else 'MISSED'}")
    return "\n".join(lines), ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", help="corral binary (default: cargo build --release and use "
                    f"{TARGET_DIR}/release/corral)")
    ap.add_argument("--edits", type=int, default=100, help="manifest edits to time (default 100)")
    ap.add_argument("--replicas", type=int, default=200, help="idle replicas (default 200, max 1000)")
    ap.add_argument("--idle-seconds", type=float, default=60, help="idle window (default 60)")
    ap.add_argument("--edit-mode", choices=["rename", "inplace"], default="rename",
                    help="replace the manifest by rename (default, as editors do) or rewrite it in place")
    ap.add_argument("--edit-gap-ms", type=float, default=50,
                    help="pause between one edit showing and the next edit (default 50)")
    ap.add_argument("--skip", choices=["latency", "idle"], action="append", default=[],
                    help="skip a phase (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if args.edits < 1 or not 1 <= args.replicas <= 1000 or args.idle_seconds <= 0:
        ap.error("--edits must be >= 1, --replicas in 1..1000, --idle-seconds > 0")
    if os.geteuid() != 0:
        log("warning: not root; corral needs root (or a delegated subtree) to manage cgroups")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    tmp = None
    sessions = []
    lat = idle = None
    error = None
    cleanup_problems = []
    status = 0
    try:
        corral = os.path.abspath(args.corral) if args.corral else build()
        if not os.access(corral, os.X_OK):
            raise MeasureError(f"{corral} is not an executable")
        log(f"corral: {corral}")
        tmp = tempfile.mkdtemp(prefix="corral-measure-")
        base = f"corral-measure-{os.getpid()}"
        for name in ("latency", "idle"):
            if root_dirs(f"{base}-{name}"):
                raise MeasureError(f"cgroup root {base}-{name} exists already; not touching it")
        if "latency" not in args.skip:
            s = Session(corral, tmp, "latency", f"{base}-latency")
            sessions.append(s)
            lat = measure_latency(s, args.edits, args.edit_mode, args.edit_gap_ms, timeout_s=10)
            cleanup_problems += [f"latency: {p}" for p in s.cleanup()]
        if "idle" not in args.skip:
            s = Session(corral, tmp, "idle", f"{base}-idle")
            sessions.append(s)
            idle = measure_idle(s, args.replicas, args.idle_seconds)
            cleanup_problems += [f"idle: {p}" for p in s.cleanup()]
    except Interrupted as e:
        error = str(e)
        status = 128 + e.signum
    except MeasureError as e:
        error = str(e)
        status = 2
    except Exception as e:  # noqa: BLE001 - report, then clean up
        error = f"{type(e).__name__}: {e}"
        status = 2
    finally:
        # Cleanup must run to the end: further signals only say so.
        def patient(signum, _frame):
            log(f"got {signal.Signals(signum).name} during cleanup; cleaning up first")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, patient)
        for s in sessions:
            if not s.cleaned:
                cleanup_problems += [f"{s.name}: {p}" for p in s.cleanup()]
        if error or cleanup_problems:
            # Keep corral run's logs for a look; the rest of the temporary dir goes.
            for s in sessions:
                if os.path.exists(s.log_path):
                    kept = f"/tmp/corral-measure-{os.getpid()}-{s.name}.log"
                    shutil.copy(s.log_path, kept)
                    log(f"{s.name}: corral run's log kept at {kept}")
        if tmp and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(tmp):
                cleanup_problems.append(f"cannot remove {tmp}")

    if error:
        log(f"ERROR: {error}")
    notes = (lat or {}).get("notes", []) + (idle or {}).get("notes", [])
    if lat or idle:
        text, ok = table(lat, idle, args)
        print(text)
        if lat:
            print(f"\nlatency: min {fmt_ms(lat['min_ms'])}; {lat['over_target']} of {lat['edits']} edits "
                  f"at or over {TARGET_LATENCY_MS:.0f} ms; {lat['passes']} agent passes and "
                  f"{lat['writes']} writes for {lat['edits']} edits")
        if idle:
            if idle["pass_ms"] is not None:
                print(f"idle: a pass over {idle['replicas']} replicas takes {idle['pass_ms']:.1f} ms "
                      f"of wall time on average ({idle['passes']} passes)")
            print(f"idle: {idle['pumps']} log pumps, {idle['pumps_pss_mib']:.1f} MiB PSS together "
                  f"(charged to the replicas' groups)")
            if idle["passes"]:
                per = idle["cpu_seconds"] / idle["passes"] * 1000
                print(f"idle: {per:.0f} ms CPU per resync ({per * 1000 / idle['replicas']:.0f} us per "
                      f"replica), all of corral run's CPU in the window divided by its passes")
            print(f"idle: {idle['replicas']} replicas running {idle['startup_s']:.1f} s after start; "
                  f"corral run has {idle['threads']} threads; {idle['drift_corrections']} drift "
                  f"corrections in the window")
        missed = [name for name, good in ok if not good]
        if missed and status == 0:
            status = 1
        if missed:
            print(f"\nMISSED: {', '.join(missed)}")
    else:
        missed = []
    for n in notes:
        print(f"corral oddity: {n}")
    for p in cleanup_problems:
        print(f"cleanup problem: {p}")
    if cleanup_problems and status in (0, 1):
        status = 3
    if args.json:
        print(json.dumps({
            "latency": lat, "idle": idle, "missed": missed, "error": error,
            "cleanupProblems": cleanup_problems,
            "targets": {"latencyMs": TARGET_LATENCY_MS, "cpuPercent": TARGET_CPU_PERCENT,
                        "rssMiB": TARGET_RSS_MIB, "writesPerResync": TARGET_WRITES_PER_RESYNC},
        }, indent=2))
    log(f"done in {time.monotonic() - T0:.0f} s, exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
