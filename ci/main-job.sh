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

bash ci/setup-host.sh
tarball=$(image-build/build-all.sh --base "$base" --layout "$layout" | tail -n1)
echo "built $tarball" >&2
cargo run --release -p avf-harness -- boot "$tarball" --smoke
