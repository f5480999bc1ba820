#!/usr/bin/env bash
# Fetches the Debian arm64 packages a guest needs to build a kernel module
# (gcc, make, and zstd to unpack linux-avf-headers' .pkg.tar.zst), resolved
# by apt against the payload's own installed set (its dpkg status, read
# out of root_part with debugfs), so exactly what the guest lacks is
# fetched. The guest has no network: `avf-harness bench-build` hands the
# files over the /mnt/shared share and the guest runs dpkg -i on them.
#
# Cached in $AVF_CACHE/guest-toolchain/<key>, the key covering the package
# list, suite, mirror, the payload's dpkg status and this script.
#
# Usage: harness/scripts/guest-toolchain.sh <payload-dir>   prints the dir
# Env:   AVF_CACHE (default /var/cache/arch-avf), AVF_DEBIAN_MIRROR
set -euo pipefail

die() {
  printf 'guest-toolchain.sh: error: %s\n' "$*" >&2
  exit 1
}
log() { printf '[guest-toolchain] %s\n' "$*" >&2; }

(($# == 1)) || die "usage: guest-toolchain.sh <payload-dir>"
root_part=$1/root_part
[[ -f $root_part ]] || die "$root_part: no such file (is $1 a built payload?)"
for t in debugfs apt-get sha256sum; do
  command -v "$t" >/dev/null || die "$t not found"
done

packages=(gcc make zstd)
suite=trixie
mirror=${AVF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $keyring ]] || die "$keyring missing (install debian-archive-keyring)"
cache=${AVF_CACHE:-/var/cache/arch-avf}/guest-toolchain

work=$(mktemp -d /tmp/avf-guest-toolchain.XXXXXX)
trap 'rm -rf "$work"' EXIT
debugfs -R 'cat /var/lib/dpkg/status' "$root_part" >"$work/status" 2>"$work/debugfs.err" ||
  die "debugfs could not read /var/lib/dpkg/status from $root_part: $(<"$work/debugfs.err")"
grep -q '^Package: ' "$work/status" || die "$root_part: /var/lib/dpkg/status is empty (not a Debian root?)"

key=$({
  printf '%s\n' "${packages[@]}" "$suite" "$mirror"
  sha256sum <"$work/status"
  sha256sum <"${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
dest=$cache/$key
if compgen -G "$dest/*.deb" >/dev/null; then
  log "cached: $dest"
  printf '%s\n' "$dest"
  exit 0
fi

# A private apt: arm64 only, the guest's status, trixie from the mirror.
mkdir -p "$work/lists/partial" "$work/archives/partial"
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=$work/status"
  -o "Dir::Cache=$work" -o "Dir::Cache::archives=$work/archives"
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
  -o APT::Architecture=arm64 -o APT::Architectures::=arm64
  -o APT::Sandbox::User=root -o Debug::NoLocking=1
  -o APT::Install-Recommends=false
)
log "resolving ${packages[*]} for arm64 $suite against the payload's installed packages"
apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update from $mirror failed"
apt-get "${apt_opts[@]}" -y -q --download-only install "${packages[@]}" >&2 ||
  die "apt-get could not fetch ${packages[*]} for arm64"
compgen -G "$work/archives/*.deb" >/dev/null || die "apt-get fetched no .deb (already installed?)"

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.$key.XXXXXX")
mv "$work"/archives/*.deb "$tmp/"
(cd "$tmp" && ls -1 ./*.deb >packages.list)
chmod 755 "$tmp"
rm -rf "$dest"
mv "$tmp" "$dest"
log "$(wc -l <"$dest/packages.list") packages, $(du -sh "$dest" | cut -f1) in $dest"
printf '%s\n' "$dest"
