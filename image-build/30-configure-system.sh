#!/usr/bin/env bash
# 30-configure-system.sh --base B --in ROOTFS_DIR [--kernel K] [--dry-run]
#
# Applies the guest side of the contract (section 4) that packages cannot:
# the droid user, enabled units, fstab by PARTUUID, avahi IPv4-only, mDNS in
# nsswitch, resolved, hostname, locale, an empty machine-id. Independent of
# the layout, so both layouts share it. Output: a rootfs directory in
# $AVF_CACHE/<base>/ (last line of stdout).
set -euo pipefail
STAGE=30-configure-system
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
parse_common_args "$@"
[[ -n $IN_DIR ]] || die "--in ROOTFS_DIR (the output of 20-install-packages.sh) is required"

key=$(hash_inputs "$0" -s "$(basename "$IN_DIR")" -s "$(declare -f base_configure)" \
  -s "$(avf_guid "$BASE" ROOT) $(avf_guid "$BASE" EFI)" "$AVF_REPO/agents/systemd")
final="$AVF_CACHE/$BASE/30-configured-$key"
[[ $AVF_DRY_RUN == 1 || -d $IN_DIR ]] || die "--in $IN_DIR: no such directory"
finish_if_dry_or_cached "$final" log "dry run: would configure $final from $IN_DIR"

mktemp_near tmp "$AVF_CACHE/$BASE" "30-configured-$key"
log "copying rootfs"
cp -a --reflink=auto "$IN_DIR/." "$tmp/"
r=$tmp

base_configure "$r"

printf 'avf\n' >"$r/etc/hostname"
cat >"$r/etc/hosts" <<'HOSTS'
127.0.0.1 localhost
127.0.1.1 avf
::1 localhost ip6-localhost ip6-loopback
HOSTS

# Each VM gets its own identity and keys on first boot (machine id, ttyd's
# TLS pair, SSH host keys, pacman's keyring: avf-pacman-keyring.service).
: >"$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id" "$r"/etc/ttyd/server.key "$r"/etc/ttyd/server.crt \
  "$r"/etc/ssh/ssh_host_*
rm -rf "$r/etc/pacman.d/gnupg"

# droid (1000:100) from avf-config's sysusers.d, then its home.
run_in "$r" systemd-sysusers >&2
ids=$(run_in "$r" id -u droid):$(run_in "$r" id -g droid)
[[ $ids == 1000:100 ]] || die "user droid is $ids in the image, the contract needs 1000:100"
run_in "$r" passwd -q -l root >&2
# Locked, not empty: with an empty password any local user could `su droid`
# (pam_unix nullok) and droid's NOPASSWD sudo made that root. ttyd's
# `su --login droid` runs as root (pam_rootok) and sudo asks for none, so
# neither needs a password; the harness uses the guest agent, not a login.
run_in "$r" usermod -p '!' droid >&2
mkdir -p "$r/home/droid"
cp -a "$r/etc/skel/." "$r/home/droid/"
chown -R 1000:100 "$r/home/droid"
chmod 750 "$r/home/droid"
mkdir -p "$r/mnt/internal" "$r/mnt/shared" "$r/etc/ttyd"

# Filesystems by PARTUUID: the phone types every partition Linux-filesystem.
root_guid=$(avf_guid "$BASE" ROOT)
efi_guid=$(avf_guid "$BASE" EFI)
cat >"$r/etc/fstab" <<FSTAB
# <fs>                                     <mount> <type> <options>                  <dump> <pass>
PARTUUID=$root_guid  /       ext4   defaults,noatime           0 1
PARTUUID=$efi_guid  /boot   vfat   nofail,umask=0077,x-systemd.device-timeout=10s 0 2
FSTAB

# avahi: IPv4 only, or the app may find a link-local IPv6 address only.
ac="$r/etc/avahi/avahi-daemon.conf"
[[ -f $ac ]] || die "$ac missing (avahi not installed?)"
sed -i -E 's/^#?use-ipv6=.*/use-ipv6=no/; s/^#?publish-aaaa-on-ipv4=.*/publish-aaaa-on-ipv4=no/' "$ac"
grep -q '^use-ipv6=no' "$ac" || die "$ac: could not set use-ipv6=no"

# mDNS names resolve through nss-mdns.
ns="$r/etc/nsswitch.conf"
grep -q 'mdns4_minimal' "$ns" || sed -i -E 's/^(hosts:[[:space:]]*)(.*)$/\1mdns4_minimal [NOTFOUND=return] \2/' "$ns"

# DNS from DHCP through resolved's stub.
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"

grep -q '^SYSTEMD_RELAX_ESP_CHECKS=' "$r/etc/environment" 2>/dev/null ||
  printf 'SYSTEMD_RELAX_ESP_CHECKS=1\n' >>"$r/etc/environment"

# A distribution ttyd unit would listen on 7681 without TLS: ours replaces it.
if [[ -e $r/usr/lib/systemd/system/ttyd.service ]]; then
  run_in "$r" systemctl disable ttyd.service >&2 2>/dev/null || true
  ln -sfn /dev/null "$r/etc/systemd/system/ttyd.service"
fi

# Enable what avf-config's preset lists, and the agents' units.
units=()
while read -r verb unit inst; do
  [[ $verb == enable ]] || continue
  if [[ -n ${inst:-} ]]; then units+=("${unit/@./@$inst.}"); else units+=("$unit"); fi
done <"$r/usr/lib/systemd/system-preset/50-avf.preset"
for u in "$AVF_REPO"/agents/systemd/*.service; do
  [[ -e $u ]] || continue
  n=$(basename "$u")
  [[ -e $r/usr/lib/systemd/system/$n ]] && units+=("$n")
done
log "enabling: ${units[*]}"
run_in "$r" systemctl enable "${units[@]}" >&2 2>/dev/null ||
  die "systemctl enable failed in the image for: ${units[*]}"

# The first boot's "needs update" work, done here once (issue 12): units
# with ConditionNeedsUpdate=/etc or /var (sysusers, ldconfig, the journal
# catalog, systemd-update-done) ran on every first boot — on the critical path, 13 s
# of a loaded TCG boot — because no .updated stamp shipped. The package
# managers already ran these tools; running them once more here makes sure,
# and the stamp records that /etc and /var match this /usr.
run_in "$r" systemd-sysusers >&2 || die "systemd-sysusers failed in the image"
run_in "$r" ldconfig >&2 || die "ldconfig failed in the image"
run_in "$r" journalctl --update-catalog >&2 || die "journalctl --update-catalog failed in the image"
run_in "$r" /usr/lib/systemd/systemd-update-done >&2 || die "systemd-update-done failed in the image"
[[ -f $r/etc/.updated && -f $r/var/.updated ]] || die "systemd-update-done wrote no /etc/.updated or /var/.updated"

publish "$tmp" "$final"
prune_cache "$AVF_CACHE/$BASE" 30-configured
printf '%s\n' "$final"
