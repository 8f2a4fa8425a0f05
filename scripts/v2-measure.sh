#!/usr/bin/env bash
# Measures `corral run` on a real cgroup v2 kernel: benches/v2.rs (edit → cpu.max latency,
# idle cost with 20 replicas, yardsticks) in the VM of scripts/v2-vm.sh, with the release
# build. The same yardsticks on the host give the VM's (TCG's) slowdown.
#
#   scripts/v2-measure.sh [BENCH ARGUMENTS]    e.g. --edits 40 --idle-seconds 30; as root
#
# Environment as for scripts/v2-vm.sh (CARGO_TARGET_DIR, CORRAL_VM_CACHE, CORRAL_VM_ACCEL,
# CORRAL_VM_TIMEOUT).
set -euo pipefail
# shellcheck source=scripts/v2-vm.sh
. "$(dirname "$0")/v2-vm.sh"

measure() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(scripts/target-dir)}"
  export CARGO_TARGET_DIR
  PHASE_TIMEOUT="${CORRAL_VM_TIMEOUT:-900}"
  [ "$(id -u)" = 0 ] || die "run as root: it installs qemu"
  make_workdir
  ensure_qemu
  vm_assets
  log "building the release binary and benches/v2.rs (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo build --release --locked --quiet
  local bench corral_bin="$CARGO_TARGET_DIR/release/corral" yardsticks host_loop host_files
  bench="$(cargo bench --no-run --locked --quiet --bench v2 --message-format=json \
    | executable_of bench v2)"
  [ -x "$corral_bin" ] || die "no $corral_bin"
  yardsticks="$("$bench" --yardsticks)"
  host_loop="$(sed -n 's/.*cpu loop \([0-9.]*\) ms.*/\1/p' <<<"$yardsticks")"
  host_files="$(sed -n 's/.*file reads \([0-9.]*\) ms.*/\1/p' <<<"$yardsticks")"
  if [ -z "$host_loop" ] || [ -z "$host_files" ]; then
    die "no yardsticks from $bench: $yardsticks"
  fi
  log "on the host: $yardsticks"

  mkdir -p "$WORK/root/phases"
  guest_setup_systemd_layout >"$WORK/root/phases/measure.setup"
  printf 'exec %q --corral %q --host-loop-ms %q --host-files-ms %q' "$bench" "$corral_bin" \
    "$host_loop" "$host_files" >"$WORK/root/phases/measure.sh"
  if [ $# -gt 0 ]; then printf ' %q' "$@" >>"$WORK/root/phases/measure.sh"; fi
  echo >>"$WORK/root/phases/measure.sh"
  make_initramfs "$bench" "$corral_bin"
  if run_phase measure; then
    echo
    cat "$WORK/summary"
  else
    exit 1
  fi
}

measure "$@"
