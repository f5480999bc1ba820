#!/usr/bin/env bash
# 40-create-disk-image.sh --base B --layout efi|direct --in ROOTFS_DIR [--kernel K]
#
# Makes the partition files without mounting anything: root_part with
# mkfs.ext4 -d, efi_part with mkfs.vfat + mtools (systemd-boot, loader entry,
# kernel and initrd). The app builds the GPT from vm_config.json, so no
# partition table is written here. For --layout direct the kernel and initrd
# also go into the payload. Output: $AVF_OUT/.staging/<base>-<layout> (not the
# output name; stage 50 finishes and publishes it), printed last on stdout.
set -euo pipefail
STAGE=40-create-disk-image
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
parse_common_args "$@"
[[ -n $IN_DIR ]] || die "--in ROOTFS_DIR (the output of 30-configure-system.sh) is required"
if [[ $AVF_DRY_RUN == 1 ]]; then
  log "dry run: would make root_part (${AVF_ROOT_MIB} MiB ext4) and efi_part (${AVF_EFI_MIB} MiB vfat) from $IN_DIR"
  exit 0
fi
[[ -d $IN_DIR ]] || die "--in $IN_DIR: no such directory"
need_tools mkfs.ext4 debugfs mkfs.vfat mmd mcopy
((AVF_ROOT_MIB % 4 == 0 && AVF_EFI_MIB % 4 == 0)) || die "AVF_ROOT_MIB and AVF_EFI_MIB must be multiples of 4"

r=$IN_DIR
use_source_date_epoch
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH

# build_id is what the Terminal app compares (docs/terminal-app.md §3): one
# line holding one decimal integer. Android 16 parses the last space-separated
# token as an int and sends anything below 2025 (or unparsable) to its Upgrade
# screen, whose only button replaces root_part with Google's image; Android
# 17's app uses ttyd over vsock for ids >= 5106, which this image serves
# (avf-ttyd-vsock.socket), and in its AIDL mode reaches the terminal no other
# way. So: AVF_BUILD_ID_BASE (5106) + the build number. The readable version
# (<base>/<arch>/<version>-<n>-<date>) goes to build-info.json.
n=$(avf_build_number)
build_id=$((AVF_BUILD_ID_BASE + n))
((build_id >= AVF_TTYD_VSOCK_BUILD_ID)) ||
  die "build number $n gives build_id $build_id < $AVF_TTYD_VSOCK_BUILD_ID: Android 17 would not use ttyd over vsock, its AIDL mode's only way to the terminal"
ver=$(sed -n 's/^version = "\(.*\)"/\1/p' "$AVF_REPO/Cargo.toml" | sed -n 1p)
version="$BASE/aarch64/${ver:-0.1.0}-$n-$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d)"

