# shellcheck shell=bash
# Shared by every stage: paths, logging, one-line errors, tool checks, cache
# keys, atomic publishing and dry-run. Sourced, never executed.

AVF_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IB="$AVF_REPO/image-build"
AVF_OUT=${AVF_OUT:-$AVF_REPO/out}
AVF_CACHE=${AVF_CACHE:-/var/cache/arch-avf}
AVF_PKGBUILDS=${AVF_PKGBUILDS:-$IB/pkgbuilds}
AVF_BUILD_USER=${AVF_BUILD_USER:-avfbuild}
AVF_BASES=${AVF_BASES:-$IB/bases}
AVF_PACKAGES=${AVF_PACKAGES:-$IB/packages.txt}
AVF_DRY_RUN=${AVF_DRY_RUN:-0}
STAGE=${STAGE:-$(basename "$0" .sh)}
# Partition sizes (multiples of 4 MiB, the app rounds to that).
AVF_ROOT_MIB=${AVF_ROOT_MIB:-2048}
AVF_EFI_MIB=${AVF_EFI_MIB:-256}
export AVF_REPO AVF_OUT AVF_CACHE AVF_PKGBUILDS AVF_BASES AVF_PACKAGES AVF_BUILD_USER AVF_DRY_RUN

log() { printf '[%s] %s\n' "$STAGE" "$*" >&2; }

# The one line a failed build ends with. Cleanup traps run after it.
die() {
  printf '%s: error: %s\n' "$STAGE" "$*" >&2
  exit 1
}

# Any failing command not handled explicitly becomes one line naming it.
_on_err() {
  local rc=$? cmd=$BASH_COMMAND
  printf '%s: error: command failed (exit %d): %s\n' "$STAGE" "$rc" "$cmd" >&2
  exit "$rc"
}
trap _on_err ERR
set -o errtrace

# heartbeat_start WHAT [LOGFILE]: until heartbeat_stop, every 30 s
# (AVF_HEARTBEAT_S) log that WHAT is still running, for how long, and
# LOGFILE's last line: a long step whose own output is quiet (mmdebstrap
# installing) can be followed.
_HEARTBEAT_PID=""
heartbeat_start() {
  local what=$1 logf=${2:-} t0=$SECONDS
  (
    trap - ERR
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    while true; do
      sleep "${AVF_HEARTBEAT_S:-30}" &
      sp=$!
      wait "$sp"
      last=""
      [[ -n $logf ]] && last=$(tail -n1 "$logf" 2>/dev/null | cut -c1-120)
      log "$what: still running, $((SECONDS - t0)) s${last:+ (last: $last)}"
    done
  ) &
  _HEARTBEAT_PID=$!
}
heartbeat_stop() {
  [[ -n $_HEARTBEAT_PID ]] || return 0
  kill "$_HEARTBEAT_PID" 2>/dev/null || true
  wait "$_HEARTBEAT_PID" 2>/dev/null || true
  _HEARTBEAT_PID=""
}

# Temp dirs registered here are removed on any exit; publish() unregisters.
_TMP_DIRS=()
_cleanup() {
  local d
  heartbeat_stop
  for d in "${_TMP_DIRS[@]}"; do
    [[ -n $d && -e $d ]] && rm -rf --one-file-system "$d"
  done
  return 0
}
trap _cleanup EXIT

# mktemp_near VAR DIR NAME: sets VAR to a new temp dir beside DIR/NAME
# (same filesystem, so the final rename is atomic), removed on exit unless
# published. Not a $(...) function: the registration must reach this shell.
mktemp_near() {
  local var=$1 parent=$2 name=$3 t
  mkdir -p "$parent"
  t=$(mktemp -d "$parent/.tmp-$name.XXXXXX")
  _TMP_DIRS+=("$t")
  printf -v "$var" '%s' "$t"
}

# publish TMP FINAL: replace FINAL by TMP with renames only.
publish() {
  local tmp=$1 final=$2 old=""
  if [[ -e $final ]]; then
    old="$final.old.$$"
    mv "$final" "$old"
  fi
  mv "$tmp" "$final"
  [[ -n $old ]] && rm -rf --one-file-system "$old"
  local i
  for i in "${!_TMP_DIRS[@]}"; do
    [[ ${_TMP_DIRS[$i]} == "$tmp" ]] && unset '_TMP_DIRS[i]'
  done
  return 0
}

# cache_hit DIR: mark a reused cache entry as recently used (for pruning).
cache_hit() { touch "$1" 2>/dev/null || true; }

