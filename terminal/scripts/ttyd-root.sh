#!/usr/bin/env bash
# Builds (once) a minimal Debian sid root holding ttyd, for the ttyd client's
# test against the real server: bookworm ships no ttyd, and sid's binary
# needs sid's glibc, so it runs chrooted. Prints the root's path.
set -euo pipefail

cache="${AVF_CACHE:-/var/cache/arch-avf}"
root="$cache/ttyd-sid"
if [ -x "$root/usr/bin/ttyd" ]; then
  echo "$root"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.ttyd-sid.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The archive seen from here may be a dated snapshot: don't let Valid-Until
# expire it.
mmdebstrap --mode=root --variant=essential --include=ttyd \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  sid "$tmp/root" http://deb.debian.org/debian >&2
"$tmp/root/usr/bin/ttyd" --version >/dev/null 2>&1 || chroot "$tmp/root" ttyd --version >&2
# Only a complete root lands at the final path.
mv "$tmp/root" "$root"
echo "$root"
