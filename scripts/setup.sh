#!/usr/bin/env bash
# Installs what cabin needs on a Debian 12 host and fetches Go modules.
# Idempotent: quick when everything is already there.
set -euo pipefail

packages=(
  qemu-system-x86   # the hypervisor (microvm machine)
  qemu-utils        # qemu-img, for disk images
  xz-utils          # decompresses the guest kernel's payload
  e2fsprogs         # mkfs.ext4
  gcc               # cgo, for cabin-runtime (libcontainer's nsenter)
  libc6-dev         # libc.a: cabin-runtime is linked statically
  libseccomp-dev    # libseccomp.a: cabin-runtime's seccomp filters
  pkg-config        # how libseccomp-golang finds it
  iptables          # the guest's iptables tests run the host's to check the guest's rules
  nftables          # nft, to look at cabind's NAT table by hand
  systemd           # systemd-analyze: the tests verify cabind's unit
  busybox-static    # /bin/busybox: the image the run-image test and the demo import
)

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (cabind manages VMs and needs apt)" >&2
    exit 1
  fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# apt-get download (the guest image build) needs package lists too.
lists_stale=0
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  lists_stale=1
fi

if [ "${#missing[@]}" -gt 0 ] || [ "$lists_stale" -eq 1 ]; then
  need_root
  echo "setup: apt-get update" >&2
  apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Who may use cabind: members of the cabin group, as docker's. Each acts
# as itself (its VMs are its own); root sees and may act on all.
if ! getent group cabin >/dev/null; then
  need_root
  echo "setup: creating the cabin group" >&2
  groupadd --system cabin
fi

if ! command -v go >/dev/null; then
  echo "setup: Go is not on PATH" >&2
  exit 1
fi
go mod download
