package hostcgroup

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The package writes cgroup files itself rather than through
// opencontainers/cgroups (docs/decisions.md §15): its managers are made
// for containers (a v1 manager makes a cgroup in every hierarchy, the v2
// one enables every controller on the way down, only below
// /sys/fs/cgroup), its file functions refuse any file that is not on a
// cgroup filesystem unless a package-wide test switch is set, and what
// cabin needs is a handful of writes.

// The cgroup files this package reads or writes.
const (
	procsFile          = "cgroup.procs"
	controllersFile    = "cgroup.controllers"     // v2
	subtreeControlFile = "cgroup.subtree_control" // v2
	sharesFile         = "cpu.shares"             // v1
	periodFile         = "cpu.cfs_period_us"      // v1
	quotaFile          = "cpu.cfs_quota_us"       // v1
	weightFile         = "cpu.weight"             // v2
	maxFile            = "cpu.max"                // v2
)

// cgroupFS is the cgroup filesystem: the host's (hostFS), or in tests a
// directory that behaves as one.
type cgroupFS interface {
	// Mkdir makes the cgroup dir; one that exists is fine.
	Mkdir(dir string) error
	// Rmdir removes the cgroup dir; EBUSY while it holds processes.
	Rmdir(dir string) error
	WriteFile(file, data string) error
	ReadFile(file string) (string, error)
}

// hostFS is the host's cgroup filesystem.
type hostFS struct{}

func (hostFS) Mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

func (hostFS) Rmdir(dir string) error {
	if err := unix.Rmdir(dir); err != nil {
		return &os.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}

// WriteFile writes data to a file that exists: the kernel makes a
// cgroup's files, and a missing one is a controller that is not there.
func (hostFS) WriteFile(file, data string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", data, file, err)
	}
	return nil
}

func (hostFS) ReadFile(file string) (string, error) {
	b, err := os.ReadFile(file)
	return string(b), err
}

// hierarchy is the cgroup hierarchy that holds the cpu controller.
type hierarchy struct {
	// mount is where it is mounted.
	mount string
	// v2 tells the unified hierarchy from a v1 one.
	v2 bool
}

func (h hierarchy) version() string {
	if h.v2 {
		return "v2"
	}
	return "v1"
}

// path is the cgroup dir, relative to the hierarchy's root, on the host.
func (h hierarchy) path(dir string) string { return filepath.Join(h.mount, dir) }

// makeGroup makes cabin's cgroup group, below the root.
func (h hierarchy) makeGroup(fs cgroupFS, group string) error { return h.makeParent(fs, group) }

// makeParent makes dir, a cgroup whose children are cgroups of the cpu
// controller: on v2 the controller is enabled in its parent's subtree and
// its own. Such a cgroup holds no process, as v2 wants ("no internal
// processes").
func (h hierarchy) makeParent(fs cgroupFS, dir string) error {
	if err := h.makeLeaf(fs, dir); err != nil {
		return err
	}
	if h.v2 {
		return h.enableCPU(fs, dir)
	}
	return nil
}

// makeLeaf makes dir, a cgroup for processes.
func (h hierarchy) makeLeaf(fs cgroupFS, dir string) error {
	if h.v2 {
		if err := h.enableCPU(fs, path.Dir(dir)); err != nil {
			return err
		}
	}
	return fs.Mkdir(h.path(dir))
}

// enableCPU enables the cpu controller in dir's subtree (v2).
func (h hierarchy) enableCPU(fs cgroupFS, dir string) error {
	file := filepath.Join(h.path(dir), subtreeControlFile)
	on, err := fs.ReadFile(file)
	if err != nil {
		return err
	}
	if slices.Contains(strings.Fields(on), "cpu") {
		return nil
	}
	return fs.WriteFile(file, "+cpu")
}

