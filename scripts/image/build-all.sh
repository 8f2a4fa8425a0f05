#!/usr/bin/env bash
# Builds the three images the chart needs on a cluster without a registry, into
# $CORRAL_IMAGES (default /var/tmp/corral-images), and prints the archives' paths, one a
# line, for `ctr -n k8s.io images import`:
#   pause.tar      registry.k8s.io/pause:3.10 (and :3.6), the pod sandbox  (pause.sh)
#   corral.tar     ghcr.io/corral-dev/corral:<appVersion>                  (corral.sh)
#   zookeeper.tar  zookeeper:3.8, the embedded server                      (zookeeper.sh)
# Idempotent: each script rebuilds its image only when what it is made of changed (the
# hash in FILE.tar.inputs, see lib.sh); FORCE=1 rebuilds all. All three from scratch: about
# 25 s plus the cargo build; up to date, about 3 s (hashing the binary, listing packages).
# Arguments go to corral.sh (e.g. --binary PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/pause.sh"
"$here/corral.sh" "$@"
"$here/zookeeper.sh"
