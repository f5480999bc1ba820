#!/usr/bin/env bash
# Makes an ext4 root image from a kernel/testroot.sh tree plus linux-avf's
# modules (the stock kernel's are already in the tree).
# Usage: test/mkroot.sh <testroot-dir> <kernel-dir> <out.img>
set -euo pipefail
die() {
  printf 'kernel/test/mkroot.sh: error: %s\n' "$*" >&2
  exit 1
}
(($# == 3)) || die "usage: mkroot.sh <testroot-dir> <kernel-dir> <out.img>"
troot=$1 kdir=$2 img=$3
[[ -d $troot/rootfs ]] || die "$troot/rootfs missing (run kernel/testroot.sh)"
[[ -f $kdir/release ]] || die "$kdir/release missing (run kernel/build.sh)"
release=$(<"$kdir/release")
stage=$(mktemp -d "$(dirname "$img")/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# Hard links keep this cheap; mkfs only reads the staged tree.
cp -al "$troot/rootfs/." "$stage/"
mkdir -p "$stage/usr/lib/modules"
cp -a "$kdir/modules/lib/modules/$release" "$stage/usr/lib/modules/"
# The guest half of kernel/smoke.sh; runs only with `avf.selftest` on the
# kernel command line. Written as new files (rm first): the staged tree is
# hard-linked to the cache and must not be written through. It reports on
# /dev/console: agetty's vhangup on ttyS0 cuts off plain ttyS0 writers,
# console-redirected files survive it.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rm -f "$stage/usr/local/sbin/avf-selftest" "$stage/etc/systemd/system/avf-selftest.service"
install -D -m755 "$here/avf-selftest" "$stage/usr/local/sbin/avf-selftest"
cat >"$stage/etc/systemd/system/avf-selftest.service" <<'UNIT'
[Unit]
Description=AVF kernel self-test (kernel/smoke.sh)
ConditionKernelCommandLine=avf.selftest
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/avf-selftest
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
ln -sfn ../avf-selftest.service "$stage/etc/systemd/system/multi-user.target.wants/avf-selftest.service"
mkfs.ext4 -q -F -L testroot -d "$stage" "$img.tmp" 3G
mv "$img.tmp" "$img"
