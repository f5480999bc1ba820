#!/usr/bin/env bash
# build-all.sh [--base debian|archlinuxarm] [--layout efi|direct] [--kernel stock|avf] [--dry-run]
#
# Builds the payload the Android Terminal app installs: stages 00 to 50.
# Defaults: --base archlinuxarm --layout efi --kernel avf (our linux-avf; stock = the base's own kernel, kept for the benchmark).
# Output: $AVF_OUT/<base>-<layout>/{payload/,images.tar.gz,build-info.json};
# the last line of stdout is the tarball path. Stages 10-30 are cached in
# $AVF_CACHE by input hash and shared between layouts; 40-50 are skipped
# when the published output was built from the same inputs.
# --dry-run prints the commands of the bootstrap and package stages instead
# of running them (the Arch base cannot be run without its mirror).
# Stage 20's package builds (the kernel, the AVF packages) need no rootfs:
# they run in the background while stage 10 bootstraps (cold: the kernel
# is the long step), and stage 20 then finds them cached.
set -euo pipefail
STAGE=build-all
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/background.sh
source "$IB/lib/background.sh"
parse_common_args "$@"
args=(--base "$BASE" --layout "$LAYOUT" --kernel "$KERNEL")
[[ $AVF_DRY_RUN == 1 ]] && args+=(--dry-run)
start=$SECONDS

# stage NAME ARGS...: run a stage; its stdout but the last line is passed on
# (dry-run commands), the last line is its result. On failure the stage has
# already printed the one-line cause.
RESULT=""
stage() {
  local s=$1 out rc=0 t=$SECONDS
  shift
  out=$("$IB/$s" "${args[@]}" "$@") || rc=$?
  ((rc == 0)) || exit "$rc"
  log "${s%.sh}: $((SECONDS - t)) s"
  [[ $out == *$'\n'* ]] && printf '%s\n' "${out%$'\n'*}"
  RESULT=${out##*$'\n'}
}

"$IB/00-prepare-environment.sh" "${args[@]}" || exit $?
if [[ $AVF_DRY_RUN != 1 ]]; then
  [[ $KERNEL == avf ]] && bg_start kernel "$IB/20-install-packages.sh" "${args[@]}" --only kernel
  bg_start packages "$IB/20-install-packages.sh" "${args[@]}" --only packages
fi
stage 10-build-rootfs.sh
rootfs=$RESULT
if [[ $AVF_DRY_RUN != 1 ]]; then
  jobs=(packages)
  [[ $KERNEL == avf ]] && jobs+=(kernel)
  bg_join "${jobs[@]}" || exit 1
fi
stage 20-install-packages.sh --in "$rootfs"
stage 30-configure-system.sh --in "$RESULT"
configured=$RESULT

if [[ $AVF_DRY_RUN != 1 ]]; then
  # Stages 40-50 depend on the configured tree, their own code, the
  # template and the date/commit that make the build id.
  use_source_date_epoch
  sde=$SOURCE_DATE_EPOCH
  n=$(avf_build_number)
  AVF_INPUT_KEY=$(hash_inputs -s "$(basename "$configured")" "$IB/40-create-disk-image.sh" \
    "$IB/50-package-image.sh" "$IB/lib/common.sh" "$IB/vm_config/$LAYOUT.json" \
    -s "sde=$sde n=$n root=$AVF_ROOT_MIB efi=$AVF_EFI_MIB kernel=$KERNEL")
  export AVF_INPUT_KEY
  info="$AVF_OUT/$BASE-$LAYOUT/build-info.json"
  if [[ -f $info && -f $AVF_OUT/$BASE-$LAYOUT/images.tar.gz ]] &&
    [[ $(jq -r .input_key "$info" 2>/dev/null) == "$AVF_INPUT_KEY" ]]; then
    log "up to date: $AVF_OUT/$BASE-$LAYOUT ($((SECONDS - start)) s)"
    printf '%s\n' "$AVF_OUT/$BASE-$LAYOUT/images.tar.gz"
    exit 0
  fi
fi

stage 40-create-disk-image.sh --in "$configured"
[[ $AVF_DRY_RUN == 1 ]] || stage 50-package-image.sh --in "$RESULT"
[[ $AVF_DRY_RUN == 1 ]] && RESULT="$AVF_OUT/$BASE-$LAYOUT/images.tar.gz"
log "done in $((SECONDS - start)) s"
printf '%s\n' "$RESULT"
