#!/usr/bin/env bash
# Compares kernel arguments by the guest's own work to /init, on a host too
# busy for wall-clock A/B (docs/decisions.md §30): QEMU counts instructions
# (-icount shift=0,sleep=off: 1 ns of guest time per instruction, idle
# skipped), so the printk time of "Run ... as init process" is the same
# boot after boot whatever else the host runs. The guest's init is dmesg,
# which prints the log and exits.
#
#   scripts/kernel/args-ab.sh VMLINUX INITRAMFS.cpio ['ARGS' ...]
#
# Prints, for the base command line and each ARGS added to it, the guest
# time to /init. Needs qemu-system-x86_64 and an initramfs with /bin/dmesg
# (cabin's has busybox's).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 VMLINUX INITRAMFS ['ARGS' ...]" >&2; exit 2; }
kernel=$1 initrd=$2
shift 2
# DefaultKernelArgs of internal/qemu/cmdline.go, and a fixed TSC rate.
base="console=ttyS0 quiet loglevel=0 panic=-1 i8042.noaux i8042.nokbd i8042.nomux cryptomgr.notests tsc=reliable no_timer_check tsc_early_khz=2000000"
boot() {
  timeout 120 qemu-system-x86_64 -M microvm,acpi=on,isa-serial=on -accel tcg -icount shift=0,sleep=off \
    -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+arat -m 512 -smp 1 -nodefaults -no-user-config \
    -nographic -no-reboot -serial stdio -kernel "$kernel" -initrd "$initrd" \
    -append "$base rdinit=/bin/dmesg $1" 2>&1 |
    sed -n 's/^\[ *\([0-9.]*\)\] Run \/bin\/dmesg as init process.*/\1/p'
}
for args in "" "$@"; do
  t=$(boot "$args")
  printf '%-60s %s s to /init\n' "${args:-(base)}" "${t:-?}"
done
