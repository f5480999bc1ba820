#!/usr/bin/env bash
# 50-package-image.sh --base B --layout L --in STAGING_DIR [--kernel K]
#
# Finishes the payload for Android's e2fsprogs and fsck (orphan_file off, ESP
# checked), renders vm_config.json from the template vm_config/<layout>.json
# with the partition GUIDs, writes build-info.json and images.tar.gz (pigz,
# no sparse entries, SOURCE_DATE_EPOCH), then renames the whole into
# $AVF_OUT/<base>-<layout>.
# Prints the tarball path last.
set -euo pipefail
STAGE=50-package-image
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
parse_common_args "$@"
[[ -n $IN_DIR ]] || die "--in STAGING_DIR (the output of 40-create-disk-image.sh) is required"
final="$AVF_OUT/$BASE-$LAYOUT"
if [[ $AVF_DRY_RUN == 1 ]]; then
  log "dry run: would package $IN_DIR into $final/images.tar.gz"
  printf '%s\n' "$final/images.tar.gz"
  exit 0
fi
[[ -d $IN_DIR/payload ]] || die "--in $IN_DIR: no payload/ (run 40-create-disk-image.sh first)"
need_tools tune2fs e2fsck fsck.fat jq tar pigz mkfs.vfat mcopy
use_source_date_epoch

mktemp_near tmp "$AVF_OUT" "$BASE-$LAYOUT"
rmdir "$tmp"
mv "$IN_DIR" "$tmp"
chmod 755 "$tmp"
pl="$tmp/payload"
meta="$tmp/meta"

# Android's older e2fsprogs cannot check orphan_file.
tune2fs -O ^orphan_file "$pl/root_part" >/dev/null
e2fsck -fn "$pl/root_part" >/dev/null 2>&1 || die "$pl/root_part: e2fsck reports errors"
rc=0
fsck.fat -a "$pl/efi_part" >/dev/null 2>&1 || rc=$?
((rc <= 1)) || die "$pl/efi_part: fsck.fat -a failed (exit $rc)"

root_guid=$(<"$meta/root_guid")
efi_guid=$(<"$meta/efi_guid")
params=$(<"$meta/params")
build_id=$(<"$pl/build_id")
tmpl="$IB/vm_config/$LAYOUT.json"
[[ -f $tmpl ]] || die "$tmpl: template missing"
filter='.'
[[ $LAYOUT == direct && ! -e $pl/initrd.img ]] && filter='del(.initrd)'
sed -e "s|{root_part_guid}|$root_guid|g" -e "s|{efi_part_guid}|$efi_guid|g" \
  -e "s|{kernel_params}|$params|g" "$tmpl" | jq "$filter" >"$pl/vm_config.json" 2>/dev/null ||
  die "$tmpl: not valid JSON after filling in the placeholders"
jq -e '.name == "debian"' "$pl/vm_config.json" >/dev/null || die "$tmpl: \"name\" must be \"debian\""
! grep -q '{[a-z_]*}' "$pl/vm_config.json" || die "$tmpl: unknown placeholder $(grep -o '{[a-z_]*}' "$pl/vm_config.json" | sed -n 1p)"

# cidata.iso: Android 17's app (ImageArchive) treats a payload that carries
# its own as the gRPC kind, the one our agents speak (it passes the
# DebianService port as debian_server_port=); without one it would copy its
# bundled Debian cidata and expect its AIDL guest agent, whose init.sh runs
# dpkg (docs/android-releases.md). The guest does not read it: a NoCloud
# seed (vfat, label CIDATA) that says so, reproducible (fixed volume id,
# file times from SOURCE_DATE_EPOCH).
seed="$tmp/cidata"
mkdir -p "$seed"
printf 'instance-id: arch-avf-%s
local-hostname: debian
' "$build_id" >"$seed/meta-data"
printf '#cloud-config
# arch-avf: the image configures itself; nothing to do here.
{}
' >"$seed/user-data"
touch -d "@$SOURCE_DATE_EPOCH" "$seed/meta-data" "$seed/user-data"
mkfs.vfat -C -n CIDATA -i "$(avf_guid "$BASE" cidata-fs | cut -c1-8)" "$pl/cidata.iso" 1024 >/dev/null ||
  die "mkfs.vfat failed writing $pl/cidata.iso"
mcopy -m -i "$pl/cidata.iso" "$seed/meta-data" "$seed/user-data" ::/
rm -rf "$seed"

members=(build_id vm_config.json root_part efi_part cidata.iso)
[[ -e $pl/vmlinuz ]] && members+=(vmlinuz)
[[ -e $pl/initrd.img ]] && members+=(initrd.img)

pkgs=$(find "$(repo_dir)" -maxdepth 1 -name '*.pkg.tar.zst' -printf '%f\n' 2>/dev/null | sort | jq -R . | jq -s .)
jq -n --arg base "$BASE" --arg layout "$LAYOUT" --arg kernel "$KERNEL" --arg build_id "$build_id" \
  --arg version "$(<"$meta/version")" \
  --arg krel "$(<"$meta/kernel_release")" --arg params "$params" --arg rootfs "$(<"$meta/rootfs")" \
  --arg rg "$root_guid" --arg eg "$efi_guid" \
  --argjson rs "$(stat -c %s "$pl/root_part")" --argjson es "$(stat -c %s "$pl/efi_part")" \
  --argjson sde "$SOURCE_DATE_EPOCH" --argjson packages "$pkgs" --arg key "${AVF_INPUT_KEY:-}" \
  '{base: $base, layout: $layout, kernel: $kernel, build_id: $build_id, version: $version, kernel_release: $krel,
    kernel_params: $params, source_date_epoch: $sde, input_key: $key, rootfs_cache: $rootfs,
    partitions: [{label: "ROOT", guid: $rg, size_bytes: $rs}, {label: "EFI", guid: $eg, size_bytes: $es}],
    packages: $packages}' >"$tmp/build-info.json"

log "images.tar.gz: ${members[*]}"
# Plain (non-sparse) members: the app's extractor does not handle sparse tar.
tar -C "$pl" --format=gnu --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -cf - "${members[@]}" | pigz -n -c >"$tmp/images.tar.gz" ||
  die "writing $tmp/images.tar.gz failed (disk full?)"
rm -rf "$meta"

publish "$tmp" "$final"
printf '%s\n' "$final/images.tar.gz"
