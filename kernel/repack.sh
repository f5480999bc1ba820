#!/usr/bin/env bash
# Repackages a built linux-avf package under a new package release, without
# compiling: the same kernel, a newer package, which is what a kernel update
# inside the guest needs to be tested with (and how a packaging-only fix
# ships). Two output formats:
#   pacman  linux-avf-<pkgver>-<pkgrel>-aarch64.pkg.tar.zst (.PKGINFO and
#           .MTREE rewritten the way makepkg writes them)
#   deb     linux-avf_<pkgver>-<pkgrel>_arm64.deb for the Debian vehicle,
#           whose image unpacks our packages: Debian's kernel package
#           convention (the postinst runs depmod and /etc/kernel/postinst.d
#           with the release and the image); /boot (the ESP) left out.
# The output path is printed on stdout. --pkgrel must be above the built
# package's own.
#
# Usage: kernel/repack.sh --pkgrel N --format pacman|deb <linux-avf-*.pkg.tar.zst> <out-dir>
set -euo pipefail

die() {
  printf 'kernel/repack.sh: error: %s\n' "$*" >&2
  exit 1
}

pkgrel="" format="" args=()
while (($#)); do
  case $1 in
  --pkgrel) pkgrel=${2:-} && shift 2 ;;
  --format) format=${2:-} && shift 2 ;;
  -h | --help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  -*) die "unknown option $1" ;;
  *) args+=("$1") && shift ;;
  esac
done
((${#args[@]} == 2)) || die "usage: kernel/repack.sh --pkgrel N --format pacman|deb <linux-avf-*.pkg.tar.zst> <out-dir>"
[[ $pkgrel =~ ^[1-9][0-9]*$ ]] || die "--pkgrel: a positive integer, got '$pkgrel'"
[[ $format == pacman || $format == deb ]] || die "--format: pacman or deb, got '$format'"
pkg=${args[0]} out=${args[1]}
[[ -f $pkg ]] || die "$pkg: no such file"
for t in bsdtar zstd; do command -v "$t" >/dev/null || die "$t not found"; done
[[ $format == pacman ]] || command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
mkdir -p "$out" || die "cannot create $out"

work=$(mktemp -d /tmp/linux-avf-repack.XXXXXX)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
mkdir -p "$tree"
bsdtar -xpf "$pkg" -C "$tree" || die "$pkg: not a package archive"
[[ -f $tree/.PKGINFO ]] || die "$pkg: no .PKGINFO"
name=$(sed -n 's/^pkgname = //p' "$tree/.PKGINFO")
ver=$(sed -n 's/^pkgver = //p' "$tree/.PKGINFO")
[[ $name == linux-avf ]] || die "$pkg: .PKGINFO pkgname is '$name', not linux-avf"
[[ $ver == *-* ]] || die "$pkg: .PKGINFO pkgver '$ver' has no -pkgrel"
upstream=${ver%-*}
built_rel=${ver##*-}
# The copy must be newer than what the image carries, or the package
# manager calls it installed and the update under test never happens.
[[ $built_rel =~ ^[0-9]+$ ]] || die "$pkg: .PKGINFO pkgver '$ver': pkgrel '$built_rel' is not a number"
((pkgrel > built_rel)) || die "--pkgrel $pkgrel is not newer than the built package's $ver ($pkg): give a pkgrel above $built_rel"
new=$upstream-$pkgrel
mapfile -t rels < <(cd "$tree/usr/lib/modules" 2>/dev/null && ls)
((${#rels[@]} == 1)) || die "$pkg: expected one usr/lib/modules/<release>, found ${#rels[@]}"
rel=${rels[0]}
[[ -f $tree/usr/lib/modules/$rel/vmlinuz ]] || die "$pkg: no usr/lib/modules/$rel/vmlinuz"

if [[ $format == pacman ]]; then
  sed -i "s/^pkgver = .*/pkgver = $new/" "$tree/.PKGINFO"
  dest=$out/linux-avf-$new-aarch64.pkg.tar.zst
  (
    cd "$tree"
    rm -f .MTREE
    meta=(.PKGINFO)
    [[ -f .BUILDINFO ]] && meta+=(.BUILDINFO)
    [[ -f .INSTALL ]] && meta+=(.INSTALL)
    mapfile -t files < <(LC_ALL=C find . -mindepth 1 -maxdepth 1 ! -name '.*' -printf '%P\n' | sort)
    # makepkg's .MTREE (the file list with hashes pacman -Qkk checks against).
    LANG=C bsdtar -czf .MTREE --format=mtree \
      --options='!all,use-set,type,uid,gid,mode,time,size,sha256,link' "${meta[@]}" "${files[@]}"
    LANG=C bsdtar -cf - .MTREE "${meta[@]}" "${files[@]}" | zstd -q -T0 -o "$dest.tmp"
  ) || die "writing $dest failed"
else
  rm -rf "${tree:?}/boot"
  rm -f "$tree"/.PKGINFO "$tree"/.BUILDINFO "$tree"/.MTREE "$tree"/.INSTALL
  mkdir -p "$tree/DEBIAN"
  cat >"$tree/DEBIAN/control" <<EOF
Package: linux-avf
Version: $new
Architecture: arm64
Maintainer: arch-avf <arch-avf@localhost>
Section: kernel
Priority: optional
Depends: kmod
Description: Linux kernel for the Android Virtualization Framework (Terminal app) VM
 linux-avf $rel, repackaged from $(basename "$pkg") as package release $pkgrel.
EOF
  cat >"$tree/DEBIAN/postinst" <<EOF
#!/bin/sh
# Debian's kernel package convention: depmod, then /etc/kernel/postinst.d
# with the release and the image (arch-avf's hook puts it on the ESP).
set -e
if [ "\$1" = configure ]; then
  depmod -a $rel
  run-parts --report --exit-on-error --arg=$rel --arg=/usr/lib/modules/$rel/vmlinuz /etc/kernel/postinst.d
fi
EOF
  chmod 755 "$tree/DEBIAN/postinst"
  dest=$out/linux-avf_${new}_arm64.deb
  dpkg-deb --root-owner-group -Zgzip -b "$tree" "$dest.tmp" >/dev/null || die "dpkg-deb failed for $dest"
fi
mv -f "$dest.tmp" "$dest"
printf '%s\n' "$dest"
