package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// bootIDFile says which boot of the host this is.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// GPUCachePath answers concierge's GetVmGpuCachePath: the directory of
// the GPU shader cache of the VM key. It is made (mode 0700: cabind's
// own; upstream's 0750 is for its shadercached group, which cabin has
// not) for a VM that is there and not stopping, and kept across the VM's
// runs within one boot of the host, as upstream keeps it; the first
// cache made in a new boot removes every earlier boot's, as upstream's
// PrepareVmGpuCachePaths does, and DestroyDiskImage removes the VM's
// (RemoveGPUCache). cabin's VMs have no GPU, so nothing writes there
// yet. A VM that is not there and has no cache is NotFound, as upstream
// answers for a path that does not exist.
func (m *Manager) GPUCachePath(key Key) (string, error) {
	boot, err := m.bootID()
	if err != nil {
		return "", err
	}
	root := m.opts.Root
	dir := root.GPUCache(boot, statedir.VMID(key.Owner, key.Name))
	v := m.lookup(key)
	if v == nil || v.is(StateStopping) || v.is(StateStopped) {
		if isDir(dir) {
			return dir, nil
		}
		return "", errdefs.Errorf(errdefs.ErrNotFound, "vm %s has no GPU cache: it is made while the VM runs", key)
	}
	bootDir := root.GPUCacheBoot(boot)
	if !isDir(bootDir) {
		// A new boot: the caches of earlier ones are stale.
		if err := os.RemoveAll(root.GPUCacheDir()); err != nil {
			return "", fmt.Errorf("remove the gpu caches of earlier boots: %w", err)
		}
	}
	for _, d := range []string{root.GPUCacheDir(), bootDir, dir} {
		if err := mkdirOwn(d); err != nil {
			return "", fmt.Errorf("vm %s: gpu cache: %w", key, err)
		}
	}
	return dir, nil
}

// RemoveGPUCache removes the GPU cache of the VM key in every boot, as
// upstream does when the VM's disk image is destroyed. As upstream, a
// cache that cannot be removed is logged, not an error of the destroy.
func (m *Manager) RemoveGPUCache(key Key) {
	boots, err := os.ReadDir(m.opts.Root.GPUCacheDir())
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		m.log.Warn("gpu caches", "err", err)
		return
	}
	id := statedir.VMID(key.Owner, key.Name)
	for _, b := range boots {
		if !b.IsDir() {
			continue
		}
		// The boot directories are named by a hash: no element here
		// comes from a request.
		p := filepath.Join(m.opts.Root.GPUCacheDir(), b.Name(), id)
		if err := os.RemoveAll(p); err != nil {
			m.log.Warn("remove the gpu cache", "vm", key.String(), "err", err)
		}
	}
}

// bootID is this boot's id, checked to be what the kernel writes (a
// UUID): it becomes part of a hash, never a path, but junk there means
// something is wrong with /proc.
func (m *Manager) bootID() (string, error) {
	file := m.bootIDFile
	if file == "" {
		file = bootIDFile
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if len(id) != 36 || strings.Trim(id, "0123456789abcdef-") != "" {
		return "", fmt.Errorf("boot id %.40q in %s: not a uuid: %w", id, file, errdefs.ErrInternal)
	}
	return id, nil
}

// mkdirOwn makes dir (mode 0700) unless it is there, and refuses
// anything there but a directory: a symbolic link would have cabind
// hand out a path that leads elsewhere.
func mkdirOwn(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory (%s): %w", dir, st.Mode().Type(), errdefs.ErrFailedPrecondition)
	}
	return nil
}

func isDir(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.IsDir()
}
