#!/usr/bin/env bash
# The main job: set a fresh machine up, build the image (debian base, the
# offline one; pass --base archlinuxarm where the ALARM mirror is reachable)
# and boot it once in the harness, to the boot marker and a clean power-off.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export AVF_CACHE=${AVF_CACHE:-/var/cache/arch-avf}
export AVF_OUT=${AVF_OUT:-$repo/out}

base=debian
layout=efi
while (($#)); do
  case $1 in
    --base) base=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    *) echo "main-job.sh: unknown argument '$1' (expected --base NAME, --layout efi|direct)" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s (%s, %d s into the main job)\n' "$1" "$(date -u +%T)" "$SECONDS" >&2; }

step "host setup"
bash ci/setup-host.sh

# The harness in the debug profile, compiled while the image builds: the
# scenarios boot every image with a debug build too, and it costs half the
# CPU of the release one (the workspace's release profile has thin LTO for
# the agents). ci/test.sh reuses what its wider feature set leaves equal.
# shellcheck disable=SC2034 # background.sh names its messages by it
STAGE=main-job
# shellcheck source-path=SCRIPTDIR/.. source=image-build/lib/background.sh
source "$repo/image-build/lib/background.sh"
bg_start harness cargo build --quiet -p avf-harness

step "image: $base base, $layout layout"
tarball=$(image-build/build-all.sh --base "$base" --layout "$layout" | tail -n1)
echo "built $tarball" >&2

step "harness (built in the background)"
bg_join harness || exit 1
step "boot to the marker and a clean power-off"
boot=(cargo run --quiet -p avf-harness -- boot "$tarball" --smoke)
# On a machine shared with other VM runs, AVF_VM_LOCK names their lock
# (README: /tmp/avf-vm.lock): the boot waits for it, the build does not.
if [[ -n ${AVF_VM_LOCK:-} ]]; then boot=(flock "$AVF_VM_LOCK" "${boot[@]}"); fi
"${boot[@]}"
step "main job done"
