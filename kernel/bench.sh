#!/usr/bin/env bash
# Benchmark (not a test): median boot-to-shell over N boots (default 5) of
# the stock Debian cloud kernel (+ its initrd) versus linux-avf (no initrd)
# on the same root image, direct kernel boot under QEMU TCG.
# "Shell" = the root autologin shell on the serial console printing
# AVF-SHELL-UP (see kernel/test/customize-testroot.sh); time is wall clock
# from starting QEMU.
#
# Usage: kernel/bench.sh [--boots N] [--kernel-dir DIR] [--testroot DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  printf 'kernel/bench.sh: error: %s\n' "$*" >&2
  exit 1
}

boots=5 kdir="" troot=""
while (($#)); do
  case $1 in
  --boots) boots=${2:?} && shift 2 ;;
  --kernel-dir) kdir=${2:?} && shift 2 ;;
  --testroot) troot=${2:?} && shift 2 ;;
  *) die "unknown argument: $1" ;;
  esac
done
[[ $boots =~ ^[1-9][0-9]*$ ]] || die "--boots needs a positive integer, got '$boots'"
[[ -n $kdir ]] || kdir=$("$here/build.sh" | tail -n1)
[[ -n $troot ]] || troot=$("$here/testroot.sh" | tail -n1)
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 not found"

run=$(mktemp -d /tmp/linux-avf-bench.XXXXXX)
qemu=""
cleanup() {
  [[ -n $qemu ]] && kill "$qemu" 2>/dev/null
  rm -rf "$run"
}
trap cleanup EXIT
"$here/test/mkroot.sh" "$troot" "$kdir" "$run/root.img"

# boot_once <label> <kernel> <initrd or ""> -> prints seconds to the shell marker
boot_once() {
  local kernel=$2 initrd=$3 i extra=()
  [[ -n $initrd ]] && extra=(-initrd "$initrd")
  rm -f "$run/s0.log" "$run/ama.log"
  local t0 t1
  t0=$(date +%s%N)
  qemu-system-aarch64 -M virt -cpu max -smp 2 -m 2048 -accel tcg,thread=multi \
    -display none -no-reboot -nic none -monitor none \
    -serial file:"$run/ama.log" \
    -chardev file,id=s0,path="$run/s0.log" -device pci-serial,chardev=s0 \
    -drive if=none,id=hd0,format=raw,file="$run/root.img",cache=unsafe -device virtio-blk-pci,drive=hd0 \
    -device virtio-balloon-pci -device virtio-gpu-pci \
    -kernel "$kernel" "${extra[@]}" \
    -append "root=/dev/vda rw console=ttyAMA0 console=ttyS0 systemd.default_device_timeout_sec=600" >"$run/qemu.log" 2>&1 &
  qemu=$!
  for ((i = 0; i < 6000; i++)); do
    if grep -aqs 'AVF-SHELL-UP' "$run/s0.log" "$run/ama.log"; then
      t1=$(date +%s%N)
      break
    fi
    kill -0 "$qemu" 2>/dev/null || break
    sleep 0.1
  done
  kill "$qemu" 2>/dev/null || true
  wait "$qemu" 2>/dev/null || true
  qemu=""
  [[ -n ${t1:-} ]] || die "$1: no shell within 600 s (ttyS0: $(tail -c 300 "$run/s0.log" 2>/dev/null | tr -d '\r'))"
  echo "scale=2; ($t1 - $t0) / 1000000000" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A results
for label in stock linux-avf; do
  times=()
  for ((n = 1; n <= boots; n++)); do
    if [[ $label == stock ]]; then
      t=$(boot_once stock "$troot/vmlinuz" "$troot/initrd.img")
    else
      t=$(boot_once linux-avf "$kdir/Image" "")
    fi
    log "$label boot $n/$boots: $t s"
    times+=("$t")
  done
  results[$label]=$(printf '%s\n' "${times[@]}" | median)
  results[$label-all]=${times[*]}
done

printf 'boot-to-shell, median of %d (QEMU TCG, -smp 2, direct kernel boot, same root image):\n' "$boots"
printf '  stock %-22s (+initrd) %6s s   [%s]\n' "$(<"$troot/stock-release")" "${results[stock]}" "${results[stock-all]}"
printf '  linux-avf %-18s (no initrd) %6s s   [%s]\n' "$(<"$kdir/release")" "${results[linux-avf]}" "${results[linux-avf-all]}"
