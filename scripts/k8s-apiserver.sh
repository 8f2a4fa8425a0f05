#!/usr/bin/env bash
# Provides a real Kubernetes API server for the tests (tests/common/apiserver.rs), without
# a container engine or a cluster: kube-apiserver and etcd built from their Go modules into
#   $CORRAL_K8S/bin/kube-apiserver   Kubernetes v1.32.13 (k8s.io/kubernetes/cmd/kube-apiserver)
#   $CORRAL_K8S/bin/etcd             etcd 3.5.21 (go.etcd.io/etcd/server/v3)
# CORRAL_K8S defaults to /var/tmp/corral-k8s. Needs Go and a Go module proxy (or a module
# cache holding the modules); the tests also need kubectl and openssl, checked here too.
#
# Idempotent: a binary that is present and reports the right version is kept, so a second
# run only checks versions (under half a second). A missing or wrong binary is rebuilt: from
# the module cache but a cold Go build cache that took 7 minutes on 2 cores (kube-apiserver
# is most of it); with the Go build cache warm, 15 seconds.
#
# The Kubernetes build itself is in scripts/k8s-build.sh (shared with scripts/k8s-node.sh),
# which says why it goes through a temporary module. etcd's server module also has
# directory replaces, so it is built the same way rather than with `go install ...@version`.
set -euo pipefail

etcd_version=3.5.21

say() { echo "k8s-apiserver.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# shellcheck source=scripts/k8s-build.sh
. "$(dirname "${BASH_SOURCE[0]}")/k8s-build.sh"

for tool in kubectl openssl; do
  command -v "$tool" >/dev/null || die "$tool is needed by the tests but is not on PATH"
done

etcd_ok() {
  [ "$("$bin/etcd" --version 2>/dev/null | head -n1 || true)" = "etcd Version: $etcd_version" ]
}

build_etcd() {
  need_go "etcd $etcd_version"
  say "building etcd $etcd_version (about a minute the first time)"
  local m="$work/etcd"
  mkdir -p "$m"
  (
    cd "$m"
    go mod init corral-etcd-build >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v$etcd_version" \
      "go.etcd.io/etcd/api/v3@v$etcd_version" >get.log 2>&1 ||
      { cat get.log >&2; exit 1; }
    go build -p "$GOMAXPROCS" -trimpath -ldflags "-s -w" -o "$bin/etcd.new" \
      go.etcd.io/etcd/server/v3
  )
  mv -f "$bin/etcd.new" "$bin/etcd"
}

etcd_ok || build_etcd
etcd_ok || die "$bin/etcd does not report etcd $etcd_version after building it"
if ! k8s_ok kube-apiserver; then
  say "building kube-apiserver $k8s_version (about 6 minutes the first time)"
  build_k8s kube-apiserver
fi
k8s_ok kube-apiserver || die "$bin/kube-apiserver does not report $k8s_version after building it"

echo "$("$bin/kube-apiserver" --version) ($bin/kube-apiserver)"
echo "$("$bin/etcd" --version | head -n1) ($bin/etcd)"
echo "kubectl $(kubectl version --client -o json 2>/dev/null |
  sed -n 's/^[[:space:]]*"gitVersion": "\(.*\)",*$/\1/p' | head -n1)"
echo "$(openssl version)"
