#!/usr/bin/env bash
# 10-build-rootfs.sh --base debian|archlinuxarm [--kernel stock|avf] [--dry-run]
#
# Bootstraps the aarch64 root filesystem of the base with its distro packages.
# Output: a directory in $AVF_CACHE/<base>/, keyed by the inputs; its path is
# the last line of stdout. Re-running with the same inputs reuses it.
set -euo pipefail
STAGE=10-build-rootfs
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
parse_common_args "$@"

# Keyed by what decides the tree's content (the bootstrap code and package
# list from packages.txt), not by unrelated edits to the shared files.
key=$(hash_inputs -s "$(declare -f base_bootstrap)" -s "$(guest_packages)" \
  -s "suite=${BASE_SUITE:-} kernel=$KERNEL stage=10v1")
final="$AVF_CACHE/$BASE/10-rootfs-$key"

finish_if_dry_or_cached "$final" base_bootstrap "$final"

need_tools "${BASE_TOOLS[@]}"
base_mirror_check
mktemp_near tmp "$AVF_CACHE/$BASE" "10-rootfs-$key"
log "bootstrapping $BASE into $tmp"
start=$SECONDS
blog=$(mktemp)
_TMP_DIRS+=("$blog")
heartbeat_start "bootstrapping $BASE" "$blog"
base_bootstrap "$tmp" 2> >(tee "$blog" >&2)
heartbeat_stop
publish "$tmp" "$final"
prune_cache "$AVF_CACHE/$BASE" 10-rootfs
log "bootstrap took $((SECONDS - start)) s"
printf '%s\n' "$final"
