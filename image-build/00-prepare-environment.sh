#!/usr/bin/env bash
# 00-prepare-environment.sh --base debian|archlinuxarm [--layout L] [--kernel K] [--dry-run]
#
# Checks the host before any heavy work: root, tools (naming their Debian and
# Arch packages), qemu-aarch64 binfmt, the build user and its Rust toolchain,
# free space, and that every PKGBUILD parses and matches its .SRCINFO.
# Creates the output and cache directories. Safe to re-run.
set -euo pipefail
STAGE=00-prepare-environment
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
parse_common_args "$@"

if [[ $AVF_DRY_RUN == 1 ]]; then
  log "dry run: host checks skipped"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (bootstrap, chroot and file ownership in the images)"

need_tools tar sha256sum md5sum curl jq runuser makepkg repo-add bsdtar zstd pigz \
  mkfs.ext4 tune2fs debugfs e2fsck mkfs.vfat fsck.fat mcopy mmd mdir arch-chroot arch-test \
  "${BASE_TOOLS[@]}"
# The cross linker: avf-agents links with it whatever the kernel
# (.cargo/config.toml), and kernel/build.sh compiles linux-avf with it.
need_tools aarch64-linux-gnu-gcc

# e2fsprogs must know orphan_file to turn it off (1.47+).
# (sed -n 1p reads all input: head would close the pipe and trip pipefail.)
e2v=$(mkfs.ext4 -V 2>&1 | sed -n 1p)
[[ $e2v =~ mke2fs\ 1\.(4[7-9]|[5-9][0-9]) ]] ||
  die "e2fsprogs too old ($e2v): need 1.47 or later (Debian: e2fsprogs from bookworm-backports)"

# aarch64 chroots run through qemu-user.
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
    die "cannot mount binfmt_misc"
  conf=$(find /usr/lib/binfmt.d -name 'qemu-aarch64*.conf' 2>/dev/null | sort | sed -n 1p)
  [[ -n $conf ]] || die "missing qemu-aarch64 binfmt (install package 'qemu-user-binfmt' on Debian/Ubuntu, 'qemu-user-static-binfmt' on Arch)"
  log "registering qemu-aarch64 binfmt from $conf"
  cat "$conf" >/proc/sys/fs/binfmt_misc/register
fi
arch-test arm64 >/dev/null 2>&1 || die "aarch64 binaries do not run here (qemu-aarch64 binfmt not working)"

# makepkg refuses root: packages are built by an unprivileged user.
if ! id "$AVF_BUILD_USER" >/dev/null 2>&1; then
  log "creating build user $AVF_BUILD_USER"
  useradd --system --create-home --home-dir "/var/lib/$AVF_BUILD_USER" --shell /bin/bash "$AVF_BUILD_USER"
fi

# avf-agents is built for every kernel (--kernel was checked by
# parse_common_args): the build user runs root's toolchain by path (see
# ci/setup-host.sh).
need_tools rustup
cargo_bin=$(rustup which cargo 2>/dev/null) || die "no Rust toolchain: run ci/setup-host.sh (rustup)"
rustc_bin=$(dirname "$cargo_bin")/rustc
libdir=$("$rustc_bin" --print target-libdir --target aarch64-unknown-linux-gnu 2>/dev/null) || true
[[ -n $libdir && -d $libdir ]] ||
  die "Rust target aarch64-unknown-linux-gnu missing: rustup target add aarch64-unknown-linux-gnu"
runuser -u "$AVF_BUILD_USER" -- "$rustc_bin" --version >/dev/null 2>&1 ||
  die "build user $AVF_BUILD_USER cannot run $rustc_bin: run ci/setup-host.sh (chmod 711 /root, a+rX on the toolchain)"

# Free space: checked up front so a full disk is one clear line, not a
# half-written image. Overridable for small test machines.
need_space() {
  local dir=$1 mib=$2 avail
  mkdir -p "$dir" 2>/dev/null || die "cannot create $dir"
  avail=$(($(df --output=avail -k "$dir" | tail -n1) / 1024))
  ((avail >= mib)) ||
    die "not enough free space in $dir: ${avail} MiB free, ${mib} MiB needed (free some or point ${3} elsewhere)"
}
need_space "$AVF_OUT" "${AVF_MIN_FREE_OUT_MIB:-3072}" AVF_OUT
need_space "$AVF_CACHE" "${AVF_MIN_FREE_CACHE_MIB:-2048}" AVF_CACHE
mkdir -p "$(repo_dir)"

# Every PKGBUILD parses, and its committed .SRCINFO is current.
conf="$IB/makepkg-aarch64.conf"
for pb in "$AVF_PKGBUILDS"/*/PKGBUILD; do
  [[ -e $pb ]] || die "no PKGBUILDs in $AVF_PKGBUILDS"
  dir=$(dirname "$pb")
  rel=${pb#"$AVF_REPO"/}
  err=$(mktemp)
  _TMP_DIRS+=("$err")
  if ! srcinfo=$(cd "$dir" && as_builder makepkg --config "$conf" --printsrcinfo 2>"$err"); then
    cause=$(sed -e 's/^==> ERROR: //' -e 's/\x1b\[[0-9;]*m//g' "$err" | grep -v '^\s*$' | sed -n 1p)
    die "$rel: makepkg cannot parse it: ${cause:-unknown error}"
  fi
  [[ -f $dir/.SRCINFO ]] || die "$rel: .SRCINFO missing (run image-build/pkgbuilds/update.sh)"
  [[ $srcinfo == "$(cat "$dir/.SRCINFO")" ]] ||
    die "$rel: .SRCINFO is stale (run image-build/pkgbuilds/update.sh)"
done

log "host ready for --base $BASE --layout $LAYOUT --kernel $KERNEL"
