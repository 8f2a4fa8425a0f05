#!/usr/bin/env bash
# Checks the image archives on a real containerd: builds them (build-all.sh, a no-op when
# up to date), starts a private containerd, imports each archive into its k8s.io namespace
# (where the kubelet looks) as `ctr images import` would on a node, and runs each image once:
#   corral     its config (ENTRYPOINT, USER) as the Dockerfile's; `corral --version`;
#              `corral validate -f` on each examples/ directory; every tool in corral.sh's
#              tools= runs, as the image's user, on a read-only root with /tmp writable
#   zookeeper  as the chart's StatefulSet runs it: uid 1000, read-only root, the chart's
#              zoo.cfg mounted at /conf/zoo.cfg, /data, /logs and /tmp writable,
#              ZK_SERVER_HEAP=256, in a network namespace of its own; it must answer
#              `ruok` with imok and `srvr` with Mode: standalone on 2181, run java with
#              -Xmx256m as uid 1000, and stop on SIGTERM
#   pause      starts, and exits 0 on SIGTERM
#
# Usage: sudo scripts/image/check.sh   (about 30 s once the images are built)
# Needs root, containerd and runc (Debian's, installed with apt-get when missing), ip and
# nsenter. Nothing is left behind, on success or failure: the containers and tasks are
# deleted, containerd (started here, stopped by its PID) and any shim it started are
# stopped, mounts under the temporary directory are undone, the network namespace deleted.
#
# The private containerd uses its own root, state, socket and runc root under a temporary
# directory, and container ids of its own, so it does not meet a node's containerd on the
# same machine. Its CRI plugin is on (images are imported as a node would have them) with
# restrict_oom_score_adj, because root here lacks CAP_SYS_RESOURCE.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

say() { echo "check.sh: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for tool in ip nsenter python3; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null \
  || ! command -v ctr >/dev/null; then
  say "installing containerd and runc (Debian's)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containerd runc >&2
fi

mapfile -t archives < <("$here/build-all.sh")
corral_tar="" zk_tar="" pause_tar=""
for a in "${archives[@]}"; do
  case "$(basename "$a")" in
    corral.tar) corral_tar="$a" ;;
    zookeeper.tar) zk_tar="$a" ;;
    pause.tar) pause_tar="$a" ;;
  esac
done
if [ -z "$corral_tar" ] || [ -z "$zk_tar" ] || [ -z "$pause_tar" ]; then
  die "build-all.sh printed ${archives[*]}"
fi

tmp="$(mktemp -d /var/tmp/corral-image-check.XXXXXX)"
id="cic$$"                 # container id prefix and netns name, unique to this run
netns="corral-img-$id"
ctd_pid=""

ctr_() { ctr --address "$tmp/sock" -n k8s.io "$@"; }
# ctr run with this run's runc root, fifos and cgroup parent, not the node's defaults
# (/run/containerd/runc, /run/containerd/fifo, /k8s.io).
cgroup_parent="corral-image-check-$id"
run_() { # NAME-SUFFIX and ctr run's arguments
  local c="$id-$1"; shift
  ctr_ run --runc-root "$tmp/runc" --fifo-dir "$tmp/fifo" --cgroup "/$cgroup_parent/$c" "$@"
}
# containerd 1.6's shims always put their sockets in /run/containerd/s; remove that
# directory afterwards if this run made it (it must be empty by then).
run_containerd_existed=""
[ ! -e /run/containerd ] || run_containerd_existed=1

