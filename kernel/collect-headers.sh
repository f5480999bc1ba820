#!/usr/bin/env bash
# Copies from a built kernel tree what building out-of-tree modules needs
# (the tree /usr/lib/modules/<release>/build points at) into <dest>.
# Usage: collect-headers.sh <built-tree> <dest>
set -euo pipefail

die() {
  printf 'kernel/collect-headers.sh: error: %s\n' "$*" >&2
  exit 1
}
(($# == 2)) || die "usage: collect-headers.sh <built-tree> <dest>"
tree=$1
dest=$2
for f in Makefile .config Module.symvers System.map include/generated/autoconf.h; do
  [[ -e $tree/$f ]] || die "$tree/$f missing: is the tree built?"
done
mkdir -p "$dest"

# Top-level build files, the kernel's and arm64's headers, the build scripts
# (without objects and command files) and every Kconfig (kbuild re-reads them).
(
  cd "$tree"
  {
    printf '%s\n' Makefile .config Module.symvers System.map
    find include arch/arm64/include -type f
    printf '%s\n' arch/arm64/Makefile
    find scripts -type f ! -name '*.o' ! -name '.*.cmd'
    find . -path ./Documentation -prune -o -path './arch/*' ! -path './arch/arm64/*' -prune -o \
      -name 'Kconfig*' -type f -print | sed 's|^\./||'
  } | sort -u | tar -cf - --no-recursion -T -
) | tar -xf - -C "$dest"
