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
mkfs.ext4 -q -F -L testroot -d "$stage" "$img.tmp" 3G
mv "$img.tmp" "$img"
