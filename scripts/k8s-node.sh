#!/usr/bin/env bash
# Provides what a real one-node Kubernetes cluster needs on this machine (started and torn
# down by scripts/k8s-node-up.sh and tests/common/kube_node.rs), and what the chart's
# end-to-end tests on it (tests/chart_node.rs) need, without a registry:
#   - everything scripts/k8s-apiserver.sh provides (kube-apiserver, etcd; kubectl, openssl);
#   - $CORRAL_K8S/bin/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy}: Kubernetes
#     v1.32.13 from the Go module k8s.io/kubernetes (scripts/k8s-build.sh says how);
#   - $CORRAL_K8S/bin/coredns: CoreDNS 1.11.3 (the release Kubernetes 1.32 ships) with only
#     the plugins the cluster DNS uses (scripts/k8s-node/coredns.go), run as a plain process;
#   - $CORRAL_K8S/images/pause.tar: the sandbox image registry.k8s.io/pause:3.10 (and :3.6),
#     a static C program (scripts/image/pause.sh);
#   - $CORRAL_K8S/images/busybox.tar: busybox:1.35 from Debian's busybox-static
#     (scripts/image/busybox.sh), for tests that need a shell, nslookup, wget or an HTTP
#     server in a pod;
#   - $CORRAL_IMAGES/zookeeper.tar (default /var/tmp/corral-images): the chart's embedded
#     ZooKeeper, zookeeper:3.8 (scripts/image/zookeeper.sh), which tests/chart_node.rs loads
#     (its own call of zookeeper.sh then only finds it up to date);
#   - Debian packages, installed only when missing: containerd (1.6), runc (1.1),
#     containernetworking-plugins (bridge, host-local, portmap, loopback), iptables (for
#     kube-proxy and the bridge plugin's masquerading), conntrack (kube-proxy clears UDP
#     flows with it), socat (kubectl port-forward); for the images python3 (pack.py), gcc
#     and libc6-dev (pause), busybox-static, zookeeper, libslf4j-java, libservlet-api-java
#     and openjdk-17-jdk-headless (jlink and the jmods); binutils (tests/chart_node.rs
#     strips corral's debug information with objcopy).
# CORRAL_K8S defaults to /var/tmp/corral-k8s. Needs Go and the Go module proxy the first
# time, and apt-get (as root) when a package is missing.
#
# Idempotent: what is present and reports the right version is kept, and each image is
# rebuilt only when what it is made of changed (scripts/image/lib.sh), so a second run only
# checks versions and hashes inputs (about 2 s, k8s-apiserver.sh's included). The first run
# on 2 cores, with the Go module cache warm: kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy in one `go build`, 2 to 3.5 minutes after kube-apiserver's
# build (they share most of its packages); CoreDNS 1.5 to 2 minutes; the pause and busybox
# images a second each, ZooKeeper's about 15 s; the packages, when missing, a minute or
# two (the JDK is most of it). From an empty Go build cache, this script and
# k8s-apiserver.sh took 15 minutes on a busy machine.
set -euo pipefail

coredns_version=1.11.3
# Plugins the cluster's Corefile (scripts/k8s-node-up.sh) needs; the build must list them.
coredns_plugins=(bind cache errors health kubernetes log ready template)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { echo "k8s-node.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# kube-apiserver and etcd, and the check for kubectl and openssl.
"$here/k8s-apiserver.sh" >/dev/null

# shellcheck source=scripts/k8s-build.sh
. "$here/k8s-build.sh"

# Debian packages, only when missing (apt-get update first: a fresh machine has no lists).
packages=(containerd runc containernetworking-plugins iptables conntrack socat
  python3 gcc libc6-dev busybox-static zookeeper libslf4j-java libservlet-api-java
  openjdk-17-jdk-headless binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x /usr/lib/cni/bridge ] || die "no CNI bridge plugin in /usr/lib/cni"

node_cmds=(kubelet kube-controller-manager kube-scheduler kube-proxy)
wanted=()
for c in "${node_cmds[@]}"; do
  k8s_ok "$c" || wanted+=("$c")
done
if [ ${#wanted[@]} -gt 0 ]; then
  say "building ${wanted[*]} $k8s_version (2 to 8 minutes the first time)"
  build_k8s "${wanted[@]}"
fi
for c in "${node_cmds[@]}"; do
  k8s_ok "$c" || die "$bin/$c does not report $k8s_version after building it"
done

coredns_ok() {
  local plugins
  [ "$("$bin/coredns" -version 2>/dev/null | head -n1 || true)" = "CoreDNS-$coredns_version" ] ||
    return 1
  plugins="$("$bin/coredns" -plugins 2>/dev/null || true)"
  for p in "${coredns_plugins[@]}"; do
    grep -qx "  dns.$p" <<<"$plugins" || return 1
  done
}
build_coredns() {
  need_go "CoreDNS $coredns_version"
  say "building CoreDNS $coredns_version (about 2 minutes the first time)"
  local m="$work/coredns"
  mkdir -p "$m"
  cp "$here/k8s-node/coredns.go" "$m/main.go"
  (
    cd "$m"
    go mod init corral-coredns-build >/dev/null 2>&1
    go get "github.com/coredns/coredns@v$coredns_version" >get.log 2>&1 ||
      { cat get.log >&2; exit 1; }
    go build -p "$GOMAXPROCS" -trimpath -ldflags "-s -w" -o "$bin/coredns.new" .
  )
  mv -f "$bin/coredns.new" "$bin/coredns"
}
coredns_ok || build_coredns
coredns_ok || die "$bin/coredns is not CoreDNS $coredns_version with ${coredns_plugins[*]}"

# The node's images, with scripts/image/ (each rebuilds its image only when what it is made
# of changed, see scripts/image/lib.sh): the pod sandbox and busybox into $dir/images, where
# scripts/k8s-node-up.sh imports them from; ZooKeeper into $CORRAL_IMAGES (default
# /var/tmp/corral-images), where tests/chart_node.rs looks for it.
images="$dir/images"
# The packer these replaced (k8s-node/pack-image.py, before the images' tags changed) left
# a stamp; where it is, that packer may have written pause.tar and busybox.tar after the
# image scripts recorded their inputs (a checkout of an older commit sharing CORRAL_K8S), so
# the image scripts must not trust their records.
if [ -e "$images/stamp" ]; then
  rm -f "$images/stamp" "$images/pause.tar.inputs" "$images/busybox.tar.inputs" "$bin/pause"
fi
CORRAL_IMAGES="$images" "$here/image/pause.sh" >/dev/null
CORRAL_IMAGES="$images" "$here/image/busybox.sh" >/dev/null
zookeeper="$("$here/image/zookeeper.sh")"

for c in "${node_cmds[@]}"; do
  echo "$("$bin/$c" --version) ($bin/$c)"
done
echo "$("$bin/coredns" -version | head -n1) ($bin/coredns)"
echo "images in $images: $(cd "$images" && echo *.tar); $zookeeper"
echo "containerd $(dpkg-query -W -f='${Version}' containerd), runc $(dpkg-query -W -f='${Version}' runc)"
