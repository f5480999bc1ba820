# shellcheck shell=bash
# Base "debian": trixie arm64 by mmdebstrap, ttyd from sid (trixie has none;
# the sid source and its pin are removed from the guest after the bootstrap),
# AVF packages installed by extracting the same pkg.tar.zst files the Arch
# base installs with pacman. Sourced by the stages; its distribution
# packages are the debian column of image-build/packages.txt.

BASE_NAME=debian
BASE_SUITE=trixie
DEBIAN_MIRROR=${AVF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TOOLS=(mmdebstrap arch-test bsdtar zstd curl)
BASE_NATIVE_PKGS=()

# AVF packages built from image-build/pkgbuilds for this base. avf-ttyd is
# not among them: Debian's ttyd (sid) is used instead.
base_avf_packages() {
  printf '%s\n' avf-agents avf-config
}

# Fails within seconds when the registry cannot be reached.
base_mirror_check() {
  curl -fsS --max-time 8 -o /dev/null "$DEBIAN_MIRROR/dists/$BASE_SUITE/Release" 2>/dev/null ||
    die "Debian mirror $DEBIAN_MIRROR unreachable (set AVF_DEBIAN_MIRROR to a reachable mirror)"
}

base_bootstrap() {
  local target=$1 pkgs
  pkgs=$(guest_packages | paste -sd, -)
  # shellcheck disable=SC2016 # the hooks are expanded by mmdebstrap's shell
  # sid only for ttyd: pinned below trixie, ttyd itself pinned to sid. The
  # sid Release file expires within days; its signature is still checked.
  run mmdebstrap --mode=root --arch=arm64 --variant=apt --format=directory \
    --dpkgopt=force-unsafe-io \
    --include="$pkgs" \
    --setup-hook='mkdir -p "$1/etc/apt/preferences.d" && printf "Package: *\nPin: release n=sid\nPin-Priority: 100\n\nPackage: ttyd\nPin: release n=sid\nPin-Priority: 990\n" > "$1/etc/apt/preferences.d/avf-sid-ttyd"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_* "$1"/var/cache/apt/*.bin; rm -rf "$1"/var/lib/apt/lists/*' \
    "$BASE_SUITE" "$target" \
    "deb $DEBIAN_MIRROR $BASE_SUITE main" \
    "deb [check-valid-until=no] $DEBIAN_MIRROR sid main"
}

# base_install_avf ROOT PKGFILE...: unpack package payloads (no pacman on
# Debian); the metadata files stay out of the tree.
base_install_avf() {
  local root=$1 f
  shift
  for f in "$@"; do
    run bsdtar -xpf "$f" -C "$root" --exclude .PKGINFO --exclude .BUILDINFO \
      --exclude .MTREE --exclude .INSTALL
  done
  # linux-avf ships modules (no pacman hook runs depmod here).
  local pb
  for pb in "$root"/usr/lib/modules/*/pkgbase; do
    [[ -f $pb ]] || continue
    run_in "$root" depmod "$(basename "$(dirname "$pb")")"
  done
}

# Prints "kernel initrd|- release" (paths relative to ROOT) for the stock kernel.
base_kernel_files() {
  local root=$1 k i rel
  k=$(cd "$root" && find boot -maxdepth 1 -name 'vmlinuz-*' | LC_ALL=C sort -V | tail -n1)
  [[ -n $k ]] || { printf '%s\n' "- - -"; return; }
  rel=${k#boot/vmlinuz-}
  i="boot/initrd.img-$rel"
  [[ -e $root/$i ]] || i=-
  printf '%s %s %s\n' "$k" "$i" "$rel"
}

base_configure() {
  local root=$1 f
  # C.UTF-8 is built into glibc: no locales package needed.
  printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"
  # sid served ttyd only, at bootstrap: the guest keeps trixie alone, not a
  # source whose Release file's expiry is not checked, nor its pin. (ttyd
  # then gets no update from apt until trixie-backports or forky has one.)
  for f in "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -i -E '/^[[:space:]]*deb(-src)?[[:space:]].*[[:space:]]sid([[:space:]]|$)/d' "$f"
  done
  rm -f "$root/etc/apt/preferences.d/avf-sid-ttyd"
  if grep -rqsE '[[:space:]]sid([[:space:]]|$)|check-valid-until' "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.d"; then
    die "$root/etc/apt: a sid source is left after removing it"
  fi
  grep -rqsE "[[:space:]]${BASE_SUITE}[[:space:]]" "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.d" ||
    die "$root/etc/apt: no $BASE_SUITE source"
  # Debian names the unit ssh-less avahi-daemon; nothing else differs here.
}
