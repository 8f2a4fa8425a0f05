#!/usr/bin/env bash
# Provides what a real one-node Kubernetes cluster needs on this machine (started and torn
# down by scripts/k8s-node-up.sh and tests/common/kube_node.rs), without a registry:
#   - everything scripts/k8s-apiserver.sh provides (kube-apiserver, etcd; kubectl, openssl);
#   - $CORRAL_K8S/bin/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy}: Kubernetes
#     v1.32.13 from the Go module k8s.io/kubernetes (scripts/k8s-build.sh says how);
#   - $CORRAL_K8S/bin/coredns: CoreDNS 1.11.3 (the release Kubernetes 1.32 ships) with only
#     the plugins the cluster DNS uses (scripts/k8s-node/coredns.go), run as a plain process;
#   - $CORRAL_K8S/images/pause.tar: the sandbox image corral.local/pause:1, a static Go
#     program (scripts/k8s-node/pause.go) packed by scripts/k8s-node/pack-image.py;
#   - $CORRAL_K8S/images/busybox.tar: corral.local/busybox:1 from Debian's busybox-static,
#     for tests that need a shell, nslookup, wget or an HTTP server in a pod;
#   - Debian packages, installed only when missing: containerd (1.6), runc (1.1),
#     containernetworking-plugins (bridge, host-local, portmap, loopback), iptables (for
#     kube-proxy and the bridge plugin's masquerading), conntrack (kube-proxy clears UDP
#     flows with it), socat (kubectl port-forward), busybox-static.
# CORRAL_K8S defaults to /var/tmp/corral-k8s. Needs Go and the Go module proxy the first
# time, python3, and apt-get (as root) when a package is missing.
#
# Idempotent: what is present and reports the right version is kept, so a second run only
# checks versions (about 2 s, k8s-apiserver.sh's included). The first run on 2 cores, with
# the Go module cache warm: kubelet, kube-controller-manager, kube-scheduler and kube-proxy
# in one `go build`, 2 to 3.5 minutes after kube-apiserver's build (they share most of its
# packages); CoreDNS 1.5 to 2 minutes; the images and the packages seconds. From an empty
# Go build cache, this script and k8s-apiserver.sh took 15 minutes on a busy machine.
set -euo pipefail

coredns_version=1.11.3
# Plugins the cluster's Corefile (scripts/k8s-node-up.sh) needs; the build must list them.
coredns_plugins=(bind cache errors health kubernetes log ready template)
pause_version="corral-pause 1"
# Bumped when what goes into the images changes, so that they are packed again.
images_version=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { echo "k8s-node.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# kube-apiserver and etcd, and the check for kubectl and openssl.
"$here/k8s-apiserver.sh" >/dev/null

# shellcheck source=scripts/k8s-build.sh
. "$here/k8s-build.sh"

command -v python3 >/dev/null || die "python3 is needed to pack the node's images"

# Debian packages, only when missing (apt-get update first: a fresh machine has no lists).
packages=(containerd runc containernetworking-plugins iptables conntrack socat busybox-static)
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

pause_ok() { [ "$("$bin/pause" --version 2>/dev/null || true)" = "$pause_version" ]; }
build_pause() {
  need_go "the pause program"
  local m="$work/pause"
  mkdir -p "$m"
  cp "$here/k8s-node/pause.go" "$m/main.go"
  (
    cd "$m"
    go mod init corral-pause >/dev/null 2>&1
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/pause.new" .
  )
  mv -f "$bin/pause.new" "$bin/pause"
}
pause_ok || build_pause
pause_ok || die "$bin/pause does not report $pause_version"

# The images, packed again when their inputs change (the stamp names them).
images="$dir/images"
busybox=/bin/busybox
stamp="images $images_version; $pause_version; busybox-static $(dpkg-query -W -f='${Version}' busybox-static)"
if [ "$(cat "$images/stamp" 2>/dev/null || true)" != "$stamp" ]; then
  say "packing the pause and busybox images"
  mkdir -p "$images"
  python3 "$here/k8s-node/pack-image.py" "$images/pause.tar.new" corral.local/pause:1 \
    --entrypoint '["/pause"]' --file "$bin/pause:/pause:0755"
  # busybox: its applets as symlinks in /bin, and the directories a pod's files land in.
  args=(--entrypoint 'null' --cmd '["sh"]' --file "$busybox:/bin/busybox:0755")
  for d in /bin:0755 /etc:0755 /tmp:1777 /root:0700 /var:0755 /proc:0555 /sys:0555 /dev:0755; do
    args+=(--dir "$d")
  done
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || args+=(--symlink "/bin/$applet:busybox")
  done
  python3 "$here/k8s-node/pack-image.py" "$images/busybox.tar.new" corral.local/busybox:1 \
    "${args[@]}"
  mv -f "$images/pause.tar.new" "$images/pause.tar"
  mv -f "$images/busybox.tar.new" "$images/busybox.tar"
  echo "$stamp" >"$images/stamp"
fi

for c in "${node_cmds[@]}"; do
  echo "$("$bin/$c" --version) ($bin/$c)"
done
echo "$("$bin/coredns" -version | head -n1) ($bin/coredns)"
echo "$("$bin/pause" --version) ($bin/pause); images in $images: $(cd "$images" && echo *.tar)"
echo "containerd $(dpkg-query -W -f='${Version}' containerd), runc $(dpkg-query -W -f='${Version}' runc)"