# The kernel: ours from linux-avf (no initrd), or the base's stock one.
if [[ $KERNEL == avf ]]; then
  # Arch's kernel layout: vmlinuz next to the modules, named by pkgbase.
  kimg=$(cd "$r" && grep -lx linux-avf usr/lib/modules/*/pkgbase 2>/dev/null | sort -V | tail -n1)
  kimg=${kimg%pkgbase}vmlinuz
  [[ -f $r/$kimg ]] || die "--kernel avf: no usr/lib/modules/<release>/vmlinuz with pkgbase linux-avf in $r (linux-avf not installed?)"
  kinit=-
  krel=$(basename "$(dirname "$kimg")")
else
  read -r kimg kinit krel < <(base_kernel_files "$r")
  [[ $kimg != - ]] || die "no stock kernel in $r/boot (base $BASE)"
fi
root_guid=$(avf_guid "$BASE" ROOT)
efi_guid=$(avf_guid "$BASE" EFI)
params="root=PARTUUID=$root_guid rw rootwait console=ttyS0,115200n8"

out="$AVF_OUT/.staging/$BASE-$LAYOUT"
mktemp_near tmp "$AVF_OUT/.staging" "$BASE-$LAYOUT"
pl="$tmp/payload"
mkdir -p "$pl" "$tmp/meta"

log "root_part: ${AVF_ROOT_MIB} MiB ext4 from $r"
fs_uuid=$(avf_guid "$BASE" root-fs)
mkfs.ext4 -q -F -L ROOT -U "$fs_uuid" -E "hash_seed=$fs_uuid" -O ^orphan_file \
  -d "$r" "$pl/root_part" "${AVF_ROOT_MIB}M" >&2 ||
  die "mkfs.ext4 failed writing $pl/root_part (disk full?)"

# The boot marker reads the build id; written after mkfs so the cached rootfs
# stays independent of the date.
printf '%s\n' "$build_id" >"$tmp/meta/build_id"
chmod 644 "$tmp/meta/build_id"
debugfs -w -R "write $tmp/meta/build_id /usr/lib/avf/build_id" "$pl/root_part" >/dev/null 2>&1
got=$(debugfs -R 'cat /usr/lib/avf/build_id' "$pl/root_part" 2>/dev/null)
[[ $got == "$build_id" ]] || die "could not write /usr/lib/avf/build_id into $pl/root_part (is avf-config installed?)"

# The direct layout hands the ESP to the VM read-only (vm_config.json
# writable: false): mount it ro and skip its fsck, or the guest's first
# write to it (vfat's dirty flag) fails with an I/O error.
if [[ $LAYOUT == direct ]]; then
  awk '$2 == "/boot" && $3 == "vfat" { $4 = "ro," $4; $6 = 0 } { print }' "$r/etc/fstab" >"$tmp/meta/fstab"
  grep -Eq '^PARTUUID=[^ ]+ /boot vfat ro,' "$tmp/meta/fstab" || die "no vfat /boot line in $r/etc/fstab to make read-only"
  chmod 644 "$tmp/meta/fstab"
  debugfs -w -R "rm /etc/fstab" "$pl/root_part" >/dev/null 2>&1
  debugfs -w -R "write $tmp/meta/fstab /etc/fstab" "$pl/root_part" >/dev/null 2>&1
  debugfs -R 'cat /etc/fstab' "$pl/root_part" 2>/dev/null | grep -q ' /boot vfat ro,' ||
    die "could not write the read-only /boot fstab into $pl/root_part"
fi

log "efi_part: ${AVF_EFI_MIB} MiB vfat, systemd-boot"
sdboot="$r/usr/lib/systemd/boot/efi/systemd-bootaa64.efi"
[[ -f $sdboot ]] || die "$sdboot missing (systemd-boot not installed in the image)"
volid=$(avf_guid "$BASE" efi-fs | cut -c1-8)
mkfs.vfat -C -F 32 -n EFI -i "$volid" "$pl/efi_part" $((AVF_EFI_MIB * 1024)) >/dev/null ||
  die "mkfs.vfat failed writing $pl/efi_part (disk full?)"
m=(-i "$pl/efi_part")
mmd "${m[@]}" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries
mcopy "${m[@]}" "$sdboot" ::/EFI/BOOT/BOOTAA64.EFI
mcopy "${m[@]}" "$sdboot" ::/EFI/systemd/systemd-bootaa64.efi
mcopy "${m[@]}" "$r/$kimg" ::/vmlinuz
entry="$tmp/meta/avf.conf"
{
  printf 'title   %s (AVF)\n' "$BASE"
  printf 'version %s\n' "$krel"
  printf 'linux   /vmlinuz\n'
  [[ $kinit == - ]] || printf 'initrd  /initrd.img\n'
  printf 'options %s\n' "$params"
} >"$entry"
[[ $kinit == - ]] || mcopy "${m[@]}" "$r/$kinit" ::/initrd.img
printf 'default avf.conf\ntimeout 0\nconsole-mode keep\neditor no\n' >"$tmp/meta/loader.conf"
mcopy "${m[@]}" "$tmp/meta/loader.conf" ::/loader/loader.conf
mcopy "${m[@]}" "$entry" ::/loader/entries/avf.conf

if [[ $LAYOUT == direct ]]; then
  cp "$r/$kimg" "$pl/vmlinuz"
  [[ $kinit == - ]] || cp "$r/$kinit" "$pl/initrd.img"
fi

printf '%s\n' "$build_id" >"$pl/build_id"
printf '%s\n' "$krel" >"$tmp/meta/kernel_release"
printf '%s\n' "$params" >"$tmp/meta/params"
printf '%s\n' "$version" >"$tmp/meta/version"
printf '%s\n' "$root_guid" >"$tmp/meta/root_guid"
printf '%s\n' "$efi_guid" >"$tmp/meta/efi_guid"
printf '%s\n' "$r" >"$tmp/meta/rootfs"
publish "$tmp" "$out"
printf '%s\n' "$out"
