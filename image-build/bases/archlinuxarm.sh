# shellcheck shell=bash
# Base "archlinuxarm" (the product): the official generic aarch64 rootfs
# tarball (md5 and signature checked), then pacman inside the aarch64 chroot
# (qemu-user binfmt) — works from an Arch or a Debian/Ubuntu x86_64 host,
# because no host pacman touches the Arch root. Sourced by the stages; its
# distribution packages are the archlinuxarm column of image-build/packages.txt.

BASE_NAME=archlinuxarm
ALARM_OS_MIRROR=${AVF_ALARM_OS_MIRROR:-http://os.archlinuxarm.org}
ALARM_PKG_MIRROR=${AVF_ALARM_MIRROR:-http://mirror.archlinuxarm.org}
ALARM_TARBALL=ArchLinuxARM-aarch64-latest.tar.gz
# "Arch Linux ARM Build System <builder@archlinuxarm.org>", which signs the
# rootfs tarballs and the archlinuxarm-keyring package.
ALARM_SIGNING_KEY=68B3537F39A313B3E574D06777193F152BDBE6A6
ALARM_KEYSERVER=${AVF_KEYSERVER:-hkps://keyserver.ubuntu.com}
BASE_TOOLS=(curl md5sum gpg bsdtar arch-chroot arch-test zstd)

# avf-ttyd replaces extra/ttyd (it carries the AVF xterm.js a11y patch).
base_avf_packages() {
  printf '%s\n' avf-agents avf-config avf-ttyd
}

# Packages that must be compiled natively in an aarch64 chroot (they link
# against Arch's aarch64 libraries), rather than cross-compiled on the host.
BASE_NATIVE_PKGS=(avf-ttyd)

base_mirror_check() {
  curl -fsS --max-time 6 -o /dev/null "$ALARM_OS_MIRROR/os/$ALARM_TARBALL.md5" 2>/dev/null ||
    die "Arch Linux ARM mirror $ALARM_OS_MIRROR unreachable: build offline with --base debian (or set AVF_ALARM_OS_MIRROR/AVF_ALARM_MIRROR)"
}

base_bootstrap() {
  local target=$1 dl="$AVF_CACHE/downloads" gh="$AVF_CACHE/downloads/gnupg" pkgs
  pkgs=$(guest_packages | tr '\n' ' ')
  run mkdir -p "$dl" "$target"
  run chmod 700 "$dl"
  run curl -fL --retry 3 -o "$dl/$ALARM_TARBALL" "$ALARM_OS_MIRROR/os/$ALARM_TARBALL"
  run curl -fL --retry 3 -o "$dl/$ALARM_TARBALL.md5" "$ALARM_OS_MIRROR/os/$ALARM_TARBALL.md5"
  run curl -fL --retry 3 -o "$dl/$ALARM_TARBALL.sig" "$ALARM_OS_MIRROR/os/$ALARM_TARBALL.sig"
  run sh -c 'cd "$1" && md5sum -c "$2.md5"' md5 "$dl" "$ALARM_TARBALL"
  run mkdir -p -m 700 "$gh"
  run gpg --homedir "$gh" --batch --keyserver "$ALARM_KEYSERVER" --recv-keys "$ALARM_SIGNING_KEY"
  run gpg --homedir "$gh" --batch --trust-model always --verify "$dl/$ALARM_TARBALL.sig" "$dl/$ALARM_TARBALL"
  # bsdtar keeps xattrs and ACLs (file capabilities of ping etc.).
  run bsdtar -xpf "$dl/$ALARM_TARBALL" -C "$target"
  run sh -c 'printf "Server = %s/\$arch/\$repo\n" "$2" > "$1/etc/pacman.d/mirrorlist"' mirror "$target" "$ALARM_PKG_MIRROR"
  # shellcheck disable=SC2086 # the package list is split on purpose
  pacman_build_keyring "$target" pacman -Syu --noconfirm --needed $pkgs
  if [[ $KERNEL == avf ]]; then
    # linux-avf comes from the local repo (stage 20); drop the board kernel
    # and firmware the tarball ships.
    run_in "$target" pacman -Rns --noconfirm linux-aarch64 linux-firmware
  fi
  # The tarball's default user would take uid 1000 from droid.
  run_in "$target" userdel -r alarm
  run_in "$target" pacman -Scc --noconfirm
  # Per machine, made on first boot (avf-pacman-keyring.service, sshd).
  run rm -rf "$target/etc/pacman.d/gnupg"
  run rm -f "$target"/etc/ssh/ssh_host_*
}

# pacman_build_keyring ROOT pacman ARGS...: runs pacman in ROOT with a
# keyring of the build's own, initialised and populated in the chroot's
# /tmp (a tmpfs arch-chroot mounts for the command and drops after it), so
# it never reaches the root's disk: a keyring made at build time would put
# the same local master signing key (trusted to certify packagers' keys)
# on every machine. Each machine makes its own on first boot
# (avf-config's avf-pacman-keyring.service).
pacman_build_keyring() {
  local root=$1
  shift
  # shellcheck disable=SC2016 # expanded by the chroot's shell
  run_in "$root" sh -c 'set -u
cmd=$1
shift
g=$(mktemp -d /tmp/avf-build-gnupg.XXXXXX) || exit 1
rc=0
pacman-key --gpgdir "$g" --init && pacman-key --gpgdir "$g" --populate archlinuxarm &&
  "$cmd" --gpgdir "$g" "$@" || rc=$?
gpgconf --homedir "$g" --kill all 2>/dev/null
rm -rf "$g"
exit "$rc"' avf-build-keyring "$@"
}

# base_build_native NAME PKGDIR OUTDIR ROOTFS: makepkg in a throw-away
# aarch64 chroot made from the stage-10 rootfs.
base_build_native() {
  local name=$1 dir=$2 out=$3 rootfs=$4 bc
  bc="$AVF_CACHE/archlinuxarm/buildroot-$name"
  run rm -rf "$bc"
  run cp -a "$rootfs/." "$bc/"
  pacman_build_keyring "$bc" pacman -S --noconfirm --needed base-devel git cmake nodejs yarn
  run_in "$bc" useradd -m avfbuild
  run cp -r "$dir" "$bc/home/avfbuild/$name"
  run_in "$bc" chown -R avfbuild: "/home/avfbuild/$name"
  run_in "$bc" runuser -u avfbuild -- sh -c "cd /home/avfbuild/$name && makepkg --noconfirm --syncdeps=no --nodeps"
  run sh -c 'cp "$1"/*.pkg.tar.zst "$2"/' copy "$bc/home/avfbuild/$name" "$out"
  run rm -rf "$bc"
}

# base_install_avf ROOT PKGFILE...: pacman installs them from the local repo.
base_install_avf() {
  local root=$1 f names=()
  shift
  for f in "$@"; do
    f=$(basename "$f")
    names+=("$(sed -E 's/-[^-]+-[^-]+-[^-]+\.pkg\.tar\.zst$//' <<<"$f")")
  done
  local repo
  repo=$(repo_dir)
  run mkdir -p "$root/var/tmp/avf-repo"
  run cp -r "$repo/." "$root/var/tmp/avf-repo/"
  run sh -c 'cat "$1/etc/pacman.conf" - > "$1/var/tmp/avf-repo/pacman.conf" <<CONF
[avf]
SigLevel = Optional TrustAll
Server = file:///var/tmp/avf-repo
CONF' conf "$root"
  # extra/ttyd would conflict with avf-ttyd: it is never installed.
  pacman_build_keyring "$root" pacman --config /var/tmp/avf-repo/pacman.conf -Sy --noconfirm --needed "${names[@]}"
  run rm -rf "$root/var/tmp/avf-repo"
}

# Prints "kernel initrd|- release" (paths relative to ROOT) for linux-aarch64.
base_kernel_files() {
  local root=$1 k=boot/Image i=boot/initramfs-linux.img rel
  [[ -e $root/$k ]] || k=-
  [[ -e $root/$i ]] || i=-
  rel=$(find "$root/usr/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  printf '%s %s %s\n' "$k" "$i" "${rel:-unknown}"
}

base_configure() {
  local root=$1
  printf 'LANG=C.UTF-8\n' >"$root/etc/locale.conf"
  # Arch's filesystem package gives "users" a dynamic gid; the contract
  # wants droid's primary group to be 100.
  if [[ $(awk -F: '$1 == "users" {print $3}' "$root/etc/group") != 100 ]]; then
    run_in "$root" groupmod -g 100 users
  fi
}
