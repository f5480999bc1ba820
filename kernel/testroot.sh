#!/usr/bin/env bash
# Builds (once, cached) a small Debian trixie arm64 root filesystem tree for
# checking kernels: systemd 257, root autologin on ttyS0 and ttyAMA0, socat
# (vsock) and the stock Debian cloud kernel + initrd (the benchmark's
# baseline). test/mkroot.sh adds linux-avf's modules and the self-test.
#
# Output: ${AVF_CACHE:-/var/cache/arch-avf}/kernel-testroot/<key>/ with
#   rootfs/, vmlinuz (stock), initrd.img (stock), stock-release
# printed as the last stdout line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[testroot] %s\n' "$*" >&2; }
die() {
  printf 'kernel/testroot.sh: error: %s\n' "$*" >&2
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (mmdebstrap --mode=root)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (ci/setup-host.sh installs it)"

key=$(cat "${BASH_SOURCE[0]}" "$here/test/customize-testroot.sh" | sha256sum | cut -c1-16)
root=${AVF_CACHE:-/var/cache/arch-avf}/kernel-testroot
out=$root/$key
if [[ -f $out/stock-release && -d $out/rootfs ]]; then
  log "cached: $out"
  printf '%s\n' "$out"
  exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock-$key"
flock 9
work=$(mktemp -d "$root/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/out"
log "mmdebstrap trixie arm64 (about 4 minutes)"
mmdebstrap --mode=root --arch=arm64 --variant=apt --quiet \
  --include=systemd,systemd-sysv,dbus,login,udev,kmod,mawk,socat,iproute2,procps,zstd,linux-image-cloud-arm64 \
  --customize-hook="$here/test/customize-testroot.sh" \
  trixie "$work/out/rootfs" http://deb.debian.org/debian

shopt -s nullglob
kernels=("$work/out/rootfs"/boot/vmlinuz-*)
((${#kernels[@]} == 1)) || die "expected one stock kernel in the test root, found ${#kernels[@]}"
rel=${kernels[0]##*/vmlinuz-}
cp "${kernels[0]}" "$work/out/vmlinuz"
cp "$work/out/rootfs/boot/initrd.img-$rel" "$work/out/initrd.img"
printf '%s\n' "$rel" >"$work/out/stock-release"
mv "$work/out" "$out"
log "built: $out (stock kernel $rel)"
printf '%s\n' "$out"
