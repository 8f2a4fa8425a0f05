#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image from scripts/image/pause.c, into
#   $CORRAL_IMAGES/pause.tar (default /var/tmp/corral-images), for ctr -n k8s.io images import.
# Why: containerd starts every pod with its sandbox image, and there is no registry to pull
# registry.k8s.io/pause from. The image holds one static binary, /pause, run as 65535:65535
# as the upstream image does.
#
# Tagged with both names containerd may ask for, so its default configuration works as is:
#   registry.k8s.io/pause:3.10  kubelet 1.32's default (--pod-infra-container-image)
#   registry.k8s.io/pause:3.6   containerd 1.6's default sandbox_image
# PAUSE_TAGS (space-separated) replaces them.
#
# Usage: scripts/image/pause.sh   (prints the archive's path; FORCE=1 rebuilds)
# Needs gcc and glibc's static libc (libc6-dev); takes about a second. Idempotent: rebuilt
# only when pause.c, these scripts or gcc/libc6-dev change (see lib.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tags="${PAUSE_TAGS:-registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.6}"
src="$image_lib_dir/pause.c"
out="$images_dir/pause.tar"

command -v gcc >/dev/null || die "gcc is needed (apt-get install gcc libc6-dev)"
inputs_file "$src"
inputs_text "tags $tags"
inputs_debs gcc libc6-dev
inputs_done "$out" && exit 0

mkdir -p "$images_dir"
work="$(mktemp -d "$images_dir/.pause.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir "$work/rootfs"
# Static, so the image needs no libc; stripped; no build id, so the binary depends only on
# the source and the compiler.
gcc -static -Os -s -Wall -Wextra -Werror -Wl,--build-id=none -o "$work/rootfs/pause" "$src"
tag_args=()
for t in $tags; do tag_args+=(--tag "$t"); done
"$pack" --rootfs "$work/rootfs" "${tag_args[@]}" --entrypoint /pause --user 65535:65535 \
  --out "$out" >/dev/null
inputs_stamp "$out"
echo "$out"
