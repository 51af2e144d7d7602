package kata

import "github.com/cabinvm/cabin/internal/bootcfg"

// keepsMounted tells the storages that stay mounted for the VM's life
// once a container has mounted them: cabind's read-only 9p shares of the
// image store's trees (bootcfg.ImagesTag) and of its built-in root
// filesystems (bootcfg.RootfsTag). Every cabin run lists one; unmounting
// it when the VM's last container went made the next run mount it again
// (a 9p attach and walk through QEMU under TCG). They are VM devices given
// at start that never go while the VM runs, read-only, cache=none: kept
// mounted, they hold no state a later mount would see differently.
func keepsMounted(s Storage) bool {
	return s.Driver == Driver9P && (s.Source == bootcfg.ImagesTag || s.Source == bootcfg.RootfsTag)
}

// keepMounted counts the VM as a user of mt, just mounted, when it is to
// stay mounted. One mount of each share is kept: a client that mounts the
// same share at other points as well gets those unmounted with their last
// container, so mount points a client makes up do not pile up. Called
// with m.mu held.
func (m *mounts) keepMounted(mt *mounted) {
	if m.keep == nil || !m.keep(mt.storage) {
		return
	}
	for _, other := range m.byPoint {
		if other != mt && other.kept && other.storage.Source == mt.storage.Source {
			return
		}
	}
	mt.users++
	mt.kept = true
}

// dropIdleKept unmounts the kept storage at point when no container uses
// it, so that another storage can be mounted there; it reports whether
// the point is free now. Called with m.mu held.
func (m *mounts) dropIdleKept(point string) bool {
	mt := m.byPoint[point]
	if mt == nil || !mt.kept || mt.users != 1 {
		return false
	}
	if err := unmount(point, mt); err != nil {
		m.log.Warn("unmount a kept storage no container uses", "mount_point", point, "err", err)
		return false
	}
	delete(m.byPoint, point)
	return true
}
