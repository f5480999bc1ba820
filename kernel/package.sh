#!/usr/bin/env bash
# Builds the linux-avf and linux-avf-headers pacman packages into <repo-dir>
# by running makepkg (as the unprivileged user avfbuild) on kernel/PKGBUILD.
# The kernel is compiled once, by kernel/build.sh into its cache; makepkg
# only packages that output (AVF_KERNEL_CACHE_ONLY=1 makes a cache miss an
# error instead of a second compile).
#
# Usage: kernel/package.sh <repo-dir>
#        kernel/package.sh --cache-key   prints the packages' cache key (the
#                              kernel's from build.sh, compiling it if cold,
#                              plus every packaging input) without makepkg
# Env:   AVF_KERNEL_PATCH_DIR  a directory holding arm64-balloon.patch and
#                              virtual-cpufreq.patch (AOSP, android-16.0.0_r2);
#                              without it the packages are built offline
#                              WITHOUT the AVF patches, and say so.
#        AVF_CACHE, AVF_KERNEL_SRC  as for build.sh
#        AVF_BUILD_USER        default avfbuild
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[kernel/package] %s\n' "$*" >&2; }
die() {
  printf 'kernel/package.sh: error: %s\n' "$*" >&2
  exit 1
}

(($# == 1)) || die "usage: kernel/package.sh <repo-dir> | --cache-key"
key_only=0
if [[ $1 == --cache-key ]]; then
  key_only=1
else
  repo=$1
  mkdir -p "$repo" || die "cannot create repo dir $repo"
  repo=$(cd "$repo" && pwd)
fi
user=${AVF_BUILD_USER:-avfbuild}
id "$user" >/dev/null 2>&1 || die "build user '$user' does not exist (ci/setup-host.sh creates avfbuild)"
command -v makepkg >/dev/null || die "makepkg not found (install makepkg, see ci/setup-host.sh)"
[[ $(id -u) == 0 ]] || die "must run as root (it runs makepkg as $user through runuser)"

avf_patches=(arm64-balloon.patch virtual-cpufreq.patch)
build_args=()
offline=1
if [[ -n ${AVF_KERNEL_PATCH_DIR:-} ]]; then
  for p in "${avf_patches[@]}"; do
    [[ -f $AVF_KERNEL_PATCH_DIR/$p ]] || die "AVF_KERNEL_PATCH_DIR=$AVF_KERNEL_PATCH_DIR has no $p"
    build_args+=(--patch "$AVF_KERNEL_PATCH_DIR/$p")
  done
  offline=0
else
  log "WARNING: AVF_KERNEL_PATCH_DIR not set: packaging WITHOUT the AVF patches (${avf_patches[*]}); the package description and /usr/share/doc/linux-avf/AVF-PATCHES say so"
fi

src_tarball=${AVF_KERNEL_SRC:-/usr/src/linux-source-6.1.tar.xz}
export AVF_KERNEL_SRC=$src_tarball
export AVF_CACHE=${AVF_CACHE:-/var/cache/arch-avf}

# 1. Compile (or find in the cache) with exactly the inputs makepkg will use.
kdir=$("$here/build.sh" "${build_args[@]}" | tail -n1)
release=$(<"$kdir/release")
pkgver=$(sed -n 's/^pkgver=//p' "$here/PKGBUILD")
pkgrel=$(sed -n 's/^pkgrel=//p' "$here/PKGBUILD")
[[ ${release%%-*} == "$pkgver" ]] ||
  die "$here/PKGBUILD: pkgver=$pkgver does not match the kernel source ($release from $src_tarball); update pkgver"

# What makepkg starts from besides the kernel cache dir.
inputs=("$here/PKGBUILD" "$here/build.sh" "$here/collect-headers.sh"
  "$here/linux-avf.preset" "$here"/config/*.config)

# The key of the packages this would make: the kernel's cache key (its dir
# name, which covers the source, patches, config and compiler) and the
# packaging inputs: this script, the files above, makepkg and its config.
if ((key_only)); then
  {
    printf 'kernel %s\n' "${kdir##*/}"
    printf 'offline %s\n' "$offline"
    printf 'makepkg %s\n' "$(makepkg --version | head -n1)"
    for f in "${BASH_SOURCE[0]}" "${inputs[@]}" /etc/makepkg.conf; do
      printf 'file %s %s\n' "${f##*/}" "$(sha256sum <"$f" | cut -d' ' -f1)"
    done
  } | sha256sum | cut -c1-16
  exit 0
fi

# 2. makepkg in a scratch dir the build user owns.
work=$(mktemp -d /tmp/linux-avf-pkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$work/start
mkdir -p "$start" "$work/pkgs" "$work/build"
cp "${inputs[@]}" "$start/"
if ((offline == 0)); then
  # Present as the files the PKGBUILD would download (gitiles' base64 form).
  for p in "${avf_patches[@]}"; do
    base64 -w0 <"$AVF_KERNEL_PATCH_DIR/$p" >"$start/$p.b64"
  done
  # Online sources also list the kernel.org tarball: use the local one.
  ln -s "$src_tarball" "$start/linux-$pkgver.tar.xz"
fi
# Cross packaging on an x86_64 host: the package architecture is aarch64.
sed -e 's/^CARCH=.*/CARCH="aarch64"/' -e 's/^CHOST=.*/CHOST="aarch64-unknown-linux-gnu"/' \
  -e "s/^PKGEXT=.*/PKGEXT='.pkg.tar.zst'/" /etc/makepkg.conf >"$work/makepkg.conf"
chown -R "$user" "$work"
chmod 755 "$work"

log "makepkg as $user (offline=$offline, kernel $release from cache $kdir)"
(cd "$start" && runuser -u "$user" -- env \
  AVF_KERNEL_OFFLINE="$offline" AVF_KERNEL_CACHE_ONLY=1 AVF_CACHE="$AVF_CACHE" \
  AVF_KERNEL_SRC="$src_tarball" PKGDEST="$work/pkgs" BUILDDIR="$work/build" \
  SRCDEST="$start" makepkg --config "$work/makepkg.conf" --nodeps --force --noconfirm >&2) ||
  die "makepkg failed for $here/PKGBUILD"

# .SRCINFO is committed; say when it no longer matches the PKGBUILD.
if ! (cd "$start" && runuser -u "$user" -- makepkg --printsrcinfo 2>/dev/null) | cmp -s - "$here/.SRCINFO"; then
  log "WARNING: $here/.SRCINFO is stale: regenerate it (see kernel/README.md)"
fi

# 3. Into the repo dir: copy beside, then rename (no half-written packages).
shopt -s nullglob
pkgs=("$work"/pkgs/linux-avf-*"$pkgver-$pkgrel"-aarch64.pkg.tar.zst)
((${#pkgs[@]} == 2)) || die "expected 2 packages from makepkg, got ${#pkgs[@]} in $work/pkgs"
for f in "${pkgs[@]}"; do
  name=${f##*/}
  cp "$f" "$repo/.$name.tmp"
  mv "$repo/.$name.tmp" "$repo/$name"
  printf '%s\n' "$repo/$name"
done