# finish_if_dry_or_cached FINAL DRY_CMD...: the end of a cached stage that
# has nothing to do. In a dry run, DRY_CMD... prints what the stage would do
# and the stage exits printing FINAL; otherwise, if FINAL is already in the
# cache, it is marked used and the stage exits printing FINAL. Returns only
# when FINAL must be built. Not a $(...) function: its exit ends the stage.
finish_if_dry_or_cached() {
  local final=$1
  shift
  if [[ $AVF_DRY_RUN == 1 ]]; then
    "$@"
    printf '%s\n' "$final"
    exit 0
  fi
  if [[ -d $final ]]; then
    cache_hit "$final"
    log "cached: $final"
    printf '%s\n' "$final"
    exit 0
  fi
}

# prune_cache DIR PREFIX [KEEP]: keep the KEEP ($AVF_CACHE_KEEP, 2) most recently used
# DIR/PREFIX-* entries (e.g. both kernels' rootfs), remove older ones.
prune_cache() {
  local dir=$1 prefix=$2 keep=${3:-${AVF_CACHE_KEEP:-2}} o old=()
  mapfile -t old < <(find "$dir" -mindepth 1 -maxdepth 1 -type d -name "$prefix-*" -printf '%T@ %p\n' |
    sort -rn | awk -v k="$keep" 'NR > k { sub(/^[^ ]+ /, ""); print }')
  for o in "${old[@]}"; do
    log "pruning old cache entry $o"
    rm -rf --one-file-system "$o"
  done
}

# Which package provides each host tool, as "debian-package arch-package".
declare -A TOOL_PKG=(
  [mmdebstrap]="mmdebstrap mmdebstrap"
  [makepkg]="makepkg pacman"
  [repo-add]="pacman-package-manager pacman"
  [pacman]="pacman-package-manager pacman"
  [mkfs.ext4]="e2fsprogs e2fsprogs"
  [tune2fs]="e2fsprogs e2fsprogs"
  [debugfs]="e2fsprogs e2fsprogs"
  [e2fsck]="e2fsprogs e2fsprogs"
  [mkfs.vfat]="dosfstools dosfstools"
  [fsck.fat]="dosfstools dosfstools"
  [mcopy]="mtools mtools"
  [mmd]="mtools mtools"
  [mdir]="mtools mtools"
  [bsdtar]="libarchive-tools libarchive"
  [zstd]="zstd zstd"
  [pigz]="pigz pigz"
  [tar]="tar tar"
  [jq]="jq jq"
  [curl]="curl curl"
  [runuser]="util-linux util-linux"
  [arch-test]="arch-test arch-test"
  [arch-chroot]="arch-install-scripts arch-install-scripts"
  [sha256sum]="coreutils coreutils"
  [md5sum]="coreutils coreutils"
  [gpg]="gpg gnupg"
  [aarch64-linux-gnu-gcc]="gcc-aarch64-linux-gnu aarch64-linux-gnu-gcc"
  [rustup]="rustup rustup"
  [git]="git git"
)

# need_tools TOOL...: fail on the first missing one, naming its package.
need_tools() {
  local t pk
  for t in "$@"; do
    if ! command -v "$t" >/dev/null 2>&1; then
      pk=${TOOL_PKG[$t]:-"? ?"}
      die "missing tool '$t' (install package '${pk%% *}' on Debian/Ubuntu, '${pk##* }' on Arch)"
    fi
  done
}