cleanup() {
  local rc=$?
  set +e
  # Every container in this private containerd is this run's (ctr run in the background or
  # in $(...) runs in a subshell, so the script cannot keep a list of its own).
  if [ -S "$tmp/sock" ]; then
    for c in $(ctr_ task ls -q 2>/dev/null); do
      ctr_ task kill -s SIGKILL "$c" >/dev/null 2>&1
      ctr_ task delete -f "$c" >/dev/null 2>&1
    done
    for c in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ containers delete "$c" >/dev/null 2>&1
    done
  fi
  if [ -n "$ctd_pid" ]; then
    kill "$ctd_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$ctd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ctd_pid" 2>/dev/null
    wait "$ctd_pid" 2>/dev/null
  fi
  # Shims outlive containerd by design; one still running is one this containerd started
  # (its command line names this run's socket). They go once their task is deleted: give
  # them a moment, then stop any left by its PID. A shim stopped so leaves its socket in
  # /run/containerd/s, named by the hash of containerd's address, namespace and container
  # id (containerd 1.6's shim.SocketAddress): remove it.
  for _ in $(seq 50); do pgrep -f -- "-address $tmp/sock" >/dev/null || break; sleep 0.1; done
  for p in $(pgrep -f -- "-address $tmp/sock"); do
    c="$(tr '\0' '\n' <"/proc/$p/cmdline" | sed -n '/^-id$/{n;p;}')"
    say "stopping leftover shim $p ($c)"
    kill -9 "$p" 2>/dev/null
    [ -z "$c" ] || rm -f "/run/containerd/s/$(printf '%s' "$tmp/sock/k8s.io/$c" | sha256sum | cut -d' ' -f1)"
  done
  # A container whose shim was stopped keeps running: its processes are in this run's
  # cgroups, which are then removed, children first.
  # shellcheck disable=SC2013 # one PID a line
  for p in $(cat /sys/fs/cgroup/pids/"$cgroup_parent"/*/cgroup.procs \
    /sys/fs/cgroup/"$cgroup_parent"/*/cgroup.procs 2>/dev/null); do
    say "stopping leftover container process $p"
    kill -9 "$p" 2>/dev/null
  done
  for d in /sys/fs/cgroup/*/"$cgroup_parent" /sys/fs/cgroup/"$cgroup_parent"; do
    [ -d "$d" ] || continue
    for _ in $(seq 20); do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$d" ] || break
      sleep 0.1 # the killed processes leave their cgroups as they exit
    done
  done
  # Mounts under the temporary directory (rootfs overlays, shm), deepest first.
  awk -v t="$tmp" '$2 == t || index($2, t "/") == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r m; do umount -l "$m"; done
  ip netns delete "$netns" 2>/dev/null
  [ -n "$run_containerd_existed" ] || rmdir /run/containerd/s /run/containerd 2>/dev/null
  if [ "$rc" = 0 ]; then
    rm -rf "$tmp"
  else
    say "kept $tmp (containerd.log, the containers' output) for a look; remove it after"
    rm -rf "$tmp/root" "$tmp/state"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/config.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
[grpc]
  address = "$tmp/sock"
[ttrpc]
  address = "$tmp/sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$tmp/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
    Root = "$tmp/runc"
[plugins."io.containerd.grpc.v1.cri".cni]
  conf_dir = "$tmp/cni"
EOF
containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 100); do
  [ -S "$tmp/sock" ] && ctr --address "$tmp/sock" version >/dev/null 2>&1 && break
  kill -0 "$ctd_pid" 2>/dev/null || die "containerd exited: $(tail -n5 "$tmp/containerd.log")"
  sleep 0.1
done
say "containerd $(containerd --version | awk '{print $3}') started (pid $ctd_pid)"

ms() { echo $(($(date +%s%N) / 1000000)); }
for a in "$pause_tar" "$corral_tar" "$zk_tar"; do
  t0=$(ms)
  ctr_ images import "$a" >&2 || die "import of $a"
  say "imported $(basename "$a") ($(du -m "$a" | cut -f1) MiB) in $(($(ms) - t0)) ms"
done
ctr_ images ls >&2

# The tags the archives carry, as containerd names them.
tags_of() { tar -xOf "$1" manifest.json | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)[0]["RepoTags"]))'; }
norm() { # a tag as containerd names it (docker.io/library/ for short names)
  case "$1" in */*/*|*.*/*|*:*/*) echo "$1" ;; */*) echo "docker.io/$1" ;; *) echo "docker.io/library/$1" ;; esac
}
image_of() { norm "$(tags_of "$1" | cut -d' ' -f1)"; }
config_of() { # the image config's field $2 ($1 an archive), as JSON
  tar -xOf "$1" manifest.json | python3 -c '
import json, sys, tarfile
m = json.load(sys.stdin)[0]
with tarfile.open(sys.argv[1]) as t:
    c = json.load(t.extractfile(m["Config"]))["config"]
print(json.dumps(c.get(sys.argv[2])))' "$1" "$2"
}
# (The list in a variable first: grep -q stopping early would fail ctr with SIGPIPE.)
names="$(ctr_ images ls -q)"
for a in "$pause_tar" "$corral_tar" "$zk_tar"; do
  for t in $(tags_of "$a"); do
    grep -qxF "$(norm "$t")" <<<"$names" || die "$(norm "$t") is not in containerd after importing $a"
  done
done
say "ok: every tag imported: $(for a in "$pause_tar" "$corral_tar" "$zk_tar"; do tags_of "$a"; done | tr '\n' ' ')"

