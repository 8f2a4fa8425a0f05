# shellcheck shell=bash
# Shared by scripts/k8s-apiserver.sh and scripts/k8s-node.sh (sourced, not run): builds
# Kubernetes commands from the Go module k8s.io/kubernetes into $CORRAL_K8S/bin.
#
# Why a temporary module: k8s.io/kubernetes is not meant to be imported. Its go.mod requires
# its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and replaces them with
# ./staging/src/..., which only works inside its own repository. A module that requires
# k8s.io/kubernetes and replaces each staging module with its published v0.<minor>.<patch>
# release builds the same code.
#
# The caller sets `set -euo pipefail` and defines say() and die().

k8s_version=v1.32.13
# Staging modules are published as v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
staging_version="v0.${k8s_version#v1.}"
# Staging modules whose release is missing from the Go module proxy: it answers 403 for the
# zip of k8s.io/endpointslice@v0.32.13. The previous patch release has the same API; only
# kube-controller-manager imports it.
declare -A staging_override=([k8s.io/endpointslice]=v0.32.12)

dir="${CORRAL_K8S:-/var/tmp/corral-k8s}"
bin="$dir/bin"

# The machine has 2 cores and other work runs beside this: build with at most 2.
export GOMAXPROCS="${GOMAXPROCS:-2}"
[ "$GOMAXPROCS" -le 2 ] || GOMAXPROCS=2
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

work=""
k8s_build_cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap k8s_build_cleanup EXIT

# Creates the build directory and $bin; dies without Go.
need_go() {
  command -v go >/dev/null || die "Go is needed to build $1 (https://go.dev/dl/)"
  if [ -z "$work" ]; then
    work="$(mktemp -d "${TMPDIR:-/tmp}/corral-k8s-build.XXXXXX")"
  fi
  mkdir -p "$bin"
}

# True when $bin/NAME reports the Kubernetes release ("Kubernetes v1.32.13").
k8s_ok() {
  [ "$("$bin/$1" --version 2>/dev/null || true)" = "Kubernetes $k8s_version" ]
}

# Builds the commands k8s.io/kubernetes/cmd/NAME for each NAME given into $bin/NAME, in one
# module and one `go build` (they share most packages).
build_k8s() {
  need_go "$* $k8s_version"
  local m="$work/kubernetes"
  mkdir -p "$m"
  (
    cd "$m" || exit 1
    [ -f go.mod ] || go mod init corral-kubernetes-build >/dev/null 2>&1
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
      args+=("-replace=$mod=$mod@${staging_override[$mod]:-$staging_version}")
    done
    go mod edit -require="k8s.io/kubernetes@$k8s_version" "${args[@]}"
    local pkgs=()
    for name in "$@"; do
      pkgs+=("k8s.io/kubernetes/cmd/$name")
    done
    go get "${pkgs[@]/%/@$k8s_version}" >get.log 2>&1 || { cat get.log >&2; exit 1; }
    # What the Kubernetes Makefile sets, so that --version and /version report the release.
    local minor="${k8s_version#v1.}"
    minor="${minor%%.*}"
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    rm -rf out && mkdir out
    go build -p "$GOMAXPROCS" -trimpath -ldflags "$ldflags" -o out/ "${pkgs[@]}"
    for name in "$@"; do
      mv -f "out/$name" "$bin/$name"
    done
  )
}
