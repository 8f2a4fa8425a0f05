#!/usr/bin/env bash
# Runs tests/cgroup_v2.rs on a real cgroup v2 kernel: Debian's cloud kernel booted under
# qemu with a busybox initramfs that holds the test binary and corral at their host paths.
# Each phase below boots a fresh VM, lays out the cgroup hierarchy its way, runs its tests
# and powers off; the result comes back over the serial console between markers.
#
#   scripts/v2-vm.sh [PHASE...]      every phase, or the ones named; run as root
#
# CARGO_TARGET_DIR   build cache (default: scripts/target-dir)
# CORRAL_VM_CACHE    kernel and busybox, downloaded once (default /var/tmp/corral-vm)
# CORRAL_VM_ACCEL    tcg (default), or kvm where nested KVM works (on the CI host the
#                    guest hangs before printing anything)
# CORRAL_VM_TIMEOUT  seconds a phase may take, boot included (default 600)
#
# scripts/v2-measure.sh sources this file for its functions.
set -euo pipefail

# ---- Phases -------------------------------------------------------------------------------
# One line per phase: its name; the tests it runs, an extended regular expression over the
# test names of tests/cgroup_v2.rs (a leading ! takes the names it does not match); and
# libtest's arguments. The guest's init runs the phase's set-up, guest_setup_<name> below
# (dashes as underscores), before the tests. To add a phase, add a line and a set-up.
PHASES=(
  # name            tests                              libtest arguments
  "systemd-layout   !^(bare|delegated|pod)_            --test-threads=1"
  "bare             ^bare_                             --test-threads=1"
  "delegated        ^delegated_                        --test-threads=1"
  "pod              ^pod_                              --test-threads=1"
)

# Each phase's set-up: busybox shell run by the guest's init with cgroup2 mounted on
# /sys/fs/cgroup (nsdelegate) and nothing else done to it. It runs with `set -e` in a
# subshell, where $$ is still init's PID (1): the tests are init's children and start in
# whatever group init is in.
guest_setup_systemd_layout() {
  cat <<'EOF'
# As systemd does: init in a leaf of its own, every controller corral uses enabled for the
# root's children.
mkdir /sys/fs/cgroup/init.scope
echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs
echo '+cpu +memory +pids +io' > /sys/fs/cgroup/cgroup.subtree_control
EOF
}

# A container's or another init's layout: nothing enabled in the top group, and init in it.
guest_setup_bare() {
  cat <<'EOF'
: nothing to do
EOF
}

# A systemd host: the systemd layout, /run/systemd/system (how corral tells a systemd host,
# as sd_booted() does), and system.slice handing the controllers on. Each test makes its
# unit's group and marks it delegated (trusted.delegate), as systemd does for Delegate=yes.
guest_setup_delegated() {
  guest_setup_systemd_layout
  cat <<'EOF'
mkdir -p /run/systemd/system
mkdir /sys/fs/cgroup/system.slice
echo '+cpu +memory +pids +io' > /sys/fs/cgroup/system.slice/cgroup.subtree_control
EOF
}

# A Kubernetes node: the systemd layout; each test makes its kubepods-like groups and the
# pod's private cgroup namespace itself.
guest_setup_pod() {
  guest_setup_systemd_layout
}

# ---- Machinery ----------------------------------------------------------------------------
CACHE="${CORRAL_VM_CACHE:-/var/tmp/corral-vm}"
ACCEL="${CORRAL_VM_ACCEL:-tcg}"
PHASE_TIMEOUT="${CORRAL_VM_TIMEOUT:-600}"
KERNEL_META=linux-image-cloud-amd64
VM_CPUS=2
VM_MEMORY=2048