# --- pause: up, then SIGTERM ends it with status 0 ---
pause_img="$(image_of "$pause_tar")"
c="$id-pause"
run_ pause --rm --read-only "$pause_img" "$c" >"$tmp/pause.out" 2>&1 &
runner=$!
running() { grep -q "^$1 .*RUNNING" <<<"$(ctr_ task ls 2>/dev/null)"; }
for _ in $(seq 50); do running "$c" && break; sleep 0.1; done
running "$c" || die "pause did not start: $(cat "$tmp/pause.out")"
sleep 0.5
ctr_ task kill -s SIGTERM "$c"
rc=0; wait "$runner" || rc=$?
[ "$rc" = 0 ] || die "pause exited $rc on SIGTERM: $(cat "$tmp/pause.out")"
say "ok: pause ($pause_img) runs and exits 0 on SIGTERM"

# --- corral ---
corral_img="$(image_of "$corral_tar")"
want_ep="$(sed -n 's/^entrypoint=//p' "$here/corral.sh")"
want_user="$(sed -n 's/^user=//p' "$here/corral.sh")"
tools="$(sed -n 's/^tools="\(.*\)"$/\1/p' "$here/corral.sh")"
[ "$(config_of "$corral_tar" Entrypoint)" = "[\"$want_ep\"]" ] || die "corral ENTRYPOINT $(config_of "$corral_tar" Entrypoint)"
[ "$(config_of "$corral_tar" User)" = "\"$want_user\"" ] || die "corral USER $(config_of "$corral_tar" User)"
[ "$(config_of "$corral_tar" Cmd)" = null ] || die "corral CMD $(config_of "$corral_tar" Cmd), the Dockerfile has none"
run_corral() { # NAME ARG...: run in the corral image, read-only, /tmp and examples/ mounted
  local name="$1"; shift
  mkdir -p "$tmp/corral-tmp"
  chmod 1777 "$tmp/corral-tmp" # as an emptyDir: writable by the image's user
  run_ "$name" --rm --read-only \
    --mount "type=bind,src=$tmp/corral-tmp,dst=/tmp,options=rbind:rw" \
    --mount "type=bind,src=$repo/examples,dst=/examples,options=rbind:ro" \
    "$corral_img" "$id-$name" "$@"
}
version="$(run_corral version "$want_ep" --version)" || die "corral --version"
say "ok: corral --version: $version"
for d in "$repo"/examples/*/; do
  d="$(basename "$d")"
  run_corral "validate-$d" "$want_ep" validate -f "/examples/$d" >"$tmp/validate.out" 2>&1 \
    || die "corral validate -f examples/$d: $(cat "$tmp/validate.out")"
done
say "ok: corral validate -f on every examples/ directory"
# The tools, as the workloads run them (sh -c), as the image's user; and the examples' pipe.
# shellcheck disable=SC2016 # expanded by the image's shell
script='set -e; id -u; id -g; for t in '"$tools"'; do command -v "$t" >/dev/null || { echo "no $t"; exit 1; }; done
  [ "$(head -c 5 /dev/zero | tr "\000" x)" = xxxxx ]; sleep 0.1; true; env >/dev/null; cat /etc/passwd >/dev/null
  echo scratch >/tmp/probe && ! touch /probe 2>/dev/null'
out="$(run_corral tools /bin/sh -c "$script" 2>&1)" || die "tools in the corral image: $out"
[ "$(echo "$out" | head -n2 | tr '\n' :)" = "${want_user}:" ] || die "corral image runs as $(echo "$out" | tr '\n' ' '), not $want_user"
say "ok: corral image: $tools run as $want_user, root read-only, /tmp writable"

# --- zookeeper, as the StatefulSet runs it ---
zk_img="$(image_of "$zk_tar")"
ip netns add "$netns"
ip -n "$netns" link set lo up
zk="$tmp/zk"
mkdir -p "$zk"/{data,logs,tmp}
chown 1000:1000 "$zk"/{data,logs,tmp}
# The chart's zoo.cfg, from its ConfigMap template (the lines under "zoo.cfg: |").
awk '/zoo.cfg: \|/ { on = 1; next } on && /^\{\{-/ { exit } on { sub(/^    /, ""); print }' \
  "$repo/charts/corral/templates/zookeeper/configmap.yaml" >"$zk/zoo.cfg"
grep -q '^clientPort=2181$' "$zk/zoo.cfg" || die "could not read zoo.cfg from the chart: $(cat "$zk/zoo.cfg")"
c="$id-zk"
run_ zk --rm --read-only --with-ns "network:/run/netns/$netns" --env ZK_SERVER_HEAP=256 \
  --mount "type=bind,src=$zk/zoo.cfg,dst=/conf/zoo.cfg,options=rbind:ro" \
  --mount "type=bind,src=$zk/data,dst=/data,options=rbind:rw" \
  --mount "type=bind,src=$zk/logs,dst=/logs,options=rbind:rw" \
  --mount "type=bind,src=$zk/tmp,dst=/tmp,options=rbind:rw" \
  "$zk_img" "$c" /docker-entrypoint.sh zkServer.sh start-foreground >"$tmp/zk.out" 2>&1 &
runner=$!
four() { # a four-letter command to the server, from inside its network namespace
  nsenter --net="/run/netns/$netns" python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", 2181), timeout=2)
s.sendall(sys.argv[1].encode()); s.shutdown(socket.SHUT_WR)
print(b"".join(iter(lambda: s.recv(4096), b"")).decode())' "$1" 2>/dev/null
}
t0=$(date +%s)
until [ "$(four ruok || true)" = imok ]; do
  kill -0 "$runner" 2>/dev/null || die "zookeeper exited: $(tail -n 20 "$tmp/zk.out")"
  [ $(($(date +%s) - t0)) -lt 60 ] || die "zookeeper did not answer ruok in 60 s: $(tail -n 20 "$tmp/zk.out")"
  sleep 0.5
done
say "ok: zookeeper answers ruok with imok after $(($(date +%s) - t0)) s"
srvr="$(four srvr)"
grep -q '^Mode: standalone' <<<"$srvr" || die "srvr: $srvr"
say "ok: srvr: $(echo "$srvr" | head -n1)"
pid="$(ctr_ task ls | awk -v c="$c" '$1 == c { print $2 }')"
cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
case "$cmdline" in *" -Xmx256m "*) ;; *) die "ZK_SERVER_HEAP=256 not applied: $cmdline" ;; esac
[ "$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")" = 1000 ] || die "zookeeper does not run as uid 1000"
ls "$zk/data/version-2" >/dev/null 2>&1 || die "no data in /data"
say "ok: java runs as uid 1000 with -Xmx256m, data in /data"
ctr_ task kill -s SIGTERM "$c"
rc=0; wait "$runner" || rc=$?
case "$rc" in 0|143) ;; *) die "zookeeper exited $rc on SIGTERM: $(tail -n 20 "$tmp/zk.out")" ;; esac
say "ok: zookeeper stops on SIGTERM (status $rc)"
# The image on its own, as `docker run zookeeper:3.8` would: its shipped zoo.cfg, which
# enables the admin server (jetty, on java.beans without AWT's native libraries). Its
# VOLUMEs, which docker and the CRI plugin make writable, are bind mounts here.
c2="$id-zk2"
mkdir -p "$zk"/own/{data,datalog,logs,tmp}
chown 1000:1000 "$zk"/own/*
run_ zk2 --rm --read-only --with-ns "network:/run/netns/$netns" \
  --mount "type=bind,src=$zk/own/data,dst=/data,options=rbind:rw" \
  --mount "type=bind,src=$zk/own/datalog,dst=/datalog,options=rbind:rw" \
  --mount "type=bind,src=$zk/own/logs,dst=/logs,options=rbind:rw" \
  --mount "type=bind,src=$zk/own/tmp,dst=/tmp,options=rbind:rw" \
  "$zk_img" "$c2" /docker-entrypoint.sh zkServer.sh start-foreground >"$tmp/zk2.out" 2>&1 &
runner=$!
admin() {
  nsenter --net="/run/netns/$netns" python3 -c '
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:8080/commands/ruok", timeout=2).read().decode())' 2>/dev/null
}
t0=$(date +%s)
until grep -q '"error" : null' <<<"$(admin || true)"; do
  ! grep -q 'not starting JettyAdminServer' "$tmp/zk2.out" \
    || die "no admin server: $(grep -A3 'not starting JettyAdminServer' "$tmp/zk2.out")"
  kill -0 "$runner" 2>/dev/null || die "zookeeper (own zoo.cfg) exited: $(tail -n 20 "$tmp/zk2.out")"
  [ $(($(date +%s) - t0)) -lt 60 ] || die "no admin server on 8080 in 60 s: $(tail -n 20 "$tmp/zk2.out")"
  sleep 0.5
done
ctr_ task kill -s SIGTERM "$c2"
rc=0; wait "$runner" || rc=$?
case "$rc" in 0|143) ;; *) die "zookeeper (own zoo.cfg) exited $rc on SIGTERM" ;; esac
say "ok: zookeeper with the image's own zoo.cfg: admin server answers /commands/ruok"
if grep -E ' (WARN|ERROR) ' "$tmp/zk.out" >&2; then
  say "(zookeeper's warnings and errors above, for a look; they fail nothing)"
fi
say "all images pass"
