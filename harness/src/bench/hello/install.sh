# shellcheck shell=sh
# Runs in the guest (sh -c): the toolchain debs and linux-avf-headers from
# the share. $1: the share directory bench-build filled.
set -eu
d=$1
dpkg -i "$d"/toolchain/*.deb >/dev/null
# A pacman package on a Debian guest: unpack it as the image build does
# (base_install_avf), without pacman's metadata files.
tar --zstd -xf "$d"/linux-avf-headers.pkg.tar.zst -C / \
  --exclude .PKGINFO --exclude .BUILDINFO --exclude .MTREE --exclude .INSTALL
build=/usr/lib/modules/$(uname -r)/build
[ -x "$build/scripts/mod/modpost" ] || {
  echo "no $build/scripts/mod/modpost: linux-avf-headers is not for $(uname -r)" >&2
  exit 1
}
gcc --version | head -n1