log() { printf '[v2-vm %6ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# The temporary directory of this run, and the qemu it started, go when the script ends,
# however it ends.
WORK=""
QEMU_PIDFILE=""
cleanup() {
  if [ -n "$QEMU_PIDFILE" ] && [ -s "$QEMU_PIDFILE" ]; then
    kill -KILL "$(cat "$QEMU_PIDFILE")" 2>/dev/null || true
  fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
make_workdir() {
  WORK="$(mktemp -d /tmp/corral-vm.XXXXXX)"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Installs qemu when it is missing.
ensure_qemu() {
  command -v qemu-system-x86_64 >/dev/null && return
  log "installing qemu-system-x86"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
}

# The candidate version of a package, from apt's lists (updated once when it knows none).
candidate() {
  local version
  version="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    apt-get update -qq >&2
    version="$(apt-cache policy "$1" | awk '/Candidate:/ {print $2}')"
  fi
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then die "apt knows no package $1"; fi
  echo "$version"
}

# Unpacks package $1 at version $2 into $CACHE/$1_$2 once; prints that directory.
cached_package() {
  local pkg="$1" version="$2" dir tmp
  dir="$CACHE/${pkg}_${version//:/_}"
  if [ ! -d "$dir" ]; then
    log "downloading $pkg $version into $CACHE"
    tmp="$(mktemp -d "$CACHE/.download.XXXXXX")"
    if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$version" >&2); then
      apt-get update -qq >&2
      (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$version" >&2)
    fi
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    mv "$tmp/root" "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir"
}

# Sets KERNEL and BUSYBOX: the newest cloud kernel and busybox-static apt offers, cached
# (the version check is apt's candidate against the cached directory's name).
vm_assets() {
  mkdir -p "$CACHE"
  local kernel_pkg kernel_dir busybox_dir
  (
    # One download at a time when runs overlap.
    flock 9
    kernel_pkg="$(apt-cache depends "$KERNEL_META" 2>/dev/null \
      | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$kernel_pkg" ]; then
      apt-get update -qq >&2
      kernel_pkg="$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    [ -n "$kernel_pkg" ] || die "cannot resolve $KERNEL_META to a kernel package"
    kernel_dir="$(cached_package "$kernel_pkg" "$(candidate "$kernel_pkg")")"
    busybox_dir="$(cached_package busybox-static "$(candidate busybox-static)")"
    printf '%s\n%s\n' "$(ls "$kernel_dir"/boot/vmlinuz-*)" "$busybox_dir/bin/busybox" \
      >"$WORK/assets"
  ) 9>"$CACHE/.lock"
  { read -r KERNEL; read -r BUSYBOX; } <"$WORK/assets"
  if [ ! -f "$KERNEL" ] || [ ! -x "$BUSYBOX" ]; then die "kernel or busybox missing in $CACHE"; fi
}

# The executable of test or bench target $2 (kind $1: test or bench) from cargo's JSON
# messages on stdin.
executable_of() {
  python3 -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
found = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m.get("executable")
         and m["target"]["name"] == name and kind in m["target"]["kind"]]
if not found:
    sys.exit(f"cargo built no {kind} target {name}")
print(found[-1])' "$1" "$2"
}

# Copies file $1 into the initramfs tree at its own absolute path (at $2 when given), with
# the shared libraries it links; debug information is stripped to keep the image small.
add_file() {
  local src="$1" dest="${2:-$1}" lib
  mkdir -p "$WORK/root$(dirname "$dest")"
  if ! objcopy --strip-debug "$src" "$WORK/root$dest" 2>/dev/null; then
    cp -L "$src" "$WORK/root$dest"
  fi
  for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -e "$WORK/root$lib" ] && continue
    mkdir -p "$WORK/root$(dirname "$lib")"
    cp -L "$lib" "$WORK/root$lib"
  done
}

# Builds $WORK/initramfs.gz: busybox, the given files at their paths, the repository's
# examples/ at its path, users, and an init that runs /phases/<phase>.sh (chosen by the
# kernel argument corral_phase) between markers and powers off.
#   make_initramfs FILE...            each FILE is copied with its libraries
# Phase scripts must be in $WORK/root/phases before it is called.
make_initramfs() {
  local repo file
  repo="$(pwd -P)"
  mkdir -p "$WORK"/root/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,var/tmp}
  cp "$BUSYBOX" "$WORK/root/bin/busybox"
  for file in "$@"; do add_file "$file"; done
  mkdir -p "$WORK/root$repo"
  cp -r "$repo/examples" "$WORK/root$repo/"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$WORK/root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$WORK/root/etc/group"
  write_init "$repo" >"$WORK/root/init"
  chmod +x "$WORK/root/init"
  (cd "$WORK/root" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 \
    >"$WORK/initramfs.gz"
}

MARK="corral-vm-$$-$RANDOM$RANDOM"

# The guest's init. Kernel arguments it does not know reach init as environment variables:
# corral_phase names the phase.
write_init() {
  cat <<EOF
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
hostname corral-vm
cd '$1'
centis() { read -r up _ </proc/uptime; echo "\${up%.*}\${up#*.}"; }
seconds() { printf '%d.%02d' \$((\$1 / 100)) \$((\$1 % 100)); }
booted=\$(centis)
echo "@@$MARK begin phase=\$corral_phase"
if ( set -e; . /phases/\$corral_phase.setup ); then
  started=\$(centis)
  # Each line of output with the seconds since the tests started.
  { sh /phases/\$corral_phase.sh 2>&1; echo \$? >/tmp/rc; } | while IFS= read -r line; do
    printf '[%7ss] %s\n' "\$(seconds \$((\$(centis) - started)))" "\$line"
  done
  rc=\$(cat /tmp/rc)
  took=\$(seconds \$((\$(centis) - started)))
else
  rc=setup-failed
  took=0
fi
echo "@@$MARK end"
if [ "\$rc" != 0 ]; then dmesg; fi
echo "@@$MARK result phase=\$corral_phase rc=\$rc boot=\$(seconds \$booted) tests=\$took"
# Let the serial line drain before the power goes.
sleep 1
poweroff -f
EOF
}

# Boots the initramfs with corral_phase=$1; the console goes to $WORK/$1.console. Returns
# qemu's status (124 when the timeout killed it).
boot() {
  # Under TCG qemu64 boots faster than -cpu max (6.4 s to 7.8 s here: fewer features to
  # emulate).
  local phase="$1" accel_args=(-accel tcg -cpu qemu64)
  if [ "$ACCEL" = kvm ]; then accel_args=(-accel kvm -cpu host); fi
  QEMU_PIDFILE="$WORK/$phase.pid"
  timeout --kill-after=10 "$PHASE_TIMEOUT" qemu-system-x86_64 "${accel_args[@]}" \
    -smp "$VM_CPUS" -m "$VM_MEMORY" -no-reboot -display none -monitor none -nic none \
    -serial "file:$WORK/$phase.console" -pidfile "$QEMU_PIDFILE" \
    -kernel "$KERNEL" -initrd "$WORK/initramfs.gz" \
    -append "console=ttyS0 cgroup_no_v1=all panic=-1 loglevel=1 corral_phase=$phase" \
    </dev/null &
  local status=0
  wait $! || status=$?
  QEMU_PIDFILE=""
  return "$status"
}

# Prints the lines of console $1 between the markers, and sets RESULT_RC, RESULT_BOOT and
# RESULT_TESTS from the result marker (RESULT_RC empty when there is none).
read_console() {
  local console="$1" inside=0 line
  RESULT_RC="" RESULT_BOOT="" RESULT_TESTS=""
  while IFS= read -r line; do
    line="${line%$'\r'}"
    case "$line" in
      "@@$MARK begin"*) inside=1 ;;
      "@@$MARK end"*) inside=0 ;;
      "@@$MARK result "*)
        for field in ${line#"@@$MARK result "}; do
          case "$field" in
            rc=*) RESULT_RC="${field#rc=}" ;;
            boot=*) RESULT_BOOT="${field#boot=}" ;;
            tests=*) RESULT_TESTS="${field#tests=}" ;;
          esac
        done ;;
      *) if [ "$inside" = 1 ]; then printf '%s\n' "$line"; fi ;;
    esac
  done <"$console"
}

