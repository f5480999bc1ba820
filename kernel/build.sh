#!/usr/bin/env bash
# Builds the linux-avf kernel (arm64 Image with EFI stub, modules, config,
# module-build headers) from Debian's linux-source tarball, cross-compiled
# with aarch64-linux-gnu-gcc.
#
# Output: ${AVF_CACHE:-/var/cache/arch-avf}/kernel/<key>/ with
#   Image, config, release, avf-patches, modules/lib/modules/<release>/...,
#   headers/ (the tree /usr/lib/modules/<release>/build points at)
# where <key> hashes the source tarball, the config fragments, the patches,
# this script and the compiler version. The directory is printed as the last
# line of stdout; progress goes to stderr. A warm run only hashes and prints.
#
# Usage: kernel/build.sh [--patch FILE]... [--jobs N]
# Env:   AVF_CACHE, AVF_KERNEL_SRC (tarball, default
#        /usr/src/linux-source-6.1.tar.xz), AVF_KERNEL_CACHE_ONLY=1 (fail
#        instead of compiling: the PKGBUILD uses it so makepkg never
#        compiles a second time).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[kernel] %s\n' "$*" >&2; }
die() {
  printf 'kernel/build.sh: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# The "  CC" lines of a full build with the fragments here (measured), for
# the progress report; only a guide, the build does not depend on it.
KERNEL_OBJECTS=1350

patches=()
jobs=$(($(nproc) + 1))
while (($#)); do
  case $1 in
  --patch)
    (($# >= 2)) || die "--patch needs a file argument"
    [[ -f $2 ]] || die "patch file not found: $2"
    patches+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")")
    shift 2
    ;;
  --jobs)
    if (($# < 2)) || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then die "--jobs needs a positive integer"; fi
    jobs=$2
    shift 2
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown argument: $1 (try --help)" ;;
  esac
done

src_tarball=${AVF_KERNEL_SRC:-/usr/src/linux-source-6.1.tar.xz}
[[ -f $src_tarball ]] || die "kernel source tarball not found: $src_tarball (install linux-source-6.1, see ci/setup-host.sh, or set AVF_KERNEL_SRC)"
cross=aarch64-linux-gnu-
command -v "${cross}gcc" >/dev/null || die "${cross}gcc not found (install gcc-aarch64-linux-gnu)"

fragments=("$here/config/virt.config" "$here/config/avf.config")
optional_fragment=$here/config/avf-cpufreq.config
for f in "${fragments[@]}" "$optional_fragment"; do
  [[ -f $f ]] || die "config fragment missing: $f"
done

# --- cache key: content, not paths (the PKGBUILD runs a copy of this dir) ---
key=$(
  {
    printf 'src %s\n' "$(sha256sum <"$src_tarball" | cut -d' ' -f1)"
    printf 'cc %s\n' "$("${cross}gcc" --version | head -n1)"
    printf 'script %s\n' "$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    printf 'collect %s\n' "$(sha256sum <"$here/collect-headers.sh" | cut -d' ' -f1)"
    for f in "${fragments[@]}" "$optional_fragment"; do
      printf 'fragment %s %s\n' "$(basename "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
    done
    for p in "${patches[@]}"; do
      printf 'patch %s %s\n' "$(basename "$p")" "$(sha256sum <"$p" | cut -d' ' -f1)"
    done
  } | sha256sum | cut -c1-16
)

cache_root=${AVF_CACHE:-/var/cache/arch-avf}/kernel
out=$cache_root/$key

complete() { [[ -f $1/Image && -f $1/release && -f $1/config && -d $1/modules && -d $1/headers ]]; }

if complete "$out"; then
  log "cached: $out ($(cat "$out/release"))"
  printf '%s\n' "$out"
  exit 0
fi

if [[ ${AVF_KERNEL_CACHE_ONLY:-0} == 1 ]]; then
  die "no cached kernel for key $key in $cache_root and AVF_KERNEL_CACHE_ONLY=1 (run kernel/build.sh first with the same inputs)"
fi

mkdir -p "$cache_root" || die "cannot create cache dir $cache_root (set AVF_CACHE to a writable dir)"
# One builder per key; a second caller waits and then finds the result.
exec 9>"$cache_root/.lock-$key"
flock 9
if complete "$out"; then
  log "cached (built by a concurrent run): $out"
  printf '%s\n' "$out"
  exit 0
fi

work=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
tree=$work/src
stage=$work/out
mkdir -p "$tree" "$stage"
t0=$SECONDS

log "extracting $(basename "$src_tarball")"
tar -xf "$src_tarball" -C "$tree" --strip-components=1

if ((${#patches[@]})); then
  for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$tree" -p1 --forward --batch --quiet <"$p" ||
      die "patch does not apply to $(basename "$src_tarball"): $p"
  done
  printf '%s\n' "${patches[@]##*/}" >"$stage/avf-patches"
else
  log "WARNING: building WITHOUT the AVF patches (arm64-balloon.patch, virtual-cpufreq.patch from AOSP packages/modules/Virtualization build/debian/kernel/patches/avf/ at android-16.0.0_r2): not available offline; ANDROID_V_CPUFREQ_VIRT is absent"
  printf 'none: built without arm64-balloon.patch and virtual-cpufreq.patch (offline build)\n' >"$stage/avf-patches"
fi

make_k() {
  nice -n 10 make -C "$tree" ARCH=arm64 CROSS_COMPILE="$cross" \
    KBUILD_BUILD_USER=avf KBUILD_BUILD_HOST=arch-avf \
    KBUILD_BUILD_TIMESTAMP="$(date -u -r "$src_tarball" '+%Y-%m-%d')" "$@"
}

merge=("${fragments[@]}")
# The virtual cpufreq driver exists only with AOSP's patch; enable it where it exists.
if grep -qs '^config ANDROID_V_CPUFREQ_VIRT' "$tree"/drivers/cpufreq/Kconfig*; then
  merge+=("$optional_fragment")
  log "ANDROID_V_CPUFREQ_VIRT present in the source: enabling it"
fi

log "configuring: allnoconfig + ${merge[*]##*/}"
: >"$work/base.config"
(cd "$tree" && ARCH=arm64 CROSS_COMPILE=$cross scripts/kconfig/merge_config.sh -n \
  "$work/base.config" "${merge[@]}" >"$work/merge.log" 2>&1) ||
  { cat "$work/merge.log" >&2; die "merge_config.sh failed"; }

# merge_config.sh drops options whose dependencies are unmet without failing:
# every option a fragment names must be in the final .config exactly.
missing=()
for frag in "${merge[@]}"; do
  frag_name=${frag##*/}
  while IFS= read -r line; do
    case $line in
    CONFIG_*=*) opt=${line%%=*} ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }
      opt=${opt%% *}
      ;;
    *) continue ;;
    esac
    got=$(grep -E "^(# )?${opt}[= ]" "$tree/.config" || true)
    [[ $got == "$line" ]] || missing+=("$frag_name: wanted '$line', got '${got:-<absent>}'")
  done <"$frag"
done
if ((${#missing[@]})); then
  printf '  %s\n' "${missing[@]}" >&2
  die "${#missing[@]} config option(s) did not land in the final .config (unmet dependencies?)"
fi
log "config ok: every fragment option landed"

log "compiling Image and modules with -j$jobs (cold build: about 10 minutes on 2 cores)"
# make runs in the background so a person can follow: every 30 s, the count
# of compiled objects (make's "  CC" lines) against a full build's.
make_k -j"$jobs" Image modules >"$work/make.log" 2>&1 &
make_pid=$!
trap 'kill "$make_pid" 2>/dev/null; cleanup' EXIT
t_make=$SECONDS
next_report=30
while kill -0 "$make_pid" 2>/dev/null; do
  sleep 1
  if ((SECONDS - t_make >= next_report)); then
    objs=$(grep -c '^  CC' "$work/make.log" || true)
    log "compiling: $objs of about $KERNEL_OBJECTS objects, $((SECONDS - t_make)) s"
    next_report=$((next_report + 30))
  fi
done
make_rc=0
wait "$make_pid" || make_rc=$?
trap cleanup EXIT
((make_rc == 0)) ||
  { tail -n 40 "$work/make.log" >&2; die "kernel build failed (exit $make_rc; full log was $work/make.log)"; }
log "compiled $(grep -c '^  CC' "$work/make.log" || true) objects in $((SECONDS - t_make)) s"

release=$(make_k -s kernelrelease)
log "release $release"
make_k INSTALL_MOD_PATH="$stage/modules" INSTALL_MOD_STRIP=1 modules_install >"$work/modules.log" 2>&1 ||
  { tail -n 20 "$work/modules.log" >&2; die "modules_install failed"; }
# These point into the temporary tree; the headers package provides build/.
rm -f "$stage/modules/lib/modules/$release/build" "$stage/modules/lib/modules/$release/source"

cp "$tree/arch/arm64/boot/Image" "$stage/Image"
cp "$tree/.config" "$stage/config"
cp "$tree/System.map" "$stage/System.map"
printf '%s\n' "$release" >"$stage/release"

log "collecting headers for out-of-tree modules"
"$here/collect-headers.sh" "$tree" "$stage/headers"

chmod -R a+rX "$stage"
rm -rf "$out"
mv "$stage" "$out"
log "built in $((SECONDS - t0)) s: $out (Image $(stat -c %s "$out/Image") bytes, $(find "$out/modules" -name '*.ko' | wc -l) modules)"
printf '%s\n' "$out"
