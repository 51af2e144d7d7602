#!/usr/bin/env bash
# Builds cabin's minimal guest kernel (an uncompressed PVH vmlinux, no
# modules) from Debian's linux-source-6.1 with scripts/kernel/cabin.config
# applied over tinyconfig. Reproducible: fixed build timestamp, user and
# host; the output is cached under a key made of the source package's
# version, the fragment's digest and the recipe below, so a second run is
# instant. CACHE_DIR/current points at the last build, with the .config
# it was built from beside the vmlinux: cabind's --kernel auto boots it.
#
#   scripts/kernel/build.sh [CACHE_DIR]     (default /var/cache/cabin/kernel)
#
# Prints the path of the vmlinux on success. Installs what it needs from
# apt when run as root: linux-source-6.1, make, gcc, bison, flex, bc,
# libelf-dev, libssl-dev.
set -euo pipefail

# recipe versions how this script builds: bump it when a change here
# changes the vmlinux, so cached builds of the old recipe are not used.
recipe=1

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/cabin.config"
cache=${1:-/var/cache/cabin/kernel}
tarball=/usr/src/linux-source-6.1.tar.xz

packages=(linux-source-6.1 make gcc libc6-dev bison flex bc libelf-dev libssl-dev xz-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "kernel: missing ${missing[*]}: install them (apt-get install) or run this as root" >&2
    exit 1
  fi
  echo "kernel: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -f "$tarball" ] || { echo "kernel: $tarball missing after installing linux-source-6.1" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$(printf '%s\n' "$version" "$(sha256sum "$fragment" | cut -d' ' -f1)" "recipe $recipe" | sha256sum | cut -c1-16)
out="$cache/$key"

# current points at the build of these inputs, replaced in one rename.
point_current() {
  ln -sfn "$key" "$cache/.current.tmp"
  mv -Tf "$cache/.current.tmp" "$cache/current"
}

if [ -f "$out/vmlinux" ]; then
  point_current
  echo "$out/vmlinux"
  exit 0
fi
echo "kernel: building linux-source-$version with cabin.config (about 27 CPU-minutes: 15 on 2 idle cores; once)" >&2

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
point_current
echo "kernel: built in $(( $(date +%s) - start )) s" >&2
echo "$out/vmlinux"