# Runs phase $1 (in the initramfs already); returns 0 when its marker says rc=0. Appends a
# line to $WORK/summary.
run_phase() {
  local phase="$1" started status=0 ok=FAILED
  log "phase $phase: booting"
  started="$(date +%s.%N)"
  boot "$phase" || status=$?
  local wall
  wall="$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
  read_console "$WORK/$phase.console"
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    log "phase $phase: the VM did not finish within ${PHASE_TIMEOUT}s"
  elif [ "$status" != 0 ]; then
    log "phase $phase: qemu exited with status $status"
  fi
  if [ -z "$RESULT_RC" ]; then
    log "phase $phase: no result marker on the console"
  elif [ "$RESULT_RC" = 0 ] && [ "$status" = 0 ]; then
    ok=ok
  else
    log "phase $phase: the tests exited with status $RESULT_RC"
  fi
  if [ "$ok" != ok ]; then
    log "phase $phase: the whole console log follows"
    tr -d '\r' <"$WORK/$phase.console" >&2 || true
  fi
  printf '%-20s %-7s %8s %8s %8s\n' "$phase" "$ok" "${RESULT_BOOT:-?}" \
    "${RESULT_TESTS:-?}" "$wall" >>"$WORK/summary"
  [ "$ok" = ok ]
}

