#!/usr/bin/env bash
# Builds a busybox image from this machine's Debian busybox-static, into
#   $CORRAL_IMAGES/busybox.tar (default /var/tmp/corral-images), tagged busybox:1.35 by
#   default, BUSYBOX_TAG otherwise (docker.io/library/busybox:1.35 once containerd has
#   normalised it), for tests that need a shell, nslookup, wget or an HTTP server in a pod
#   (tests/kube_node.rs). Why: there is no registry to pull docker.io/library/busybox from.
#
# Usage: scripts/image/busybox.sh   (prints the archive's path; FORCE=1 rebuilds). Under a
#   second; the archive is about 2 MiB.
#
# What is inside: the static /bin/busybox, every applet it lists as a symlink to it in /bin,
# and the directories a pod's files land in (/etc, /tmp, /root, /var; /proc, /sys and /dev
# for the runtime's mounts). No ENTRYPOINT, CMD sh, run as root: as the official image.
# Idempotent: rebuilt only when busybox-static, these scripts or the tag change (lib.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tag="${BUSYBOX_TAG:-busybox:1.35}"
busybox=/bin/busybox
out="$images_dir/busybox.tar"

[ -x "$busybox" ] || die "$busybox is missing: apt-get install busybox-static"
inputs_text "tag $tag"
inputs_debs busybox-static
inputs_file "$busybox"
inputs_done "$out" && exit 0

mkdir -p "$images_dir"
work="$(mktemp -d "$images_dir/.busybox.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
# The modes are the image's: pack.py keeps them (and sets every owner to root).
install -d -m 0755 "$root" "$root"/{bin,etc,var,dev}
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$root/root"
install -d -m 0555 "$root/proc" "$root/sys"
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

"$pack" --rootfs "$root" --tag "$tag" --cmd sh --out "$out" >/dev/null
inputs_stamp "$out"
echo "$out"