# hash_inputs PATH|-s STRING ...: one sha256 over files (sorted, by content
# and relative name) and literal strings. A PKGBUILD's extra-inputs list is
# left out of its directory's hash: the paths it names are hashed instead.
hash_inputs() {
  {
    while (($#)); do
      if [[ $1 == -s ]]; then
        printf 'str:%s\n' "$2"
        shift 2
        continue
      fi
      if [[ -d $1 ]]; then
        (cd "$1" && find . -type f ! -name '*.swp' ! -name extra-inputs -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
      elif [[ -e $1 ]]; then
        printf 'file:%s ' "$(basename "$1")"
        sha256sum <"$1"
      else
        printf 'absent:%s\n' "$1"
      fi
      shift
    done
  } | sha256sum | cut -c1-16
}

# run CMD...: execute, or in dry-run print it shell-quoted on stdout.
run() {
  if [[ $AVF_DRY_RUN == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    local rc=0
    "$@" || rc=$?
    ((rc == 0)) || die "command failed (exit $rc): $(printf '%.200s' "$*")"
  fi
}

# run_in ROOT CMD...: run an aarch64 command inside ROOT (chroot with the
# API filesystems that pacman/apt scriptlets expect).
run_in() {
  local root=$1
  shift
  if [[ $AVF_DRY_RUN == 1 ]]; then
    run arch-chroot "$root" "$@"
    return
  fi
  arch-chroot "$root" "$@"
}

# Partition GUIDs are derived from a seed, so rebuilding the same inputs gives
# the same GUIDs and vm_config.json. Independent of the layout on purpose:
# fstab is written before the layout is chosen.
avf_guid() {
  local base=$1 label=$2 h
  h=$(printf 'arch-avf:%s:%s:%s' "${AVF_GUID_SEED:-v1}" "$base" "$label" | sha256sum | cut -c1-32)
  # RFC 4122 version 4 / variant 1 bits, so tools accept it as a random UUID.
  printf '%s-%s-4%s-%x%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" \
    $(((0x${h:16:1} & 0x3) | 0x8)) "${h:17:3}" "${h:20:12}"
}

# The interface of a base: $AVF_BASES/<name>.sh (default bases/<name>.sh),
# sourced by parse_common_args and checked at once by load_base, so a missing
# name is one error naming the file, not a "command not found" stages later.
# Hooks that change the image run their commands through run/run_in (dry run).
# A base sets these variables:
AVF_BASE_VARS=(
  BASE_NAME # the base's name, the same as its file's (archlinuxarm, debian)
)
AVF_BASE_ARRAYS=(
  BASE_TOOLS       # host tools its hooks run (checked by stages 00 and 10)
  BASE_NATIVE_PKGS # AVF packages built by base_build_native (may be empty)
)
# (optional: BASE_SUITE, the release, part of stage 10's cache key), and
# defines these functions:
AVF_BASE_HOOKS=(
  base_avf_packages # prints the AVF packages (pkgbuilds/ names) it installs
  base_mirror_check # dies within seconds when its package mirror is unreachable
  base_bootstrap    # TARGET: bootstraps the aarch64 rootfs with guest_packages (stage 10)
  base_install_avf  # ROOT PKGFILE...: installs the AVF package files into ROOT (stage 20)
  base_kernel_files # ROOT: prints "kernel initrd|- release" of the stock kernel (stage 40)
  base_configure    # ROOT: the base's own configuration (stage 30)
)
# and, when BASE_NATIVE_PKGS is not empty, base_build_native NAME PKGDIR
# OUTDIR ROOTFS: makepkg NAME natively for aarch64 into OUTDIR (stage 20).
# Its distribution packages are its column of packages.txt (guest_packages).

# load_base NAME: sources the base's file and checks the interface above.
# Not a $(...) function: the base's definitions must reach this shell.
load_base() {
  local name=$1 file="$AVF_BASES/$1.sh" v h
  [[ -f $file ]] || die "$file: no such base file"
  # Nothing inherited may stand in for what the file must define.
  unset "${AVF_BASE_VARS[@]}" "${AVF_BASE_ARRAYS[@]}"
  unset -f "${AVF_BASE_HOOKS[@]}" base_build_native
  # shellcheck source=bases/debian.sh
  source "$file"
  local iface="the interface of a base is listed in image-build/lib/common.sh"
  for v in "${AVF_BASE_VARS[@]}" "${AVF_BASE_ARRAYS[@]}"; do
    declare -p "$v" >/dev/null 2>&1 || die "$file: base '$name' does not set $v ($iface)"
  done
  for v in "${AVF_BASE_ARRAYS[@]}"; do
    [[ $(declare -p "$v") == "declare -a"* ]] || die "$file: base '$name': $v must be an array ($iface)"
  done
  [[ $BASE_NAME == "$name" ]] || die "$file: base '$name' sets BASE_NAME to '$BASE_NAME' ($iface)"
  for h in "${AVF_BASE_HOOKS[@]}"; do
    declare -F "$h" >/dev/null || die "$file: base '$name' does not define $h ($iface)"
  done
  if ((${#BASE_NATIVE_PKGS[@]})) && ! declare -F base_build_native >/dev/null; then
    die "$file: base '$name' does not define base_build_native, which BASE_NATIVE_PKGS needs ($iface)"
  fi
  local bad
  bad=$(_packages_awk check "$name") || die "$AVF_PACKAGES: cannot read it"
  [[ -z $bad ]] || die "$AVF_PACKAGES: $bad"
}

# _packages_awk check|list BASE: reads packages.txt (its header names the
# columns; the last, why, is the rest of the line). check prints the first
# problem (no column for BASE, a short row, a bad kernel value, a "-" without
# a why); list prints BASE's packages for $KERNEL in order, each once.
_packages_awk() {
  [[ -r $AVF_PACKAGES ]] || return 1
  awk -v mode="$1" -v base="$2" -v kernel="${KERNEL:-avf}" '
    function bad(msg) {
      found = 1
      if (mode == "check") { print "line " NR ": " msg; exit }
      print "packages.txt line " NR ": " msg >"/dev/stderr"
      exit 1
    }
    /^[[:space:]]*(#|$)/ { next }
    !ncol {
      ncol = NF
      for (i = 1; i <= NF; i++) col[$i] = i
      if (NF < 4 || $1 != "what" || $2 != "kernel" || $NF != "why")
        bad("the header must name the columns what, kernel, <base>..., why")
      if (!(base in col)) bad("no column for base \"" base "\"")
      next
    }
    {
      if (NF < ncol - 1) bad("row \"" $1 "\" has " NF " columns, the header " ncol - 1 " (+ why)")
      k = $col["kernel"]
      if (k != "any" && k != "stock") bad("row \"" $1 "\": kernel must be any or stock, not \"" k "\"")
      if (mode == "check") {
        for (c in col) if (col[c] > 2 && col[c] < ncol && $col[c] == "-" && NF < ncol)
          bad("row \"" $1 "\": \"-\" for " c " needs a why")
        next
      }
      p = $col[base]
      if (p == "-" || (k == "stock" && kernel != "stock") || seen[p]++) next
      print p
    }
    END { if (!found && !ncol) print "no header row" }' "$AVF_PACKAGES"
}

# guest_packages: the base's distribution packages for $KERNEL, one a line,
# from packages.txt (checked by load_base).
guest_packages() { _packages_awk list "$BASE_NAME"; }

# Parses the common flags into BASE, LAYOUT, KERNEL, IN_DIR.
parse_common_args() {
  BASE=archlinuxarm LAYOUT=efi KERNEL=avf IN_DIR=""
  while (($#)); do
    case $1 in
      --base | --layout | --kernel | --in) (($# >= 2)) || die "$1 needs a value (see --help)" ;;
    esac
    case $1 in
      --base) BASE=${2:-}; shift 2 ;;
      --layout) LAYOUT=${2:-}; shift 2 ;;
      --kernel) KERNEL=${2:-}; shift 2 ;;
      --in) IN_DIR=${2:-}; shift 2 ;;
      --dry-run) AVF_DRY_RUN=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  case $BASE in debian | archlinuxarm) ;; *) die "--base must be debian or archlinuxarm, not '$BASE'" ;; esac
  case $LAYOUT in efi | direct) ;; *) die "--layout must be efi or direct, not '$LAYOUT'" ;; esac
  case $KERNEL in stock | avf) ;; *) die "--kernel must be stock or avf, not '$KERNEL'" ;; esac
  export BASE LAYOUT KERNEL AVF_DRY_RUN
  load_base "$BASE"
}

usage() {
  sed -n '2,/^[^#]/{/^#/!d; s/^# \{0,1\}//; p}' "$0" >&2
}

# as_builder CMD...: run as the unprivileged build user, with makepkg's and
# cargo's writable directories in that user's home (the repo stays read-only).
as_builder() {
  local home
  home=$(getent passwd "$AVF_BUILD_USER" | cut -d: -f6)
  [[ -n $home ]] || die "build user $AVF_BUILD_USER does not exist (run 00-prepare-environment.sh)"
  runuser -u "$AVF_BUILD_USER" -- mkdir -p "$home/build" "$home/srcdest" "$home/pkgdest" "$home/cache/target"
  runuser -u "$AVF_BUILD_USER" -- env HOME="$home" BUILDDIR="$home/build" SRCDEST="$home/srcdest" \
    PKGDEST="$home/pkgdest" LOGDEST="$home/build" CARGO_HOME="$home/.cargo" \
    CARGO_TARGET_DIR="$home/cache/target" "$@"
}

# use_source_date_epoch: sets and exports SOURCE_DATE_EPOCH: the caller's,
# else the HEAD commit's time, else 2025-01-01 (no git). The one place that
# default lives. Called by what stamps dates (stages 20, 40, 50, build-all
# before 40), never before stage 10: mmdebstrap behaves differently when it
# sees one. Not a $(...) function: its die must end the stage.
use_source_date_epoch() {
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$AVF_REPO" log -1 --format=%ct 2>/dev/null || echo 1735689600)}
  [[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, not '$SOURCE_DATE_EPOCH'"
  export SOURCE_DATE_EPOCH
}

# The <n> of the build id: AVF_BUILD_NUMBER, or the commit count.
# build_id = AVF_BUILD_ID_BASE + build number, at least the id from which
# Android 17's Terminal app uses ttyd over vsock, which the image serves
# (avf-ttyd-vsock.socket; see stage 40).
AVF_TTYD_VSOCK_BUILD_ID=5106
AVF_BUILD_ID_BASE=$AVF_TTYD_VSOCK_BUILD_ID

avf_build_number() {
  if [[ -n ${AVF_BUILD_NUMBER:-} ]]; then
    [[ $AVF_BUILD_NUMBER =~ ^[0-9]+$ ]] || die "AVF_BUILD_NUMBER must be a number, not '$AVF_BUILD_NUMBER'"
    printf '%s\n' "$AVF_BUILD_NUMBER"
  else
    git -C "$AVF_REPO" rev-list --count HEAD 2>/dev/null || echo 0
  fi
}

# The local pacman repo of AVF packages (layout.md).
repo_dir() { printf '%s\n' "$AVF_OUT/repo/aarch64"; }