# The test names of test binary $1 that the phase's selection $2 takes.
select_tests() {
  local names
  names="$("$1" --list --ignored --format terse 2>/dev/null | sed -n 's/: test$//p')"
  if [ "${2:0:1}" = '!' ]; then
    grep -Ev -- "${2:1}" <<<"$names" || true
  else
    grep -E -- "$2" <<<"$names" || true
  fi
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(scripts/target-dir)}"
  export CARGO_TARGET_DIR
  [ "$(id -u)" = 0 ] || die "run as root: it installs qemu and the tests manage cgroups"
  make_workdir
  local wanted=("$@") phase line name selection args chosen=() ran=0 failed=0
  for name in "${wanted[@]}"; do
    printf '%s\n' "${PHASES[@]}" | awk '{print $1}' | grep -qx -- "$name" \
      || die "no phase $name; phases: $(printf '%s\n' "${PHASES[@]}" | awk '{print $1}' | xargs)"
  done

  ensure_qemu
  vm_assets
  log "building the tests (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo build --locked --quiet
  local test_bin
  test_bin="$(cargo test --no-run --locked --quiet --test cgroup_v2 --message-format=json \
    | executable_of test cgroup_v2)"
  local corral_bin="$CARGO_TARGET_DIR/debug/corral"
  [ -x "$corral_bin" ] || die "no $corral_bin"

  mkdir -p "$WORK/root/phases"
  for line in "${PHASES[@]}"; do
    read -r name selection args <<<"$line"
    if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qx -- "$name"; then
      continue
    fi
    local setup="guest_setup_${name//-/_}"
    declare -F "$setup" >/dev/null || die "phase $name has no $setup"
    local tests
    tests="$(select_tests "$test_bin" "$selection" | xargs)"
    [ -n "$tests" ] || die "phase $name selects no test of tests/cgroup_v2.rs"
    "$setup" >"$WORK/root/phases/$name.setup"
    printf 'exec %q --ignored --exact %s %s\n' "$test_bin" "$args" "$tests" \
      >"$WORK/root/phases/$name.sh"
    chosen+=("$name")
  done
  log "building the initramfs"
  make_initramfs "$test_bin" "$corral_bin"
  log "initramfs: $(du -h "$WORK/initramfs.gz" | cut -f1); kernel: $(basename "$KERNEL"); accel: $ACCEL"

  for phase in "${chosen[@]}"; do
    ran=$((ran + 1))
    run_phase "$phase" || failed=$((failed + 1))
  done
  echo
  printf '%-20s %-7s %8s %8s %8s\n' phase result boot/s tests/s total/s
  cat "$WORK/summary"
  echo "(boot: kernel start to tests; tests: in the guest; total: qemu's wall time on the host)"
  if [ "$failed" -gt 0 ]; then
    echo "$failed of $ran phase(s) failed"
    exit 1
  fi
  echo "all $ran phase(s) passed"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
