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
# Why a temporary module: k8s.io/kubernetes is not meant to be imported. Its go.mod requires
# its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and replaces them with
# ./staging/src/..., which only works inside its own repository. A module that requires
# k8s.io/kubernetes and replaces each staging module with its published v0.<minor>.<patch>
# release builds the same code. etcd's server module also has directory replaces, so it is
# built the same way rather than with `go install ...@version`.
set -euo pipefail

k8s_version=v1.32.13
etcd_version=3.5.21
# Staging modules are published as v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
staging_version="v0.${k8s_version#v1.}"

dir="${CORRAL_K8S:-/var/tmp/corral-k8s}"
bin="$dir/bin"

# The machine has 2 cores and other work runs beside this: build with at most 2.
export GOMAXPROCS="${GOMAXPROCS:-2}"
[ "$GOMAXPROCS" -le 2 ] || GOMAXPROCS=2
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

say() { echo "k8s-apiserver.sh: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in kubectl openssl; do
  command -v "$tool" >/dev/null || die "$tool is needed by the tests but is not on PATH"
done

apiserver_ok() {
  [ "$("$bin/kube-apiserver" --version 2>/dev/null || true)" = "Kubernetes $k8s_version" ]
}
etcd_ok() {
  [ "$("$bin/etcd" --version 2>/dev/null | head -n1 || true)" = "etcd Version: $etcd_version" ]
}

work=""
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

need_go() {
  command -v go >/dev/null || die "Go is needed to build $1 (https://go.dev/dl/)"
  if [ -z "$work" ]; then
    work="$(mktemp -d "${TMPDIR:-/tmp}/corral-k8s-build.XXXXXX")"
  fi
  mkdir -p "$bin"
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

build_apiserver() {
  need_go "kube-apiserver $k8s_version"
  say "building kube-apiserver $k8s_version (about 6 minutes the first time)"
  local m="$work/kube-apiserver"
  mkdir -p "$m"
  (
    cd "$m"
    go mod init corral-kube-apiserver-build >/dev/null 2>&1
    # k8s.io/kubernetes's own go.mod names its staging modules; replace each with its release.
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$k8s_version" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [ -f "$gomod" ] || die "cannot download the go.mod of k8s.io/kubernetes@$k8s_version"
    local staging
    staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$gomod")"
    [ -n "$staging" ] || die "no staging modules found in $gomod"
    local args=()
    for mod in $staging; do
      args+=("-replace=$mod=$mod@$staging_version")
    done
    go mod edit -require="k8s.io/kubernetes@$k8s_version" "${args[@]}"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$k8s_version" >get.log 2>&1 ||
      { cat get.log >&2; exit 1; }
    # What the Kubernetes Makefile sets, so that --version and /version report the release.
    local minor="${k8s_version#v1.}"
    minor="${minor%%.*}"
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    go build -p "$GOMAXPROCS" -trimpath -ldflags "$ldflags" -o "$bin/kube-apiserver.new" \
      k8s.io/kubernetes/cmd/kube-apiserver
  )
  mv -f "$bin/kube-apiserver.new" "$bin/kube-apiserver"
}

etcd_ok || build_etcd
etcd_ok || die "$bin/etcd does not report etcd $etcd_version after building it"
apiserver_ok || build_apiserver
apiserver_ok || die "$bin/kube-apiserver does not report $k8s_version after building it"

echo "$("$bin/kube-apiserver" --version) ($bin/kube-apiserver)"
echo "$("$bin/etcd" --version | head -n1) ($bin/etcd)"
echo "kubectl $(kubectl version --client -o json 2>/dev/null |
  sed -n 's/^[[:space:]]*"gitVersion": "\(.*\)",*$/\1/p' | head -n1)"
echo "$(openssl version)"
