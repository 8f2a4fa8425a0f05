#!/usr/bin/env bash
# Builds kstatus-check (tests/kstatus/main.go: sigs.k8s.io/cli-utils' kstatus, as Flux and
# Helm's --wait use it) into /var/tmp/corral-tools/bin for tests/k8s_operator.rs. Rebuilt
# only when its sources change; about 40 s the first time, from the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")"
tools="${CORRAL_TOOLS:-/var/tmp/corral-tools}"
mkdir -p "$tools/bin"
stamp="$tools/bin/.kstatus-check.sum"
sum="$(cat go.mod go.sum main.go | sha256sum | cut -d' ' -f1)"
if [ ! -x "$tools/bin/kstatus-check" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$sum" ]; then
  command -v go >/dev/null || { echo "build.sh: Go is needed to build kstatus-check" >&2; exit 1; }
  echo "tests/kstatus/build.sh: building kstatus-check" >&2
  GOMAXPROCS=2 go build -o "$tools/bin/kstatus-check" .
  echo "$sum" >"$stamp"
fi
echo "kstatus-check: sigs.k8s.io/cli-utils $(awk '/sigs.k8s.io\/cli-utils/ {print $2; exit}' go.mod)"
