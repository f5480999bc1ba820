#!/usr/bin/env bash
# update.sh [PKG...]: regenerate sha256sums (packages with local sources only)
# and .SRCINFO of the PKGBUILDs here, running makepkg as the build user.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
conf="$here/../makepkg-aarch64.conf"
user=${AVF_BUILD_USER:-avfbuild}
as_user() { if [[ $(id -u) -eq 0 ]]; then runuser -u "$user" -- "$@"; else "$@"; fi; }

pkgs=("$@")
((${#pkgs[@]})) || mapfile -t pkgs < <(cd "$here" && find . -mindepth 2 -maxdepth 2 -name PKGBUILD -printf '%h\n' | sed 's|^\./||' | sort)
for p in "${pkgs[@]}"; do
  dir="$here/$p"
  [[ -f $dir/PKGBUILD ]] || { echo "update.sh: $dir/PKGBUILD: no such file" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$dir/." "$work/"
  chown -R "$user" "$work" 2>/dev/null || true
  if grep -q "^sha256sums=(" "$dir/PKGBUILD" && ! grep -q "'SKIP'" "$dir/PKGBUILD" && ! grep -q "^source=()" "$dir/PKGBUILD"; then
    sums=$(cd "$work" && as_user makepkg --config "$conf" -g 2>/dev/null)
    # Replace the sha256sums=(...) block, which may span several lines.
    awk -v sums="$sums" '
      /^sha256sums=\(/ { print sums; skip = ($0 !~ /\)$/); next }
      skip { if ($0 ~ /\)$/) skip = 0; next }
      { print }' "$dir/PKGBUILD" >"$work/PKGBUILD.new"
    cat "$work/PKGBUILD.new" >"$dir/PKGBUILD"
    cp "$dir/PKGBUILD" "$work/PKGBUILD"
  fi
  (cd "$work" && as_user makepkg --config "$conf" --printsrcinfo) >"$dir/.SRCINFO"
  rm -rf "$work"
  trap - EXIT
  echo "updated $p"
done
