#!/usr/bin/env bash
# 20-install-packages.sh --base B --in ROOTFS_DIR [--kernel stock|avf] [--dry-run]
# 20-install-packages.sh --base B --only packages|kernel [--kernel stock|avf]
#
# Builds the AVF packages from image-build/pkgbuilds with makepkg (as the
# build user, cross-compiling for aarch64), collects them with the kernel
# package (--kernel avf) in the local pacman repo $AVF_OUT/repo/aarch64, and
# installs them into a copy of the rootfs from stage 10 the base's way.
# Output: a rootfs directory in $AVF_CACHE/<base>/ (last line of stdout).
# --only builds into the package cache only, without a rootfs (build-all.sh
# runs both while stage 10 bootstraps; the full run then finds them cached):
# packages = the base's AVF packages but the native ones (they need the
# rootfs), kernel = linux-avf (compiling the kernel when cold).
set -euo pipefail
STAGE=20-install-packages
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
ONLY=""
common=()
while (($#)); do
  if [[ $1 == --only ]]; then
    (($# >= 2)) || die "--only needs a value (packages or kernel)"
    ONLY=$2
    shift 2
  else
    common+=("$1")
    shift
  fi
done
parse_common_args "${common[@]}"
case $ONLY in
  "" | packages | kernel) ;;
  *) die "--only must be packages or kernel, not '$ONLY'" ;;
esac
if [[ -z $ONLY ]]; then
  [[ -n $IN_DIR ]] || die "--in ROOTFS_DIR (the output of 10-build-rootfs.sh) is required"
  [[ $AVF_DRY_RUN == 1 || -d $IN_DIR ]] || die "--in $IN_DIR: no such directory"
fi

conf="$IB/makepkg-aarch64.conf"
use_source_date_epoch

# Inputs of a package beyond its PKGBUILD directory: the repo-relative
# paths its pkgbuilds/<name>/extra-inputs lists, one a line (# comments).
pkg_extra_inputs() {
  local list="$AVF_PKGBUILDS/$1/extra-inputs" p
  [[ -f $list ]] || return 0
  while read -r p; do
    [[ -z $p || $p == \#* ]] && continue
    printf '%s\n' "$AVF_REPO/$p"
  done <"$list"
}

# build_pkg NAME: sets PKG_DIR to the directory holding NAME's package files
# (stdout stays free for the dry-run listing).
build_pkg() {
  local name=$1 dir="$AVF_PKGBUILDS/$1" key final extra home work
  [[ -f $dir/PKGBUILD ]] || die "$dir/PKGBUILD: no such file"
  mapfile -t extra < <(pkg_extra_inputs "$name")
  key=$(hash_inputs "$dir" "$conf" "${extra[@]}")
  final="$AVF_CACHE/pkgs/$name-$key"
  if [[ $AVF_DRY_RUN == 1 ]]; then
    if [[ " ${BASE_NATIVE_PKGS[*]} " == *" $name "* ]]; then
      base_build_native "$name" "$dir" "$final" "$IN_DIR"
    else
      run makepkg --config "$conf" --nodeps --noconfirm --force --cleanbuild -p "$dir/PKGBUILD"
    fi
    PKG_DIR=$final
    return
  fi
  if compgen -G "$final/*.pkg.tar.zst" >/dev/null; then
    cache_hit "$final"
    log "cached package: $name ($key)"
    PKG_DIR=$final
    return
  fi
  log "building package $name"
  if [[ " ${BASE_NATIVE_PKGS[*]} " == *" $name "* ]]; then
    local ntmp
    mktemp_near ntmp "$AVF_CACHE/pkgs" "$name-$key"
    base_build_native "$name" "$dir" "$ntmp" "$IN_DIR"
    compgen -G "$ntmp/*.pkg.tar.zst" >/dev/null || die "$name: native makepkg produced no package"
    publish "$ntmp" "$final"
    PKG_DIR=$final
    return
  fi
  home=$(getent passwd "$AVF_BUILD_USER" | cut -d: -f6)
  work=$(runuser -u "$AVF_BUILD_USER" -- mktemp -d "$home/pkgdest.XXXXXX")
  _TMP_DIRS+=("$work")
  local cargo_bin tc err
  cargo_bin=$(rustup which cargo)
  tc=$(dirname "$cargo_bin")
  err=$(mktemp)
  _TMP_DIRS+=("$err")
  # makepkg's own output goes to the log; its last error line is the cause.
  if ! (cd "$dir" && as_builder env PKGDEST="$work" AVF_REPO="$AVF_REPO" AVF_CARGO="$cargo_bin" \
    RUSTC="$tc/rustc" PATH="$tc:$PATH" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
    makepkg --config "$conf" --nodeps --noconfirm --force --cleanbuild) >&2 2> >(tee "$err" >&2); then
    sleep 0.2
    die "${dir#"$AVF_REPO"/}/PKGBUILD: makepkg failed: $(sed -e 's/\x1b\[[0-9;]*m//g' "$err" | grep -E 'ERROR|error' | tail -n1 | sed 's/^==> ERROR: //')"
  fi
  compgen -G "$work/*.pkg.tar.zst" >/dev/null || die "$name: makepkg produced no package"
  local tmp
  mktemp_near tmp "$AVF_CACHE/pkgs" "$name-$key"
  cp "$work"/*.pkg.tar.zst "$tmp/"
  chmod 755 "$tmp"
  publish "$tmp" "$final"
  prune_cache "$AVF_CACHE/pkgs" "$name"
  PKG_DIR=$final
}

# build_kernel_pkg: sets kdir to the directory holding the linux-avf
# packages, building them (and the kernel, when cold) if not cached.
build_kernel_pkg() {
  [[ -f $AVF_REPO/kernel/package.sh ]] ||
    die "--kernel avf needs kernel/package.sh (the linux-avf issue); use --kernel stock"
  if [[ $AVF_DRY_RUN == 1 ]]; then
    # The key needs the kernel's (hashing, or compiling, it): a placeholder.
    kdir="$AVF_CACHE/pkgs/linux-avf-KEY"
    run bash "$AVF_REPO/kernel/package.sh" "$kdir"
  else
    # Cached like the other packages, keyed by the kernel's cache key and
    # the packaging inputs: a warm kernel cache does not re-run makepkg.
    kkey=$(bash "$AVF_REPO/kernel/package.sh" --cache-key) ||
      die "kernel/package.sh --cache-key failed (see its output above)"
    [[ $kkey =~ ^[0-9a-f]{16}$ ]] || die "kernel/package.sh --cache-key printed '$kkey', not a key"
    kdir="$AVF_CACHE/pkgs/linux-avf-$kkey"
    if compgen -G "$kdir/linux-avf-*.pkg.tar.zst" >/dev/null; then
      cache_hit "$kdir"
      log "cached package: linux-avf ($kkey)"
    else
      ktmp=""
      mktemp_near ktmp "$AVF_CACHE/pkgs" "linux-avf-$kkey"
      log "building linux-avf packages (kernel/package.sh)"
      bash "$AVF_REPO/kernel/package.sh" "$ktmp" >&2 || die "kernel/package.sh failed (see its output above)"
      compgen -G "$ktmp/linux-avf-*.pkg.tar.zst" >/dev/null || die "kernel/package.sh produced no linux-avf-*.pkg.tar.zst"
      publish "$ktmp" "$kdir"
      prune_cache "$AVF_CACHE/pkgs" linux-avf
    fi
  fi
}

mapfile -t names < <(base_avf_packages)
case $ONLY in
  packages)
    for n in "${names[@]}"; do
      [[ " ${BASE_NATIVE_PKGS[*]} " == *" $n "* ]] || build_pkg "$n"
    done
    printf '%s\n' "$AVF_CACHE/pkgs"
    exit 0
    ;;
  kernel)
    [[ $KERNEL == avf ]] || die "--only kernel builds linux-avf: it needs --kernel avf"
    build_kernel_pkg
    printf '%s\n' "$kdir"
    exit 0
    ;;
esac

# The packages for this image: the base's AVF set, plus our kernel.
pkg_dirs=()
for n in "${names[@]}"; do
  build_pkg "$n"
  pkg_dirs+=("$PKG_DIR")
done
if [[ $KERNEL == avf ]]; then
  build_kernel_pkg
  pkg_dirs+=("$kdir")
fi

# The package files to install: everything but the headers package.
pkg_files=()
if [[ $AVF_DRY_RUN == 1 ]]; then
  # Nothing was built: name the files makepkg would write.
  for i in "${!names[@]}"; do
    si="$AVF_PKGBUILDS/${names[$i]}/.SRCINFO"
    v=$(sed -n 's/^\tpkgver = //p' "$si")-$(sed -n 's/^\tpkgrel = //p' "$si")
    pkg_files+=("${pkg_dirs[$i]}/${names[$i]}-$v-aarch64.pkg.tar.zst")
  done
  [[ $KERNEL == avf ]] && pkg_files+=("$kdir/linux-avf-PKGVER-PKGREL-aarch64.pkg.tar.zst")
else
  for d in "${pkg_dirs[@]}"; do
    for f in "$d"/*.pkg.tar.zst; do
      [[ -e $f ]] || continue
      case $(basename "$f") in *-headers-*) continue ;; esac
      pkg_files+=("$f")
    done
  done
fi

# The local pacman repo (layout.md), rebuilt whole and swapped in.
repo=$(repo_dir)
if [[ $AVF_DRY_RUN == 1 ]]; then
  run repo-add "$repo/avf.db.tar.gz" "${pkg_files[@]}"
else
  rtmp=""
  mktemp_near rtmp "$(dirname "$repo")" aarch64
  for d in "${pkg_dirs[@]}"; do cp "$d"/*.pkg.tar.zst "$rtmp/"; done
  repo-add -q "$rtmp/avf.db.tar.gz" "$rtmp"/*.pkg.tar.zst >&2 || die "repo-add failed in $rtmp"
  chmod 755 "$rtmp"
  publish "$rtmp" "$repo"
fi

sums=""
if ((${#pkg_files[@]})) && [[ $AVF_DRY_RUN != 1 ]]; then
  sums=$(sha256sum "${pkg_files[@]}" | cut -d' ' -f1)
fi
key=$(hash_inputs -s "$(basename "$IN_DIR")" -s "$sums" -s "$(declare -f base_install_avf)" -s stage=20v1)
final="$AVF_CACHE/$BASE/20-packages-$key"

finish_if_dry_or_cached "$final" base_install_avf "$final" "${pkg_files[@]}"

mktemp_near tmp "$AVF_CACHE/$BASE" "20-packages-$key"
log "copying rootfs"
cp -a --reflink=auto "$IN_DIR/." "$tmp/"
log "installing: $(printf '%s ' "${pkg_files[@]##*/}")"
base_install_avf "$tmp" "${pkg_files[@]}"
publish "$tmp" "$final"
prune_cache "$AVF_CACHE/$BASE" 20-packages
printf '%s\n' "$final"
