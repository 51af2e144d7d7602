package kata

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// sysMemory is where the kernel describes memory blocks and hotplug.
const sysMemory = "/sys/devices/system/memory"

// GuestDetails is what GetGuestDetails reports of the guest.
type GuestDetails struct {
	// MemBlockSize is the memory block size in bytes, the unit of memory
	// hotplug; 0 when not asked for or the kernel has none.
	MemBlockSize uint64
	// HotplugProbe is whether the kernel takes hot-added memory through
	// its probe file; only looked at when asked for.
	HotplugProbe bool
	// Seccomp is whether containers can have seccomp filters: the runtime
	// is built with libseccomp and the kernel filters system calls.
	Seccomp bool
	// StorageHandlers are the storage drivers CreateSandbox and
	// CreateContainer take.
	StorageHandlers []string
}

// GuestDetails answers GetGuestDetails; memBlock and probe say which of
// the memory details the caller wants, as Kata's runtime asks.
func (s *Sandbox) GuestDetails(memBlock, probe bool) (GuestDetails, error) {
	d := GuestDetails{StorageHandlers: []string{Driver9P, DriverLocal, DriverEphemeral, DriverBlk, DriverVirtioBlk, DriverMmioBlk, DriverBind, DriverWatchableBind}}
	if memBlock {
		size, err := memBlockSize(filepath.Join(sysMemory, "block_size_bytes"))
		if err != nil {
			return GuestDetails{}, err
		}
		d.MemBlockSize = size
	}
	if probe {
		_, err := os.Stat(filepath.Join(sysMemory, "probe"))
		d.HotplugProbe = err == nil
	}
	f, err := s.rt.features()
	if err != nil {
		// Seccomp is then reported missing, which makes Kata's runtime
		// leave filters out; the runtime's failure shows on first use.
		s.log.Warn("cabin-runtime features", "err", err)
	}
	d.Seccomp = err == nil && f.Linux != nil && f.Linux.Seccomp != nil &&
		f.Linux.Seccomp.Enabled != nil && *f.Linux.Seccomp.Enabled && kernelSeccomp("/proc/self/status")
	return d, nil
}

// memBlockSize reads the memory block size, which the kernel writes in
// hex without a prefix. A kernel without memory blocks has no file: 0.
func memBlockSize(file string) (uint64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	size, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return size, nil
}

// kernelSeccomp tells whether the kernel filters system calls: its status
// files have a Seccomp line only when it was built to (CONFIG_SECCOMP).
func kernelSeccomp(statusFile string) bool {
	b, err := os.ReadFile(statusFile)
	return err == nil && bytes.Contains(b, []byte("\nSeccomp:"))
}

// featureCache holds the runtime's features document once it was read.
type featureCache struct {
	mu sync.Mutex
	f  *features.Features
}

// features runs `cabin-runtime features` the first time it succeeds, and
// answers from memory after: the runtime does not change under the agent.
func (rt *runtime) features() (*features.Features, error) {
	rt.feats.mu.Lock()
	defer rt.feats.mu.Unlock()
	if f := rt.feats.f; f != nil {
		return f, nil
	}
	out, err := rt.run([]string{"features"}, nil)
	if err != nil {
		return nil, err
	}
	var f features.Features
	if err := json.Unmarshal(out, &f); err != nil {
		return nil, fmt.Errorf("cabin-runtime features: %w", err)
	}
	rt.feats.f = &f
	return &f, nil
}
