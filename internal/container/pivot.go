package container

import "github.com/cabinvm/cabin/internal/mountinfo"

// canPivot tells whether pivot_root(2) can jail a container here: it
// needs the runtime's root to be a mount with a parent. The guest's agent
// makes it one at boot (guestinit.LeaveRootfs). Where the root is still
// the kernel's initial rootfs, as on an initramfs whose init did not, the
// runtime falls back to libcontainer's NoPivotRoot (MS_MOVE and chroot),
// as the Kata agent does on an initrd. That jail is weaker: the rootfs,
// with the guest's files, stays right below the container's root.
func canPivot() (bool, error) {
	ms, err := mountinfo.Read()
	if err != nil {
		return false, err
	}
	root, ok := mountinfo.Root(ms)
	return ok && root.HasParent(), nil
}
