package container

import (
	"bufio"
	"io"
	"os"
	"strings"
)

// rootIsRootfs tells whether the runtime's root directory is the kernel's
// initial rootfs, as in the guest, whose agent runs from the initramfs
// without switch_root. pivot_root(2) fails there (EINVAL: the rootfs can
// never be unmounted), so libcontainer must jail the container with
// MS_MOVE and chroot instead (its NoPivotRoot), as the Kata agent does on
// an initrd.
func rootIsRootfs() (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	return rootFSType(f) == "rootfs", nil
}

// rootFSType returns the file system type of the mount at "/" in a
// mountinfo table: the last one, which is the visible one when mounts are
// stacked there. See proc_pid_mountinfo(5) for the format:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func rootFSType(r io.Reader) string {
	var fstype string
	s := bufio.NewScanner(r)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 || fields[4] != "/" {
			continue
		}
		for i := 5; i+1 < len(fields); i++ {
			if fields[i] == "-" {
				fstype = fields[i+1]
				break
			}
		}
	}
	return fstype
}
