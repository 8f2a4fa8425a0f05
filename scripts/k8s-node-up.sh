#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the end-to-end tests
# (tests/common/kube_node.rs runs this script) and for people:
#
#   scripts/k8s-node-up.sh          # brings the node up, prints `ready ...` and waits;
#                                   # Ctrl-C or SIGTERM tears everything down
#   scripts/k8s-node-up.sh --keep   # the same, but keeps the run's directory (logs, certs)
#   scripts/k8s-node-up.sh --down   # removes what a killed run left behind
#   kill -USR1 <pid of a run>       # restarts kubelet and containerd as on a real node (the
#                                   # containers keep running); -USR2: kubelet only. It
#                                   # prints `restarted ...` once the node and pods are back
#
# Once up, from another shell (the API server is only reachable inside the namespace):
#   . /tmp/corral-node-XXXXXX/env   # KUBECONFIG, CORRAL_NODE_NETNS, CONTAINERD_ADDRESS
#   nsenter --net=$CORRAL_NODE_NETNS kubectl get pods -A
#
# The binaries and images come from scripts/k8s-node.sh (run it first). Every process runs
#   - in a network namespace made for the run, corral-node-<pid of this script>: the node's
#     address 10.214.0.2 on a veth pair (this kernel has no dummy links) with the default
#     route; pods in 10.244.0.0/24 on a bridge cni0; Services in 10.96.0.0/16 (kubernetes
#     10.96.0.1, kube-dns 10.96.0.10). None of these addresses exists outside the namespace.
#     Processes enter it with nsenter, not `ip netns exec`, which mounts a /sys without the
#     cgroup filesystems;
#   - in a private mount namespace held by a `sleep` (the "holder"), with tmpfs on /run
#     (containerd's shim sockets, runc's state, pod network namespaces, the iptables lock)
#     and /var/log (pod logs), and on /var/lib/cni (libcni's cache) and /var/lib/kubelet
#     (kubelet's device-plugin socket; its state is in the run's directory). Every mount
#     that containerd and kubelet make (overlay root filesystems, secret and emptyDir
#     volumes) lives and dies there: nothing is mounted on the machine. The cgroup filesystems stay
#     visible, so hostPath volumes of /sys/fs/cgroup reach the machine's real cgroups. Three
#     kernel settings kubelet would otherwise change machine-wide (vm.overcommit_memory,
#     kernel.panic, kernel.panic_on_oops) are files holding kubelet's values there;
#   - in the cgroup /corral-e2e/system, in every hierarchy; kubelet's cgroupRoot and
#     containerd's cgroup parent are /corral-e2e, so every container and every shim is
#     under /corral-e2e too. Teardown SIGKILLs every process under /corral-e2e (listed from
#     the cgroups, so shims that were reparented to PID 1 are found; zombies count as
#     stopped: PID 1 here does not reap) and every process sharing a network or mount
#     namespace with one of them (a pod's process moved to another cgroup, as corral's
#     agent does with its workloads), never one in the machine's own namespaces; then it
#     removes the groups, the namespace (and with it its links and iptables rules) and the
#     run's directory (etcd data, containerd and kubelet state, certificates,
#     kubeconfigs). It never kills by name.
#
# One run at a time on the machine: the script holds a lock on /var/tmp/corral-k8s-node.lock
# (children do not inherit it) for its whole life, and under it removes what a run that was
# SIGKILLed left: anything under /corral-e2e, namespaces named corral-node-*, and directories
# ${TMPDIR:-/tmp}/corral-node-* without a `keep` file.
#
# Machine facts this relies on: root without CAP_SYS_RESOURCE, so containerd's CRI has
# restrict_oom_score_adj and kubelet's own oomScoreAdj is 0; cgroup v1 with the cgroupfs
# driver (no systemd); kubelet 1.32 on cgroup v1 needs failCgroupV1: false. The disk may be
# over 90% full, so eviction thresholds are 1% and image garbage collection is off.
set -euo pipefail

k8s="${CORRAL_K8S:-/var/tmp/corral-k8s}"
bin="$k8s/bin"
images="$k8s/images"

lock_file=/var/tmp/corral-k8s-node.lock
cgroup_name=corral-e2e
ns_prefix=corral-node-
dir_prefix=corral-node-
tmp="${TMPDIR:-/tmp}"

