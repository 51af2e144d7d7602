package guestimage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// builderFormat versions what this code puts in the initramfs. Bump it when
// the initramfs layout or the manifest change, so images built by older
// code are rebuilt.
//
// 2: tzdata's zoneinfo and /etc/localtime; manifest "userland" replaces
// "busybox".
// 3: iptables (xtables-legacy-multi), its libraries and the loader, from
// programPackages, which join "userland".
// 4: e2fsprogs' mkfs.ext4, e2fsck and resize2fs and their libraries
// (programPackages grew), and the loop module.
// 5: cabin-runtime, the programs' files, zoneinfo and the late modules
// but the 9p set moved to the share (system.go); links to them, and
// bootcfg.ShareModules, in their place.
//
// The manifest's "aptState" came later without a bump: a manifest without
// it is read as one whose packages were never checked against apt's lists.
// So did cabin-runtime (in the initramfs, "runtimeSHA256") and the
// container root filesystems ("rootfsDir"): a manifest without them
// matches no runtime, so its image is rebuilt, while its packages still
// serve Ensure's fallback to the last image's packages.
const builderFormat = 5

// manifest is ImageManifest(): enough to answer Ensure without apt.
type manifest struct {
	Format         int      `json:"format"`
	Key            string   `json:"key"`
	Kernel         pkgRef   `json:"kernel"`
	KernelRelease  string   `json:"kernelRelease"`
	KernelDir      string   `json:"kernelDir"` // element under kernel/
	Userland       []pkgRef `json:"userland"`  // in userlandPackages order
	AgentSHA256    string   `json:"agentSHA256"`
	InitramfsBytes int64    `json:"initramfsBytes"`
	BootModules    []string `json:"bootModules"`
	LateModules    []string `json:"lateModules"`
	// The module names asked for, which BootModules and LateModules
	// resolve: an image built for other names is not current.
	WantBoot []string `json:"wantBoot"`
	WantLate []string `json:"wantLate"`
	BuiltAt  string   `json:"builtAt"`
	// AptState is apt's lists' fingerprint (packageSource.ListsState)
	// when Kernel and Userland were last found to be apt's candidates:
	// while the lists keep it, Ensure need not ask apt again. Empty when
	// unknown, which no fingerprint matches.
	AptState string `json:"aptState,omitempty"`
	// RuntimeSHA256 is cabin-runtime's digest, which names the
	// initramfs with the agent's.
	RuntimeSHA256 string `json:"runtimeSHA256"`
	// RootfsDir is the container root filesystems' generation, an
	// element under rootfs/ (rootfsKey of Userland, the runtime, the
	// kernel and its late modules).
	RootfsDir string `json:"rootfsDir"`
}

func (b *Builder) readManifest() (*manifest, error) {
	data, err := os.ReadFile(b.Root.ImageManifest())
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	return &m, nil
}

// writeManifest replaces the manifest with m.
func (b *Builder) writeManifest(m *manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	if err := writeAtomic(b.Root.ImageManifest(), 0o644, func(f *os.File) error {
		_, err := f.Write(append(data, '\n'))
		return err
	}); err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	return nil
}

// cacheKey names the initramfs by everything that goes into it.
func cacheKey(sums digests, kernel pkgRef, userland []pkgRef, boot, late []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "cabin initramfs\nformat %d\nkernel format %d\nagent %s\nruntime %s\nkernel %s %s\n",
		builderFormat, kernelFormat, sums.agent, sums.runtime, kernel.Name, kernel.Version)
	for _, p := range userland {
		fmt.Fprintf(h, "package %s %s\n", p.Name, p.Version)
	}
	fmt.Fprintf(h, "boot %s\nlate %s\n", strings.Join(boot, ","), strings.Join(late, ","))
	return hex.EncodeToString(h.Sum(nil))
}

// writeAtomic creates path through a temporary file in the same directory,
// renamed into place only once fill succeeded and the data is synced, so a
// reader never sees a partial file and a crash leaves none behind.
func writeAtomic(path string, perm os.FileMode, fill func(*os.File) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