// limit gives dir shares of the CPU (v2: their weight, SharesToWeight)
// and, when quota is not 0, a bound of quota percent of one CPU.
func (h hierarchy) limit(fs cgroupFS, dir string, shares uint64, quota int) error {
	p := h.path(dir)
	if h.v2 {
		cpuMax := "max " + itoa(PeriodMicros)
		if quota != 0 {
			cpuMax = itoa(quota*PeriodMicros/100) + " " + itoa(PeriodMicros)
		}
		if err := fs.WriteFile(filepath.Join(p, weightFile), itoa(SharesToWeight(shares))); err != nil {
			return err
		}
		return fs.WriteFile(filepath.Join(p, maxFile), cpuMax)
	}
	cfsQuota := "-1"
	if quota != 0 {
		cfsQuota = itoa(quota * PeriodMicros / 100)
	}
	// Upstream's order (UpdateCpuQuota): the period, then the quota.
	for _, w := range [][2]string{{sharesFile, itoa(shares)}, {periodFile, itoa(PeriodMicros)}, {quotaFile, cfsQuota}} {
		if err := fs.WriteFile(filepath.Join(p, w[0]), w[1]); err != nil {
			return err
		}
	}
	return nil
}

// join moves process pid, every thread of it, into dir.
func (h hierarchy) join(fs cgroupFS, dir string, pid int) error {
	return fs.WriteFile(filepath.Join(h.path(dir), procsFile), itoa(pid))
}

// procs describes the processes in dir, for errors.
func (h hierarchy) procs(fs cgroupFS, dir string) string {
	s, err := fs.ReadFile(filepath.Join(h.path(dir), procsFile))
	if err != nil {
		return "processes unknown: " + err.Error()
	}
	pids := strings.Fields(s)
	if len(pids) == 0 {
		return "no process"
	}
	return "pids " + strings.Join(pids, " ")
}

// mountinfo is where the kernel lists this process's mounts.
const mountinfo = "/proc/self/mountinfo"

// findHierarchy finds the hierarchy of the cpu controller in this
// process's mounts.
func findHierarchy(fs cgroupFS) (hierarchy, error) {
	mi, err := fs.ReadFile(mountinfo)
	if err != nil {
		return hierarchy{}, err
	}
	return parseMountinfo(mi, func(mount string) (string, error) {
		return fs.ReadFile(filepath.Join(mount, controllersFile))
	})
}

// parseMountinfo finds the hierarchy of the cpu controller in mountinfo
// (proc(5)): a v1 hierarchy mounted with the cpu controller (alone or
// with others: cpu,cpuacct), or else a cgroup2 mount whose
// cgroup.controllers, read by controllers, lists cpu. A host with both
// (v1 and v2 side by side, as systemd's hybrid mode mounts them) has cpu
// on v1. The first mount of the hierarchy is taken.
func parseMountinfo(mountinfo string, controllers func(mount string) (string, error)) (hierarchy, error) {
	var v2mounts []string
	// One space separates the fields: the kernel escapes spaces, tabs,
	// newlines and backslashes in them, and nothing else (strings.Fields
	// would split a mount point at a form feed or a no-break space). A
	// line may be longer than a bufio.Scanner takes (an overlay's layers).
	for line := range strings.SplitSeq(mountinfo, "\n") {
		fields := strings.Split(line, " ")
		sep := slices.Index(fields, "-")
		// A mount point is absolute: one outside this process's root is
		// not listed at all.
		if sep < 5 || len(fields) < sep+4 || !strings.HasPrefix(fields[4], "/") {
			continue
		}
		mount, fstype, super := unescape(fields[4]), fields[sep+1], fields[sep+3]
		switch fstype {
		case "cgroup":
			if slices.Contains(strings.Split(super, ","), "cpu") {
				return hierarchy{mount: mount}, nil
			}
		case "cgroup2":
			v2mounts = append(v2mounts, mount)
		}
	}
	for _, m := range v2mounts {
		c, err := controllers(m)
		if err == nil && slices.Contains(strings.Fields(c), "cpu") {
			return hierarchy{mount: m, v2: true}, nil
		}
	}
	if len(v2mounts) > 0 {
		return hierarchy{}, fmt.Errorf("no cgroup hierarchy has the cpu controller: cgroup2 at %s lacks it, and no v1 hierarchy has it", strings.Join(v2mounts, ", "))
	}
	return hierarchy{}, errors.New("no cgroup filesystem is mounted")
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
