#!/usr/bin/env bash
# Builds the corral image without a container engine, as the Dockerfile's final stage would:
#   $CORRAL_IMAGES/corral.tar (default /var/tmp/corral-images), for ctr -n k8s.io images import.
#
# Usage: scripts/image/corral.sh [--binary PATH] [--tag NAME:TAG]
#   --binary  a corral binary to ship (default: cargo build --release --locked, with
#             CARGO_TARGET_DIR, default scripts/target-dir)
#   --tag     default ghcr.io/corral-dev/corral:<the chart's appVersion>, what the chart pulls
# Prints the archive's path. FORCE=1 rebuilds even when the inputs are unchanged.
#
# What the image is, and why: the Dockerfile's final stage is debian:bookworm-slim plus the
# binary. The agent starts the workloads' commands inside its own container, so they get that
# image's shell and tools (the examples run /bin/sh, head, tr, sleep, true). debian:*-slim is
# debootstrap's minbase: the packages of Priority "required" and apt. Here the same packages
# are copied from this machine's installed Debian 12 (scripts/image/debroot.py, docs left
# out as in slim), but apt: with a read-only root filesystem and no root, nothing could
# install packages anyway. Size: about 67 MiB of Debian plus the binary.
#
# Kept equal to the Dockerfile (tests/image.rs parses both and fails on any difference):
# the values below, the base they stand for, and the tools the examples need.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# --- what the Dockerfile's final stage says; tests/image.rs compares ---
dockerfile_base=debian:bookworm-slim
binary_path=/usr/local/bin/corral
user=65532:65532
entrypoint=/usr/local/bin/corral
# Programs the workloads (examples/) run, checked in the built image by check.sh.
tools="sh head tr sleep true cat env"
# ---

repo="$(cd "$image_lib_dir/../.." && pwd)"
binary=""
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [ -z "$tag" ]; then
  app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/corral/Chart.yaml")"
  [ -n "$app_version" ] || die "no appVersion in charts/corral/Chart.yaml"
  tag="ghcr.io/corral-dev/corral:$app_version"
fi
[ "$(dpkg-query -W -f='${Version}' base-files 2>/dev/null | cut -d. -f1)" = 12 ] \
  || die "this machine is not Debian 12 (bookworm): its packages would not match $dockerfile_base"

if [ -z "$binary" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$("$repo/scripts/target-dir")}"
  say "cargo build --release --locked (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$repo" && cargo build --release --locked --quiet)
  binary="$CARGO_TARGET_DIR/release/corral"
fi
[ -x "$binary" ] || die "$binary is not an executable"

# minbase's package set, as this machine has it installed; apt left out (see above).
packages="$(dpkg-query -W -f='${db:Status-Abbrev} ${Priority} ${Package}\n' \
  | awk '$1 == "ii" && $2 == "required" && $3 != "apt" { print $3 }' | sort)"
out="$images_dir/corral.tar"
inputs_file "$binary" "$image_lib_dir/debroot.py"
inputs_text "tag $tag"
# The packages and everything they depend on, with their versions.
# shellcheck disable=SC2086 # one word per package
inputs_text "$("$image_lib_dir/debroot.py" --list --with-deps $packages)"
inputs_done "$out" && exit 0

mkdir -p "$images_dir"
work="$(mktemp -d "$images_dir/.corral.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
# shellcheck disable=SC2086
"$image_lib_dir/debroot.py" --root "$root" --with-deps $packages >"$work/packages"
install -D -m 0755 "$binary" "$root$binary_path"
# Users and groups as base-passwd's postinst would write them (maintainer scripts do not
# run here), plus distroless' nonroot, the controller's 65532, so tools show a name for it.
install -m 0644 /usr/share/base-passwd/passwd.master "$root/etc/passwd"
install -m 0644 /usr/share/base-passwd/group.master "$root/etc/group"
echo "nonroot:x:${user%%:*}:${user##*:}:nonroot:/nonexistent:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "nonroot:x:${user##*:}:" >>"$root/etc/group"
# Check every program and library resolves inside the image, and write its ld.so.cache.
"$image_lib_dir/debroot.py" --root "$root" --ldd >/dev/null
for t in $tools; do
  [ -x "$root/usr/bin/$t" ] || [ -x "$root/bin/$t" ] || die "$t is missing from the image"
done

"$pack" --rootfs "$root" --tag "$tag" --entrypoint "$entrypoint" --user "$user" \
  --out "$out" >/dev/null
inputs_stamp "$out"
say "$(wc -l <"$work/packages") Debian packages, $(du -sm "$root" | cut -f1) MiB unpacked"
echo "$out"
