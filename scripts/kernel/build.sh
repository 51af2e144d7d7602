#!/usr/bin/env bash
# Builds cabin's minimal guest kernel (an uncompressed PVH vmlinux, no
# modules) from Debian's linux-source-6.1 with scripts/kernel/cabin.config
# applied over tinyconfig. Reproducible: fixed build timestamp, user and
# host; the output is cached under a key made of the source package's
# version and the fragment's digest, so a second run is instant.
#
#   scripts/kernel/build.sh [CACHE_DIR]     (default /var/cache/cabin/kernel)
#
# Prints the path of the vmlinux on success. Needs: linux-source-6.1,
# build-essential, bison, flex, bc, libelf-dev, libssl-dev (apt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/cabin.config"
cache=${1:-/var/cache/cabin/kernel}
tarball=/usr/src/linux-source-6.1.tar.xz

if [ ! -f "$tarball" ]; then
  echo "kernel: $tarball missing (apt-get install linux-source-6.1)" >&2
  exit 1
fi
for tool in gcc make bison flex bc; do
  command -v "$tool" >/dev/null || { echo "kernel: $tool not found" >&2; exit 1; }
done

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$(printf '%s\n' "$version" "$(sha256sum "$fragment" "$0" | cut -d' ' -f1)" | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

work="$cache/build-$key"
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)
tar -C "$work" -xJf "$tarball"
src="$work/linux-source-6.1"

export KBUILD_BUILD_TIMESTAMP="@0" KBUILD_BUILD_USER=cabin KBUILD_BUILD_HOST=cabin KBUILD_BUILD_VERSION=1
mk() { make -C "$src" ARCH=x86_64 -s "$@"; }
mk tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$fragment" >/dev/null
mk olddefconfig >/dev/null

# Every line of the fragment must hold: Kconfig silently drops a symbol
# whose dependencies are not met.
bad=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  sym=${line%%=*} want=${line#*=}
  if [ "$want" = n ]; then
    if grep -q "^$sym=" "$src/.config"; then echo "kernel: $sym is set, wanted off" >&2; bad=1; fi
  elif ! grep -qx "$sym=$want" "$src/.config"; then
    echo "kernel: $sym: wanted $want, got $(grep "^$sym=\|^# $sym is" "$src/.config" || echo unset)" >&2
    bad=1
  fi
done <"$fragment"
[ "$bad" -eq 0 ] || exit 1

mk -j"$(nproc)" vmlinux
mkdir -p "$out.tmp"
cp "$src/vmlinux" "$src/.config" "$out.tmp/"
strip --strip-debug "$out.tmp/vmlinux" 2>/dev/null || true
printf 'source %s\nbuild_seconds %s\n' "$version" "$(( $(date +%s) - start ))" >"$out.tmp/build.txt"
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
echo "$out/vmlinux"
