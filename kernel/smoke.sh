#!/usr/bin/env bash
# Boots linux-avf (no initramfs) on the Debian trixie test root under QEMU
# with the devices crosvm gives an AVF guest, and checks them from inside:
# uname -r, /proc/config.gz against config/avf.config, virtio-fs, vsock,
# virtio-balloon (free page reporting + inflating through QMP), virtio-gpu,
# virtio-snd (module) and the ttyS0 (16550 on PCI) console.
# Exits non-zero naming every failed check.
#
# Usage: kernel/smoke.sh [--kernel-dir DIR] [--testroot DIR] [--keep]
#   --kernel-dir  output of kernel/build.sh (default: run it; cache hit)
#   --testroot    output of kernel/testroot.sh (default: run it; cache hit)
#   --keep        keep the run dir (logs, disk) and print its path
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[smoke] %s\n' "$*" >&2; }
die() {
  printf 'kernel/smoke.sh: error: %s\n' "$*" >&2
  exit 1
}

kdir="" troot="" keep=0
while (($#)); do
  case $1 in
  --kernel-dir) kdir=${2:?--kernel-dir needs a dir} && shift 2 ;;
  --testroot) troot=${2:?--testroot needs a dir} && shift 2 ;;
  --keep) keep=1 && shift ;;
  *) die "unknown argument: $1" ;;
  esac
done
[[ -n $kdir ]] || kdir=$("$here/build.sh" | tail -n1)
[[ -n $troot ]] || troot=$("$here/testroot.sh" | tail -n1)
for f in "$kdir/Image" "$kdir/release" "$troot/rootfs/etc/os-release"; do
  [[ -e $f ]] || die "missing $f"
done
for t in qemu-system-aarch64 virtiofsd vhost-device-vsock socat mkfs.ext4; do
  command -v "$t" >/dev/null || die "$t not found (ci/setup-host.sh installs it)"
done
release=$(<"$kdir/release")

run=$(mktemp -d /tmp/linux-avf-smoke.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((keep)); then log "run dir kept: $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
mkdir -p "$run/share"

log "root disk: test root + modules of $release"
"$here/test/mkroot.sh" "$troot" "$kdir" "$run/root.img"
cp "$here/config/avf.config" "$run/share/avf.config"

virtiofsd --socket-path="$run/vfs.sock" --shared-dir="$run/share" --cache=auto \
  >"$run/virtiofsd.log" 2>&1 &
pids+=($!)
vhost-device-vsock --guest-cid=2048 --socket="$run/vsock-ctl.sock" --uds-path="$run/vsock.sock" \
  >"$run/vsock.log" 2>&1 &
pids+=($!)
# Guest -> host vsock port 5000 arrives on <uds-path>_5000.
socat -u UNIX-LISTEN:"$run/vsock.sock_5000" CREATE:"$run/vsock-received" &
pids+=($!)
for s in vfs.sock vsock-ctl.sock vsock.sock_5000; do
  for _ in $(seq 50); do [[ -S $run/$s ]] && break; sleep 0.1; done
  [[ -S $run/$s ]] || die "$s did not appear (see $run)"
done

log "booting $release (TCG, no initramfs)"
t0=$(date +%s.%N)
qemu-system-aarch64 -M virt -cpu max -smp 2 -m 2048 -accel tcg,thread=multi \
  -display none -no-reboot -nic none -monitor none \
  -qmp unix:"$run/qmp.sock",server=on,wait=off \
  -object memory-backend-memfd,id=mem,size=2048M,share=on -machine memory-backend=mem \
  -serial file:"$run/ttyAMA0.log" \
  -chardev file,id=ttys0,path="$run/ttyS0.log" -device pci-serial,chardev=ttys0 \
  -drive if=none,id=hd0,format=raw,file="$run/root.img",cache=unsafe -device virtio-blk-pci,drive=hd0 \
  -chardev socket,id=vfs0,path="$run/vfs.sock" -device vhost-user-fs-pci,chardev=vfs0,tag=internal \
  -chardev socket,id=vsk0,path="$run/vsock-ctl.sock" -device vhost-user-vsock-pci,chardev=vsk0 \
  -device virtio-balloon-pci,id=balloon0,free-page-reporting=on \
  -device virtio-gpu-pci \
  -audiodev none,id=snd0 -device virtio-sound-pci,audiodev=snd0 \
  -kernel "$kdir/Image" \
  -append "root=/dev/vda rw console=ttyAMA0 console=ttyS0 systemd.default_device_timeout_sec=600 avf.selftest" \
  >"$run/qemu.log" 2>&1 &
qemu=$!
pids+=("$qemu")

ballooned=0
deadline=$((SECONDS + ${AVF_SMOKE_TIMEOUT:-900}))
while kill -0 "$qemu" 2>/dev/null && ((SECONDS < deadline)); do
  if ((!ballooned)) && grep -q '^SELFTEST-BALLOON-READY' "$run/ttyS0.log" 2>/dev/null; then
    log "guest ready: ballooning 2 GiB -> 1 GiB over QMP"
    printf '%s\n' '{"execute":"qmp_capabilities"}' \
      '{"execute":"balloon","arguments":{"value":1073741824}}' |
      socat -t 3 - UNIX-CONNECT:"$run/qmp.sock" >"$run/qmp.log"
    ballooned=1
  fi
  grep -q '^SELFTEST-DONE' "$run/ttyS0.log" 2>/dev/null && break
  sleep 1
done
shell_up=$(grep -m1 -a 'AVF-SHELL-UP' "$run/ttyS0.log" | grep -o 'AVF-SHELL-UP [0-9.]*' || true)
for _ in $(seq 30); do kill -0 "$qemu" 2>/dev/null || break; sleep 1; done
log "run took $(echo "$(date +%s.%N) - $t0" | bc) s; guest ${shell_up:-never reached a shell}"

# The autologin shell shares the console: result lines may follow a prompt
# on the same line, so match them anywhere in a line.
results=$(tr -d '\r' <"$run/ttyS0.log" | grep -ao 'SELFTEST.*\|^  missing.*' || true)
printf '%s\n' "$results" >&2
fails=()
grep -q '^SELFTEST-DONE' <<<"$results" || fails+=("guest self-test did not finish (ttyS0 log: $run/ttyS0.log)")
while IFS= read -r line; do fails+=("guest: ${line#SELFTEST }"); done < <(grep '^SELFTEST [^ ]* FAIL' <<<"$results")
for check in ttyS0-console virtiofs-mount virtiofs-write config-gz vsock virtio-gpu virtio-snd \
  balloon-free-page-reporting balloon; do
  grep -q "^SELFTEST $check PASS" <<<"$results" || fails+=("guest: no PASS for $check")
done
grep -qx "SELFTEST uname PASS $release" <<<"$results" || fails+=("uname -r is not $release")
grep -q "^written-by-guest $release\$" "$run/share/from-guest" 2>/dev/null || fails+=("virtio-fs: host did not get share/from-guest")
grep -q "^vsock-hello $release\$" "$run/vsock-received" 2>/dev/null || fails+=("vsock: host did not receive the guest's message on port 5000")
grep -q '"return": {}' "$run/qmp.log" 2>/dev/null || fails+=("QMP balloon command not acknowledged")

if ((${#fails[@]})); then
  keep=1
  printf 'FAIL: %s\n' "${fails[@]}" >&2
  exit 1
fi
log "PASS: all checks on $release"
