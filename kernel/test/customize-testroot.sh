#!/usr/bin/env bash
# mmdebstrap customize hook for kernel/testroot.sh; $1 is the root tree.
set -euo pipefail
root=$1

# Autologin uses `login -f`; a blank root password also lets a human in.
[[ ! -e $root/etc/shadow ]] || sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
echo avf-testroot >"$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$root/etc/fstab"

# Root autologin on both serial consoles; the login shell prints a marker.
for t in ttyS0 ttyAMA0; do
  d=$root/etc/systemd/system/serial-getty@$t.service.d
  mkdir -p "$d"
  cat >"$d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
UNIT
done
# shellcheck disable=SC2016 # expanded by the guest's shell
printf '%s\n' 'echo "AVF-SHELL-UP $(cut -d" " -f1 /proc/uptime) $(tty)"' >"$root/root/.bash_profile"

chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
