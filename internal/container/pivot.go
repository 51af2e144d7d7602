package container

import "github.com/moby/sys/mountinfo"

// canPivot tells whether pivot_root(2) can jail a container here; see
// rootHasParent. Where it cannot, as on an initramfs whose init left the
// guest on the kernel's rootfs, the runtime falls back to libcontainer's
// NoPivotRoot (MS_MOVE and chroot), as the Kata agent does on an initrd.
// That jail is weaker: the rootfs, with the guest's files, stays right
// below the container's root. cabin's agent moves off the rootfs at boot
// (guestinit.LeaveRootfs).
func canPivot() (bool, error) {
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != "/", false
	})
	if err != nil {
		return false, err
	}
	return rootHasParent(ms), nil
}

// rootHasParent tells whether the mount seen at "/" (the last one there
// in ms: a mount stacked on another hides it) is attached to another,
// which pivot_root needs. The root mount of a mount namespace is its own
// parent.
func rootHasParent(ms []*mountinfo.Info) bool {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Mountpoint == "/" {
			return ms[i].ID != ms[i].Parent
		}
	}
	return false
}
