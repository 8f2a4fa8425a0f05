#!/usr/bin/env bash
# Installs the tools the chart tests (tests/chart.rs) need, into /var/tmp/corral-tools:
#   bin/helm   Helm, built from its Go module (the registries reached here serve no binaries)
#   bin/promtool  Prometheus' promtool, built from its Go module, for the rules and the metrics
#              checks (tests/observability.rs)
#   venv/      kubernetes-validate, which checks objects against Kubernetes' OpenAPI
#              schemas offline (the schemas ship inside the package)
# Idempotent: a second run only checks the versions (well under a second).
set -euo pipefail

tools="${CORRAL_TOOLS:-/var/tmp/corral-tools}"
helm_version=v3.22.0
kv_version=1.37.0
# Prometheus 3.x is published as Go module versions v0.3xx.y (3.16.0 is v0.316.0).
promtool_version=3.16.0
promtool_module=v0.316.0

# The machine has 2 cores and other work runs beside this: build with at most 2.
export GOMAXPROCS="${GOMAXPROCS:-2}"
[ "$GOMAXPROCS" -le 2 ] || GOMAXPROCS=2

mkdir -p "$tools/bin"

if [ "$("$tools/bin/helm" version --template '{{.Version}}' 2>/dev/null || true)" != "$helm_version" ]; then
  command -v go >/dev/null || { echo "setup.sh: Go is needed to build Helm" >&2; exit 1; }
  echo "setup.sh: building helm $helm_version (a few minutes the first time)" >&2
  # Helm's version string is normally set by its Makefile; set it the same way so the
  # check above recognises the installed binary.
  GOBIN="$tools/bin" GOFLAGS=-mod=mod go install -p "$GOMAXPROCS" \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
    "helm.sh/helm/v3/cmd/helm@$helm_version"
fi

# promtool prints "promtool, version X (branch: ..."; its version is set the way Prometheus'
# own build sets it, so the check recognises the installed binary.
promtool_installed() {
  "$tools/bin/promtool" --version 2>/dev/null | sed -n 's/^promtool, version \([^ ]*\) .*/\1/p'
}
if [ "$(promtool_installed || true)" != "$promtool_version" ]; then
  command -v go >/dev/null || { echo "setup.sh: Go is needed to build promtool" >&2; exit 1; }
  echo "setup.sh: building promtool $promtool_version (a few minutes the first time)" >&2
  GOBIN="$tools/bin" GOFLAGS=-mod=mod go install -p "$GOMAXPROCS" \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$promtool_version" \
    "github.com/prometheus/prometheus/cmd/promtool@$promtool_module"
fi

if [ "$("$tools/venv/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$kv_version" ]; then
  echo "setup.sh: installing kubernetes-validate $kv_version" >&2
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet "kubernetes-validate==$kv_version"
fi

"$tools/bin/helm" version --template 'helm {{.Version}}{{"\n"}}'
echo "promtool $(promtool_installed)"
echo "kubernetes-validate $("$tools/venv/bin/kubernetes-validate" --version)"
