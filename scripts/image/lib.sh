# shellcheck shell=bash
# Shared by the image scripts (sourced, not run): output place, messages, and the input hash
# that lets a second build of unchanged inputs skip the work.
#
# Each script lists what its image is made of (files, Debian package versions, options) with
# inputs_file / inputs_text; inputs_done then compares the hash of that list with the one
# stored beside the archive, FILE.tar.inputs. Same hash and the archive present: nothing is
# rebuilt. The hash covers this file, pack.py and the calling script too, so editing how an
# image is made rebuilds it.

# shellcheck disable=SC2034 # used by the scripts that source this
images_dir="${CORRAL_IMAGES:-/var/tmp/corral-images}"
image_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pack="$image_lib_dir/pack.py"
# Fixed, so identical inputs give identical digests; the images' files all carry it.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"

say() { echo "$(basename "$0"): $*" >&2; }
die() { say "$*"; exit 1; }

_inputs=""
inputs_text() { _inputs+="text $*"$'\n'; }
inputs_file() {
  local f
  for f in "$@"; do
    [ -e "$f" ] || die "input $f is missing"
    # By name and content: where the file lies does not change the image.
    _inputs+="file $(basename "$f") $(sha256sum <"$f" | cut -d' ' -f1)"$'\n'
  done
}
# The version of each Debian package, e.g. inputs_debs zookeeper openjdk-17-jre-headless.
inputs_debs() {
  local p
  for p in "$@"; do
    _inputs+="deb $p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo missing)"$'\n'
  done
}

# inputs_done ARCHIVE: 0 (and prints ARCHIVE) when ARCHIVE is up to date, else 1; sets
# inputs_hash for inputs_stamp.
inputs_done() {
  local out="$1"
  inputs_file "$image_lib_dir/lib.sh" "$pack" "$0"
  inputs_hash="$(printf '%s' "$_inputs" | sha256sum | cut -d' ' -f1)"
  if [ -z "${FORCE:-}" ] && [ -f "$out" ] && [ -f "$out.inputs" ] \
    && [ "$(head -n1 "$out.inputs")" = "$inputs_hash" ]; then
    say "$out is up to date (inputs $inputs_hash)"
    echo "$out"
    return 0
  fi
  return 1
}
# inputs_stamp ARCHIVE: record what ARCHIVE was built from (the hash, then the list).
inputs_stamp() {
  { echo "$inputs_hash"; printf '%s' "$_inputs"; } >"$1.inputs"
}