node_name=corral-node
node_ip=10.214.0.2
cluster_cidr=10.244.0.0/16
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
kubernetes_ip=10.96.0.1
dns_ip=10.96.0.10
cluster_domain=cluster.local
# What scripts/image/pause.sh tags the sandbox image (kubelet 1.32's default too).
pause_image=registry.k8s.io/pause:3.10

mode=up
keep=0
for arg in "$@"; do
  case "$arg" in
    --down) mode=down ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "k8s-node-up.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Messages go to fd 3, a copy of stderr that teardown keeps while it silences bash's
# reports of killed jobs on stderr.
exec 3>&2
log() { printf '%s k8s-node-up: %s\n' "$(date +%T.%3N)" "$*" >&3; }

# --- the machine-wide lock -------------------------------------------------------------
exec 9>>"$lock_file"
if ! flock -n 9; then
  log "waiting for another run to finish (lock $lock_file)"
  flock 9
fi

# --- cgroups -----------------------------------------------------------------------------
cgroup_mounts() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }

# The PIDs in /corral-e2e and below, in every hierarchy.
cgroup_pids() {
  local m
  for m in $(cgroup_mounts); do
    [ -d "$m/$cgroup_name" ] || continue
    find "$m/$cgroup_name" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done | sort -un
}

# True when PID is a process that has not exited (a zombie has).
live() {
  local state
  state="$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# "net:N" and "mnt:N" (N the namespace's inode) of each PID given, one per line.
namespaces_of() {
  local p paths=()
  for p in "$@"; do paths+=("/proc/$p/ns/net" "/proc/$p/ns/mnt"); done
  [ ${#paths[@]} -eq 0 ] ||
    find "${paths[@]}" -maxdepth 0 -printf '%l\n' 2>/dev/null | tr -d '[]' || true
}

# SIGKILLs every live process under /corral-e2e until none is left, and every process
# elsewhere that shares a network or mount namespace with one of them or is in a node's
# network namespace: a process that a pod moved into another cgroup (a workload started
# by corral's agent with another cgroup root) goes too. Never one in the namespaces of
# this script, its parent or PID 1, which are the machine's.
kill_cgroup() {
  local deadline=$((SECONDS + 30)) p s f machine left found
  local -A spaces=()
  machine="$(namespaces_of $$ "$PPID" 1)"
  while :; do
    mapfile -t found < <(cgroup_pids)
    for s in $(namespaces_of "${found[@]}"); do spaces[$s]=1; done
    for f in /run/netns/"$ns_prefix"*; do
      [ ! -e "$f" ] || spaces["net:$(stat -L -c %i "$f")"]=1
    done
    for s in $machine; do unset "spaces[$s]"; done
    if [ ${#spaces[@]} -gt 0 ]; then
      # Every process of the machine whose namespace is in the set.
      while read -r f s; do
        s="${s//[][]/}"
        if [ -n "${spaces[$s]:-}" ]; then
          f="${f#/proc/}"
          found+=("${f%%/*}")
        fi
      done < <(find /proc/[0-9]*/ns/net /proc/[0-9]*/ns/mnt -maxdepth 0 -printf '%p %l\n' \
        2>/dev/null || true)
    fi
    left=()
    for p in $(printf '%s\n' "${found[@]}" | sort -un); do
      if [ "$p" != $$ ] && [ "$p" != "$PPID" ] && [ "$p" != 1 ] && live "$p"; then
        left+=("$p")
      fi
    done
    [ ${#left[@]} -gt 0 ] || return 0
    kill -KILL "${left[@]}" 2>/dev/null || true
    if [ $SECONDS -ge $deadline ]; then
      log "still alive after SIGKILL: ${left[*]}"
      return 1
    fi
    sleep 0.1
  done
}

# Removes /corral-e2e and every group below it, deepest first, in every hierarchy.
remove_cgroups() {
  local m
  for m in $(cgroup_mounts); do
    for _ in $(seq 50); do
      [ -d "$m/$cgroup_name" ] || break
      # A killed task leaves its group a moment after it is gone: try again.
      find "$m/$cgroup_name" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1
    done
    if [ -d "$m/$cgroup_name" ]; then log "cannot remove $m/$cgroup_name"; fi
  done
}

# /corral-e2e/system in every hierarchy, cpuset's groups given their parent's CPUs and
# memory nodes (a new cpuset group has none, and takes no task until it has).
make_cgroups() {
  local m g f
  for m in $(cgroup_mounts); do
    for g in "$cgroup_name" "$cgroup_name/system"; do
      mkdir -p "$m/$g"
      for f in cpuset.cpus cpuset.mems; do
        if [ -f "$m/$g/$f" ] && [ -z "$(cat "$m/$g/$f")" ]; then
          cat "$(dirname "$m/$g")/$f" >"$m/$g/$f"
        fi
      done
    done
  done
}

# Everything a run leaves, whether this one (teardown) or one that was killed (sweep).
sweep() {
  local ns d ok=0
  kill_cgroup || ok=1
  remove_cgroups
  for ns in $(ip netns list | awk '{print $1}' | grep "^$ns_prefix" || true); do
    ip netns del "$ns" 2>/dev/null || { log "cannot delete the namespace $ns"; ok=1; }
  done
  for d in "$tmp/$dir_prefix"*; do
    if [ -d "$d" ] && [ ! -e "$d/keep" ]; then rm -rf "$d" || ok=1; fi
  done
  return $ok
}

if [ "$mode" = down ]; then
  t0=$SECONDS
  sweep
  log "swept in $((SECONDS - t0)) s"
  exit 0
fi

# --- up ----------------------------------------------------------------------------------
for f in kube-apiserver etcd kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
  [ -x "$bin/$f" ] || { log "$bin/$f is missing: run scripts/k8s-node.sh first"; exit 1; }
done
for f in pause.tar busybox.tar; do
  [ -f "$images/$f" ] || { log "$images/$f is missing: run scripts/k8s-node.sh first"; exit 1; }
done
for tool in containerd ctr runc kubectl openssl nsenter unshare iptables conntrack curl; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/k8s-node.sh"; exit 1; }
done

t_start=$(date +%s%N)
elapsed() { echo "$((($(date +%s%N) - t_start) / 1000000)) ms"; }

sweep || true
dir="$(mktemp -d "$tmp/${dir_prefix}XXXXXX")"
chmod 0755 "$dir"
ns="$ns_prefix$$"
holder=""
declare -A pids=()
declare -A reported=()
# Restart requests (see "restarts" below), queued by the signal traps.
restart_queue=()

teardown() {
  local rc=$? t0
  set +e
  trap - EXIT INT TERM HUP
  t0=$(date +%s%N)
  exec 2>/dev/null
  kill_cgroup
  # Reap this script's own children (zombies until then).
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" 2>/dev/null
  [ -z "$holder" ] || wait "$holder" 2>/dev/null
  remove_cgroups
  ip netns del "$ns" 2>/dev/null
  if [ "$keep" = 1 ]; then
    touch "$dir/keep"
    log "kept $dir (remove it by hand; --down leaves it)"
  else
    rm -rf "$dir"
  fi
  log "down in $((($(date +%s%N) - t0) / 1000000)) ms"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'restart_queue+=(runtime)' USR1
trap 'restart_queue+=(kubelet)' USR2

mkdir -p "$dir/log" "$dir/pki" "$dir/sysctl"
echo "$$" >"$dir/pid"

die() {
  local name
  log "$*"
  for name in "${!pids[@]}"; do
    printf -- '--- tail of %s ---\n' "$dir/log/$name.log" >&3
    tail -n 15 "$dir/log/$name.log" >&3 || true
  done
  exit 1
}

# Fails when a process started by spawn has exited.
check_alive() {
  local name
  for name in "${!pids[@]}"; do
    live "${pids[$name]}" || die "$name exited (log: $dir/log/$name.log)"
  done
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds; fails early when a process dies.
wait_for() {
  local timeout=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    check_alive
    [ $SECONDS -lt $deadline ] || die "no $what within $timeout s"
    sleep 0.2
  done
}

# Runs a command in the node's network namespace (for clients: kubectl, curl).
innet() { nsenter --net="/run/netns/$ns" -- "$@"; }
kc() { innet kubectl --kubeconfig "$dir/admin.kubeconfig" --cache-dir "$dir/kube-cache" "$@"; }

# spawn NAME COMMAND...: starts COMMAND in the node's cgroup, network and mount namespaces,
# in a session of its own (Ctrl-C reaches this script only), logging to log/NAME.log (appended
# to: a restarted component keeps its earlier log). pids[NAME] is COMMAND's own PID: neither
# setsid (not a group leader here) nor nsenter (no --pid) forks.
spawn() {
  local name=$1 m
  shift
  (
    for m in $(cgroup_mounts); do echo "$BASHPID" >"$m/$cgroup_name/system/cgroup.procs"; done
    exec setsid nsenter --target "$holder" --net --mount -- "$@"
  ) </dev/null >>"$dir/log/$name.log" 2>&1 3>&- 9>&- &
  pids[$name]=$!
}

# --- namespaces ----------------------------------------------------------------------------
make_cgroups
ip netns add "$ns"
ip -n "$ns" link set lo up
# A veth pair with both ends inside: eth0 carries the node's address and the default route,
# which kubelet and kube-proxy need; what goes out of it ends at eth1 and goes no further.
ip -n "$ns" link add eth0 type veth peer name eth1
ip -n "$ns" addr add "$node_ip/24" dev eth0
ip -n "$ns" link set eth1 up
ip -n "$ns" link set eth0 up
ip -n "$ns" route add default dev eth0
innet sysctl -qw net.ipv4.ip_forward=1
innet sysctl -qw net.bridge.bridge-nf-call-iptables=1

# The holder of the private mount namespace. The directories of libcni's cache and of
# kubelet's fixed paths (its device-plugin socket) must exist on the machine to be mounted
# over; they stay, empty.
mkdir -p /var/lib/cni /var/lib/kubelet
sysctls=""
for s in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  key=${s%%=*} value=${s#*=}
  if [ "$(cat "/proc/sys/$key")" != "$value" ]; then
    echo "$value" >"$dir/sysctl/${key//\//.}"
    sysctls+=" $key"
  fi
done
(
  for m in $(cgroup_mounts); do echo "$BASHPID" >"$m/$cgroup_name/system/cgroup.procs"; done
  # shellcheck disable=SC2016,SC2086 # $sysctls: one argument per key.
  exec setsid nsenter --net="/run/netns/$ns" -- unshare --mount --propagation private -- \
    sh -ec '
      dir=$1; shift
      mount -t tmpfs -o mode=0755,size=256m corral-node-run /run
      mount -t tmpfs -o mode=0755,size=1g corral-node-log /var/log
      mount -t tmpfs -o mode=0755,size=64m corral-node-cni /var/lib/cni
      mount -t tmpfs -o mode=0755,size=64m corral-node-kubelet /var/lib/kubelet
      for key in "$@"; do
        mount --bind "$dir/sysctl/$(echo "$key" | tr / .)" "/proc/sys/$key"
      done
      touch "$dir/holder.ready"
      exec sleep infinity' holder "$dir" $sysctls
) </dev/null >"$dir/log/holder.log" 2>&1 3>&- 9>&- &
holder=$!
for _ in $(seq 100); do
  if [ -e "$dir/holder.ready" ] || ! live "$holder"; then break; fi
  sleep 0.05
done
[ -e "$dir/holder.ready" ] || { cat "$dir/log/holder.log" >&3; die "the mount namespace holder did not start"; }
pids[holder]=$holder
log "namespace $ns, holder $holder ($(elapsed))"

# --- certificates and kubeconfigs ------------------------------------------------------
pki="$dir/pki"
ossl() { openssl "$@" 2>>"$dir/log/openssl.log"; }
key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"; }
# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster's CA.
cert() {
  key "$1"
  ossl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  printf '%b\n' "$3" >"$pki/$1.ext"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}
key ca
ossl req -x509 -new -key "$pki/ca.key" -subj /CN=corral-e2e-ca -days 7 -out "$pki/ca.crt"
key sa
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
client="extendedKeyUsage=clientAuth"
cert apiserver /CN=kube-apiserver "subjectAltName=IP:$node_ip,IP:$kubernetes_ip,IP:127.0.0.1,\
DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
DNS:kubernetes.default.svc.$cluster_domain\nextendedKeyUsage=serverAuth"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
cert admin "/O=system:masters/CN=admin" "$client"
cert controller-manager /CN=system:kube-controller-manager "$client"
cert scheduler /CN=system:kube-scheduler "$client"
cert kubelet "/O=system:nodes/CN=system:node:$node_name" "$client"
cert kubelet-serving "/CN=$node_name" "subjectAltName=IP:$node_ip,DNS:$node_name\nextendedKeyUsage=serverAuth"
cert kube-proxy /CN=system:kube-proxy "$client"
cert coredns /CN=system:coredns "$client"

# kubeconfig NAME: $dir/NAME.kubeconfig for the client certificate pki/NAME.
kubeconfig() {
  cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: corral-e2e
  cluster:
    server: https://$node_ip:6443
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: corral-e2e
  context:
    cluster: corral-e2e
    user: $1
current-context: corral-e2e
EOF
}
for k in admin controller-manager scheduler kubelet kube-proxy coredns; do kubeconfig "$k"; done
log "certificates ($(elapsed))"

# --- control plane ---------------------------------------------------------------------
spawn etcd "$bin/etcd" --data-dir="$dir/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=default=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
wait_for 30 "etcd" innet curl -sf http://127.0.0.1:2379/health

spawn kube-apiserver "$bin/kube-apiserver" \
  --advertise-address="$node_ip" --bind-address=0.0.0.0 --secure-port=6443 \
  --etcd-servers=http://127.0.0.1:2379 --storage-backend=etcd3 \
  --cert-dir="$pki/apiserver" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer="https://kubernetes.default.svc.$cluster_domain" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$service_cidr" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false
wait_for 90 "kube-apiserver /readyz" kc get --raw=/readyz --request-timeout=2s
log "kube-apiserver ready ($(elapsed))"

spawn kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false \
  --cluster-name=corral-e2e --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range="$service_cidr" --cluster-cidr="$cluster_cidr"
spawn kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false

# --- containerd ----------------------------------------------------------------------------
cd_dir="$dir/containerd"
sock="$cd_dir/containerd.sock"
mkdir -p "$cd_dir" "$dir/cni/net.d" "$dir/cni/ipam"
cat >"$dir/cni/net.d/10-corral-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "corral-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "$pod_cidr" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
cat >"$cd_dir/config.toml" <<EOF
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
# Plugins with files of their own default to /opt/containerd.
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$cd_dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # No CAP_SYS_RESOURCE: an oom_score_adj below containerd's own would fail in runc.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
start_containerd() { spawn containerd containerd --config "$cd_dir/config.toml" --log-level warn; }
start_containerd
wait_for 30 "containerd" ctr --address "$sock" version
for image in pause busybox; do
  ctr --address "$sock" -n k8s.io images import "$images/$image.tar" \
    >>"$dir/log/ctr.log" 2>&1 || die "cannot import $images/$image.tar (log/ctr.log)"
done
log "containerd ready, images imported ($(elapsed))"

# --- kubelet -------------------------------------------------------------------------------
echo "nameserver $dns_ip" >"$dir/resolv.conf"
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_name
cgroupsPerQOS: true
failCgroupV1: false
clusterDomain: $cluster_domain
clusterDNS: [$dns_ip]
resolvConf: $dir/resolv.conf
podLogsDir: $dir/pod-logs
# No CAP_SYS_RESOURCE: kubelet cannot lower its own OOM score.
oomScoreAdj: 0
failSwapOn: false
# The machine's disk may be over 90% full: evict only when it is nearly out.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
# The images are loaded locally and cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
start_kubelet() {
  spawn kubelet "$bin/kubelet" --config="$dir/kubelet.yaml" \
    --kubeconfig="$dir/kubelet.kubeconfig" --root-dir="$dir/kubelet" \
    --hostname-override="$node_name" --node-ip="$node_ip" --v=1
}
start_kubelet

# --- kube-proxy ------------------------------------------------------------------------------
cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $dir/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $cluster_cidr
hostnameOverride: $node_name
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
# Zero leaves the kernel's conntrack settings as they are (the table size is not the
# namespace's to set).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
spawn kube-proxy "$bin/kube-proxy" --config="$dir/kube-proxy.yaml"

# --- cluster DNS: CoreDNS as a process on the node's address, behind the kube-dns Service --
kc apply -f - >/dev/null <<EOF || die "cannot create the cluster DNS objects"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:coredns
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  clusterIP: $dns_ip
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: k8s-node-up.sh
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: [$node_ip]
  conditions: {ready: true}
EOF
cat >"$dir/Corefile" <<EOF
$cluster_domain:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    ready 127.0.0.1:8181
    health 127.0.0.1:8080
    kubernetes $cluster_domain in-addr.arpa ip6.arpa {
        kubeconfig $dir/coredns.kubeconfig corral-e2e
        pods insecure
        ttl 5
    }
    cache 5
}
# Nothing outside the cluster is reachable: every other name does not exist, at once.
.:53 {
    bind $node_ip
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
spawn coredns "$bin/coredns" -conf "$dir/Corefile"

node_ready() {
  [ "$(kc get node "$node_name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for 120 "node $node_name Ready" node_ready
log "node Ready ($(elapsed))"
wait_for 60 "kube-proxy healthz" innet curl -sf http://127.0.0.1:10256/healthz
wait_for 60 "CoreDNS ready" innet curl -sf http://127.0.0.1:8181/ready
wait_for 60 "the default ServiceAccount" kc get serviceaccount default -n default

cat >"$dir/env" <<EOF
export KUBECONFIG=$dir/admin.kubeconfig
export CORRAL_NODE_NETNS=/run/netns/$ns
export CONTAINERD_ADDRESS=$sock
EOF
log "up in $(elapsed): . $dir/env; nsenter --net=/run/netns/$ns kubectl get pods -A"
echo "ready dir=$dir netns=/run/netns/$ns kubeconfig=$dir/admin.kubeconfig" \
  "containerd=$sock node=$node_name node_ip=$node_ip pid=$$ up_ms=$((($(date +%s%N) - t_start) / 1000000))"

# --- restarts, on request ----------------------------------------------------------------
# SIGUSR1 restarts the node's runtime as `systemctl restart kubelet containerd` would on a
# real node (tests/common/kube_node.rs: KubeNode::restart_runtime): SIGTERM to kubelet, then
# to containerd, each waited for (SIGKILL after 30 s); then containerd and kubelet start again
# with the same configuration and state directories, through spawn: the same cgroup
# /corral-e2e/system, the holder's mount namespace, the node's network namespace. containerd's
# shims and the containers keep running, and the new containerd reconnects to the shims
# (their sockets are on the holder's /run). SIGUSR2 restarts kubelet only. Then it waits
# until the new kubelet has reported the node Ready and every pod that was Running before is
# Running again (and Ready again if it was) and synced by the new kubelet. Each request
# ends with one line on stdout:
#   restarted what=kubelet,containerd stop_ms=.. containerd_ms=.. ready_ms=.. pods_ms=..
#   restart-failed what=kubelet,containerd why=...
# The times count from the request's start. A failed restart leaves the node as it is (the
# run goes on), for the test to read the logs before it tears down.

# The pods on the node: "NAMESPACE/NAME PHASE READY" lines.
pod_states() {
  kc get pods -A --field-selector "spec.nodeName=$node_name" -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.phase} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}'
}

# The node's Ready condition: "STATUS LAST-HEARTBEAT-TIME".
node_ready_condition() {
  kc get node "$node_name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}'
}

# True when the node is Ready with a heartbeat other than $1, the one it had once kubelet
# was stopped: only the new kubelet can have posted it.
node_ready_again() {
  local now
  now="$(node_ready_condition)" || return 1
  [ "${now%% *}" = True ] && [ "${now#* }" != "${1#* }" ]
}

# True when the new kubelet has synced at least as many pods as $1 lists (pod_states lines of
# the pods Running before) and then every one of them is Running, and Ready if it was. The
# sync comes first: a pod's status in the API may not change, but each pod's first sync by
# a kubelet's pod worker counts in its metrics as a "create", and by then kubelet has set
# the status it will post. That status says not Ready for a container with a readiness probe
# until the new kubelet's first probe of it (kubelet 1.32 does that on a restart: the pod
# turns not Ready for some 40 ms here), so the pods must look right twice, 0.5 s apart.
pods_back() {
  local n synced
  n="$(grep -c . <<<"$1" || true)"
  synced="$(kc get --raw "/api/v1/nodes/$node_name/proxy/metrics" | awk '
    $1 == "kubelet_pod_worker_duration_seconds_count{operation_type=\"create\"}" { print $2 }')" ||
    return 1
  [ "${synced:-0}" -ge "$n" ] && pods_look_back "$1" && sleep 0.5 && pods_look_back "$1"
}

pods_look_back() {
  local now pod ready
  now="$(pod_states)" || return 1
  while read -r pod _ ready; do
    [ -n "$pod" ] || continue
    if [ "$ready" = True ]; then
      grep -qxF "$pod Running True" <<<"$now" || return 1
    else
      grep -q "^$pod Running" <<<"$now" || return 1
    fi
  done <<<"$1"
}

# until_ok SECONDS WHAT COMMAND...: wait_for for a restart, which fails (returns 1, why in
# $restart_why) rather than ending the run.
until_ok() {
  local timeout=$1 what=$2 deadline=$((SECONDS + $1)) name
  shift 2
  until "$@" >/dev/null 2>&1; do
    for name in "${!pids[@]}"; do
      if ! live "${pids[$name]}"; then
        restart_why="$name exited while waiting for $what (log: $dir/log/$name.log)"
        return 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      restart_why="no $what within $timeout s"
      return 1
    fi
    sleep 0.2
  done
}

# stop_component NAME: SIGTERM, waits for the process to exit (SIGKILL after 30 s), reaps it.
stop_component() {
  local name=$1 pid=${pids[$1]} deadline=$((SECONDS + 30)) killed=0
  kill -TERM "$pid" 2>/dev/null || true
  while live "$pid"; do
    if [ $SECONDS -ge $deadline ] && [ $killed = 0 ]; then
      log "$name ($pid) still running 30 s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      killed=1
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
  unset "pids[$name]"
}

# restart runtime|kubelet
restart() {
  local what names=() name i t0 ms before heartbeat
  case "$1" in
    runtime) names=(kubelet containerd) ;;
    *) names=(kubelet) ;;
  esac
  what="$(IFS=,; echo "${names[*]}")"
  since() { echo "$((($(date +%s%N) - t0) / 1000000))"; }
  t0=$(date +%s%N)
  restart_why=""
  before="$(pod_states | awk '$2 == "Running"')" || before=""
  log "restarting $what"
  for name in "${names[@]}"; do stop_component "$name"; done
  ms="stop_ms=$(since)"
  heartbeat="$(node_ready_condition)" || heartbeat=""
  for ((i = ${#names[@]} - 1; i >= 0; i--)); do
    name=${names[i]}
    printf -- '--- %s k8s-node-up: %s restarted ---\n' "$(date +%T.%3N)" "$name" \
      >>"$dir/log/$name.log"
    "start_$name"
    unset "reported[$name]"
    if [ "$name" = containerd ]; then
      until_ok 30 "containerd" ctr --address "$sock" version || break
      ms+=" containerd_ms=$(since)"
    fi
  done
  if [ -z "$restart_why" ] &&
    until_ok 120 "node $node_name Ready from the new kubelet" node_ready_again "$heartbeat"; then
    ms+=" ready_ms=$(since)"
    if until_ok 120 "the pods Running before Running again" pods_back "$before"; then
      ms+=" pods_ms=$(since)"
      log "restarted $what: $ms"
      echo "restarted what=$what $ms"
      return
    fi
  fi
  log "restarting $what failed: $restart_why"
  echo "restart-failed what=$what why=$restart_why"
}

# --- wait for the end, reporting a process that dies, restarting on request -------------
while :; do
  while [ ${#restart_queue[@]} -gt 0 ]; do
    request=${restart_queue[0]}
    restart_queue=("${restart_queue[@]:1}")
    restart "$request"
  done
  for name in "${!pids[@]}"; do
    if ! live "${pids[$name]}" && [ -z "${reported[$name]:-}" ]; then
      log "$name exited; its log: $dir/log/$name.log"
      reported[$name]=1
    fi
  done
  sleep 1 &
  wait $! || true
done
