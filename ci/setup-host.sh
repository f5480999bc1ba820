#!/usr/bin/env bash
# Installs everything a fresh Debian bookworm x86_64 machine needs to build the
# image, cross-compile the agents and kernel, and boot the guest under QEMU.
# Idempotent: each step checks before it acts. Runs as root (CI does).
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-host.sh: must run as root (apt-get, binfmt_misc)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [[ ! -e $backports ]]; then
  log "adding bookworm-backports"
  cat >"$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -f /var/lib/apt/lists/.arch-avf-updated
fi

stamp=/var/lib/apt/lists/.arch-avf-updated
if [[ ! -e $stamp ]] || [[ -n $(find "$stamp" -mmin +720 2>/dev/null) ]]; then
  log "apt-get update"
  apt-get update -qq
  touch "$stamp"
fi

backport_pkgs=(qemu-system-arm qemu-user qemu-user-binfmt mmdebstrap e2fsprogs socat)
bookworm_pkgs=(
  qemu-efi-aarch64 u-boot-qemu mtools dosfstools gdisk fdisk arch-test
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev libcap-ng-dev pkg-config
  pacman-package-manager makepkg arch-install-scripts libarchive-tools
  bc bison flex libssl-dev libelf-dev cpio xz-utils zstd pigz kmod
  shellcheck iproute2 dnsmasq-base avahi-utils openssl sudo util-linux
  systemd debian-archive-keyring ca-certificates rsync file
  jq curl dpkg-dev
)

missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
  done
}

mapfile -t need < <(missing "${backport_pkgs[@]}")
if ((${#need[@]})); then
  log "installing from bookworm-backports: ${need[*]}"
  apt-get install -y -qq -t bookworm-backports --no-install-recommends "${need[@]}"
fi
mapfile -t need < <(missing "${bookworm_pkgs[@]}")
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# linux-source for the offline kernel build (issue: linux-avf).
if ! ls /usr/src/linux-source-6.1.tar.xz >/dev/null 2>&1; then
  log "installing linux-source-6.1"
  apt-get install -y -qq --no-install-recommends linux-source-6.1
fi

# binfmt for aarch64 chroots (no systemd as PID 1 here).
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  log "registering qemu-aarch64 binfmt"
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [[ -e $conf ]] || conf=$(find /usr/lib/binfmt.d -name 'qemu-aarch64*.conf' | head -n1)
  cat "$conf" >/proc/sys/fs/binfmt_misc/register
fi
arch-test arm64 >/dev/null || { echo "setup-host.sh: arm64 binaries do not run (binfmt)" >&2; exit 1; }

# The TAP mode (scenarios playing the Terminal app): /dev/net/tun and
# network namespaces.
if [[ ! -c /dev/net/tun ]]; then
  log "creating /dev/net/tun"
  modprobe tun 2>/dev/null || true
  [[ -c /dev/net/tun ]] || { mkdir -p /dev/net && mknod -m 600 /dev/net/tun c 10 200; }
fi
mkdir -p /run/netns

# Rust: the aarch64 target for the agents. (cargo-nextest is the test
# job's: ci/test.sh installs it, the main job does not wait for it.)
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  log "rustup target add aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi

# vhost-user daemons.
command -v virtiofsd >/dev/null || { log "cargo install virtiofsd"; cargo install --locked -q virtiofsd; }
command -v vhost-device-vsock >/dev/null || { log "cargo install vhost-device-vsock"; cargo install --locked -q vhost-device-vsock; }

# makepkg refuses root: an unprivileged build user.
id avfbuild >/dev/null 2>&1 || useradd --system --create-home --home-dir /var/lib/avfbuild --shell /bin/bash avfbuild
# avfbuild cross-compiles the agents (image-build/pkgbuilds/avf-agents) with
# root's rustup toolchain, called by path (no rustup proxy, no writes there)
# and its own CARGO_HOME: let it traverse /root and read the toolchains, and
# nothing else — /root/.cargo (registry, any credentials) stays root's.
chmod 711 /root
chmod -R a+rX /root/.rustup
chmod 700 /root/.cargo

log "host ready"
