#!/usr/bin/env bash
# The test command: sets a fresh machine up, builds what the tests need
# (cached outside the checkout, keyed by input hashes) and runs every test.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export AVF_CACHE=${AVF_CACHE:-/var/cache/arch-avf}
export AVF_OUT=${AVF_OUT:-$repo/out}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# TCG on 2 cores shared with the non-VM tests: give every named timeout room.
export AVF_TIMEOUT_SCALE=${AVF_TIMEOUT_SCALE:-2}

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%T)" >&2; }

step "host setup"
bash ci/setup-host.sh

step "image: debian base, direct layout"
image-build/build-all.sh --base debian --layout direct --kernel avf
step "image: debian base, efi layout"
image-build/build-all.sh --base debian --layout efi --kernel avf

step "ttyd root for the terminal crate's real-ttyd tests"
terminal/scripts/ttyd-root.sh >/dev/null

step "GitHub workflow check (action-validator: the workflow schema)"
command -v action-validator >/dev/null ||
  cargo install --locked -q action-validator --version 0.9.0
action-validator .github/workflows/*.yml

step "tests"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
cargo nextest run --workspace --profile ci "$@"

step "no VM process of ours left behind"
cargo run -q -p avf-harness -- check-leaks
