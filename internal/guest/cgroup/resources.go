package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Resources are the limits UpdateContainer asks for, in the v1-style
// terms of an OCI spec's linux.resources, where zero leaves a value as it
// is and -1 (for signed ones) means no limit. Convert turns them into
// cgroup v2 files the way runc does.
type Resources struct {
	// Memory, in bytes.
	MemoryLimit, MemoryReservation, MemorySwap int64
	// MemoryKernel, MemoryKernelTCP, Swappiness and DisableOOMKiller have
	// no cgroup v2 file; set, they are refused.
	MemoryKernel, MemoryKernelTCP int64
	Swappiness                    uint64
	DisableOOMKiller              bool

	CPUShares uint64
	// CPUQuota and CPUPeriod are in µs.
	CPUQuota               int64
	CPUPeriod              uint64
	CPURealtimeRuntime     int64
	CPURealtimePeriod      uint64
	CPUs, Mems             string
	Pids                   int64
	BlkioWeight            uint32
	BlkioLeafWeight        uint32
	BlkioWeightDevices     []WeightDevice
	BlkioThrottleReadBps   []ThrottleDevice
	BlkioThrottleWriteBps  []ThrottleDevice
	BlkioThrottleReadIOPS  []ThrottleDevice
	BlkioThrottleWriteIOPS []ThrottleDevice
	Hugepages              []HugepageLimit
}

// WeightDevice is a block device's own I/O weight (10-1000, v1's range).
type WeightDevice struct {
	Major, Minor int64
	Weight       uint32
}

// ThrottleDevice is a block device's rate limit (bytes or I/O per second).
type ThrottleDevice struct {
	Major, Minor int64
	Rate         uint64
}

// HugepageLimit is a hugetlb limit in bytes for pages of Pagesize ("2MB").
type HugepageLimit struct {
	Pagesize string
	Limit    uint64
}

// Write is one value for one cgroup file.
type Write struct {
	File, Value string
}

// Host is what Convert checks requests against; the zero value reads the
// running kernel's.
type Host struct {
	// Sysfs is where sysfs is mounted; empty means /sys.
	Sysfs string
}

// Limits of the kernel's (kernel/sched, kernel/cgroup/pids.c).
const (
	minCPUPeriod = 1000    // µs
	maxCPUPeriod = 1000000 // µs
	minCPUQuota  = 1000    // µs
	// maxPids is PID_MAX_LIMIT, the most pids.max takes.
	maxPids = 4 << 20
	// MinMemoryLimit is the least memory limit taken: below it a
	// container cannot even start a process (Docker's minimum too).
	MinMemoryLimit = 6 << 20
)

// Convert checks r against the cgroup at dir and returns the writes that
// apply it, in order, or an error in errdefs.ErrInvalidArgument (naming
// the field, after prefix) or errdefs.ErrFailedPrecondition (a controller
// the cgroup lacks). It writes nothing.
func (h Host) Convert(dir, prefix string, r Resources) ([]Write, error) {
	c := converter{h: h, dir: dir, prefix: prefix}
	c.memory(r)
	c.cpu(r)
	c.cpuset(r)
	c.pids(r)
	c.blkio(r)
	c.hugetlb(r)
	if c.err != nil {
		return nil, c.err
	}
	return c.writes, nil
}

type converter struct {
	h      Host
	dir    string
	prefix string
	writes []Write
	err    error
}

func (c *converter) sysfs(p string) string {
	root := c.h.Sysfs
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(root, p)
}

func (c *converter) fail(field, format string, args ...any) {
	if c.err == nil {
		c.err = errdefs.InvalidArgument(c.prefix+field, fmt.Sprintf(format, args...))
	}
}

// need checks that the cgroup has file, which its controller provides.
func (c *converter) need(field, file string) bool {
	if c.err != nil {
		return false
	}
	if _, err := os.Stat(filepath.Join(c.dir, file)); err != nil {
		ctrl, _, _ := strings.Cut(file, ".")
		c.err = fmt.Errorf("%s%s: the container's cgroup has no %s (is the %s controller enabled?): %w", c.prefix, field, file, ctrl, errdefs.ErrFailedPrecondition)
		return false
	}
	return true
}

func (c *converter) add(file, value string) { c.writes = append(c.writes, Write{file, value}) }

// limitValue is an OCI limit as cgroup v2 spells it: -1 is "max".
func limitValue(v int64) string {
	if v == -1 {
		return "max"
	}
	return strconv.FormatInt(v, 10)
}

func (c *converter) memory(r Resources) {
	switch {
	case r.MemoryKernel != 0:
		c.fail("Memory.Kernel", "%d: cgroup v2 has no kernel memory limit", r.MemoryKernel)
	case r.MemoryKernelTCP != 0:
		c.fail("Memory.KernelTCP", "%d: cgroup v2 has no kernel TCP memory limit", r.MemoryKernelTCP)
	case r.Swappiness != 0:
		c.fail("Memory.Swappiness", "%d: cgroup v2 has no swappiness per cgroup", r.Swappiness)
	case r.DisableOOMKiller:
		c.fail("Memory.DisableOOMKiller", "cgroup v2 cannot disable the OOM killer")
	case r.MemoryLimit < -1:
		c.fail("Memory.Limit", "%d: negative; -1 is no limit", r.MemoryLimit)
	case r.MemoryLimit > 0 && r.MemoryLimit < MinMemoryLimit:
		c.fail("Memory.Limit", "%d bytes: below the least a container runs in, %d", r.MemoryLimit, MinMemoryLimit)
	case r.MemoryReservation < -1:
		c.fail("Memory.Reservation", "%d: negative; -1 is no limit", r.MemoryReservation)
	case r.MemoryReservation > 0 && r.MemoryLimit > 0 && r.MemoryReservation > r.MemoryLimit:
		c.fail("Memory.Reservation", "%d: above Memory.Limit %d", r.MemoryReservation, r.MemoryLimit)
	case r.MemorySwap < -1:
		c.fail("Memory.Swap", "%d: negative; -1 is no limit", r.MemorySwap)
	}
	if c.err != nil || r.MemoryLimit == 0 && r.MemoryReservation == 0 && r.MemorySwap == 0 {
		return
	}
	if !c.need("Memory", "memory.max") {
		return
	}
	if r.MemoryLimit > 0 {
		// The kernel takes any limit, and then reclaims down to it or,
		// failing that, OOM-kills the container's processes: a limit
		// below what they hold and the kernel cannot reclaim kills
		// the container there and then. Refused instead.
		held, err := unreclaimable(c.dir)
		if err != nil {
			c.err = err
			return
		}
		if r.MemoryLimit < held {
			c.fail("Memory.Limit", "%d bytes: below the %d the container holds that cannot be reclaimed", r.MemoryLimit, held)
			return
		}
	}
	if r.MemorySwap != 0 {
		mem := r.MemoryLimit
		if mem == 0 {
			cur, err := readLimit(c.dir, memoryMax)
			if err != nil {
				c.err = err
				return
			}
			mem = cur
		}
		swap, err := swapValue(r.MemorySwap, mem)
		if err != nil {
			c.fail("Memory.Swap", "%d: %v", r.MemorySwap, err)
			return
		}
		if _, err := os.Stat(filepath.Join(c.dir, "memory.swap.max")); err != nil {
			// No swap accounting: no swap to limit, which a request
			// for none or for no limit is content with.
			if swap != 0 && swap != -1 {
				c.need("Memory.Swap", "memory.swap.max")
			}
		} else {
			// The swap limit goes first: runc's order, since memory.max
			// below it is what the kernel checks nothing against.
			c.add("memory.swap.max", limitValue(swap))
		}
	}
	if r.MemoryLimit != 0 {
		c.add(memoryMax, limitValue(r.MemoryLimit))
	}
	if r.MemoryReservation != 0 && c.need("Memory.Reservation", "memory.low") {
		c.add("memory.low", limitValue(r.MemoryReservation))
	}
}

// swapValue converts an OCI memory+swap limit to cgroup v2's swap-only
// one, as runc does (ConvertMemorySwapToCgroupV2Value); -1 is no limit.
func swapValue(memSwap, mem int64) (int64, error) {
	switch {
	case memSwap == -1:
		return -1, nil
	case mem == -1:
		return memSwap, nil
	case memSwap < mem:
		return 0, fmt.Errorf("memory+swap below the memory limit %d", mem)
	}
	return memSwap - mem, nil
}

// unreclaimable is what the cgroup holds that the kernel cannot reclaim
// without swap: all it is charged but for its page cache that is not
// shared memory and its reclaimable slab.
func unreclaimable(dir string) (int64, error) {
	cur, err := readInt(filepath.Join(dir, "memory.current"))
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return 0, fmt.Errorf("read memory.stat: %w", err)
	}
	st := ParseFlatKeyed(b)
	held := cur - int64(st["file"]) + int64(st["shmem"]) - int64(st["slab_reclaimable"])
	return max(held, 0), nil
}

// readLimit reads a limit file; "max" is -1.
func readLimit(dir, file string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	return v, nil
}

func (c *converter) cpu(r Resources) {
	switch {
	case r.CPURealtimeRuntime != 0 || r.CPURealtimePeriod != 0:
		c.fail("CPU.RealtimeRuntime", "cgroup v2 has no real-time CPU limits")
	case r.CPUQuota < -1:
		c.fail("CPU.Quota", "%d: negative; -1 is no limit", r.CPUQuota)
	case r.CPUQuota > 0 && r.CPUQuota < minCPUQuota:
		c.fail("CPU.Quota", "%d µs: below the kernel's least, %d", r.CPUQuota, minCPUQuota)
	case r.CPUPeriod != 0 && (r.CPUPeriod < minCPUPeriod || r.CPUPeriod > maxCPUPeriod):
		c.fail("CPU.Period", "%d µs: not within the kernel's %d to %d", r.CPUPeriod, minCPUPeriod, maxCPUPeriod)
	}
	if c.err != nil {
		return
	}
	if r.CPUShares != 0 && c.need("CPU.Shares", "cpu.weight") {
		c.add("cpu.weight", strconv.FormatUint(cpuWeight(r.CPUShares), 10))
	}
	if (r.CPUQuota != 0 || r.CPUPeriod != 0) && c.need("CPU.Quota", "cpu.max") {
		quota, period, err := readCPUMax(c.dir)
		if err != nil {
			c.err = err
			return
		}
		if r.CPUQuota != 0 {
			quota = limitValue(r.CPUQuota)
		}
		if r.CPUPeriod != 0 {
			period = r.CPUPeriod
		}
		c.add("cpu.max", quota+" "+strconv.FormatUint(period, 10))
	}
}

// cpuWeight converts cpu shares (2-262144) to a cpu.weight (1-10000) as
// runc does: the quadratic through the ends and the defaults (1024 → 100).
func cpuWeight(shares uint64) uint64 {
	if shares <= 2 {
		return 1
	}
	if shares >= 262144 {
		return 10000
	}
	l := math.Log2(float64(shares))
	exponent := (l*l+125*l)/612.0 - 7.0/34.0
	return uint64(math.Ceil(math.Pow(10, exponent)))
}

// readCPUMax reads cpu.max: "max 100000" or "50000 100000".
func readCPUMax(dir string) (string, uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
	if err != nil {
		return "", 0, fmt.Errorf("read cpu.max: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return "", 0, fmt.Errorf("cpu.max: %q is not a quota and a period", b)
	}
	p, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("cpu.max: %w", err)
	}
	return f[0], p, nil
}

func (c *converter) cpuset(r Resources) {
	for _, s := range []struct{ field, file, value, online string }{
		{"CPU.Cpus", "cpuset.cpus", r.CPUs, "devices/system/cpu/online"},
		{"CPU.Mems", "cpuset.mems", r.Mems, "devices/system/node/online"},
	} {
		if s.value == "" || c.err != nil {
			continue
		}
		want, err := ParseList(s.value)
		if err != nil {
			c.fail(s.field, "%q: %v", s.value, err)
			return
		}
		onlineList := "0"
		if b, err := os.ReadFile(c.sysfs(s.online)); err == nil {
			onlineList = strings.TrimSpace(string(b))
		} else if s.file == "cpuset.cpus" || !errors.Is(err, fs.ErrNotExist) {
			c.err = fmt.Errorf("%s%s: %w", c.prefix, s.field, err)
			return
		}
		online, err := ParseList(onlineList)
		if err != nil {
			c.err = fmt.Errorf("%s%s: %s: %w", c.prefix, s.field, s.online, err)
			return
		}
		for n := range want {
			if !online[n] {
				c.fail(s.field, "%q: %d is not online (online: %s)", s.value, n, onlineList)
				return
			}
		}
		if c.need(s.field, s.file) {
			c.add(s.file, s.value)
		}
	}
}

// maxListItems bounds a cpu or node list: more than the kernel's
// NR_CPUS is a list of no machine.
const maxListItems = 8192

// ParseList parses a kernel cpu or node list ("0-3,5").
func ParseList(s string) (map[int]bool, error) {
	set := map[int]bool{}
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("%q is not a number or range", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("%q is not a number or range", part)
			}
		}
		if b >= maxListItems {
			return nil, fmt.Errorf("%d: beyond %d", b, maxListItems-1)
		}
		for n := a; n <= b; n++ {
			set[n] = true
		}
	}
	return set, nil
}

func (c *converter) pids(r Resources) {
	switch {
	case r.Pids == 0 || c.err != nil:
		return
	case r.Pids < -1:
		c.fail("Pids.Limit", "%d: negative; -1 is no limit", r.Pids)
	case r.Pids > maxPids:
		c.fail("Pids.Limit", "%d: above the kernel's %d", r.Pids, maxPids)
	default:
		if c.need("Pids.Limit", pidsMax) {
			c.add(pidsMax, limitValue(r.Pids))
		}
	}
}

func (c *converter) blkio(r Resources) {
	if c.err != nil {
		return
	}
	if r.BlkioLeafWeight != 0 {
		c.fail("BlockIO.LeafWeight", "cgroup v2 has no leaf weight")
		return
	}
	var weights []string
	if w := r.BlkioWeight; w != 0 {
		if w < 10 || w > 1000 {
			c.fail("BlockIO.Weight", "%d: not within 10 to 1000", w)
			return
		}
		weights = append(weights, "default "+strconv.FormatUint(ioWeight(w), 10))
	}
	for i, d := range r.BlkioWeightDevices {
		field := fmt.Sprintf("BlockIO.WeightDevice[%d]", i)
		if d.Weight < 10 || d.Weight > 1000 {
			c.fail(field+".Weight", "%d: not within 10 to 1000", d.Weight)
			return
		}
		dev, ok := c.device(field, d.Major, d.Minor)
		if !ok {
			return
		}
		weights = append(weights, dev+" "+strconv.FormatUint(ioWeight(d.Weight), 10))
	}
	if len(weights) > 0 && c.need("BlockIO.Weight", "io.weight") {
		for _, w := range weights {
			c.add("io.weight", w)
		}
	}
	for _, t := range []struct {
		field, key string
		devs       []ThrottleDevice
	}{
		{"BlockIO.ThrottleReadBpsDevice", "rbps", r.BlkioThrottleReadBps},
		{"BlockIO.ThrottleWriteBpsDevice", "wbps", r.BlkioThrottleWriteBps},
		{"BlockIO.ThrottleReadIOPSDevice", "riops", r.BlkioThrottleReadIOPS},
		{"BlockIO.ThrottleWriteIOPSDevice", "wiops", r.BlkioThrottleWriteIOPS},
	} {
		for i, d := range t.devs {
			field := fmt.Sprintf("%s[%d]", t.field, i)
			dev, ok := c.device(field, d.Major, d.Minor)
			if !ok || !c.need(field, "io.max") {
				return
			}
			rate := "max"
			if d.Rate != 0 {
				rate = strconv.FormatUint(d.Rate, 10)
			}
			c.add("io.max", dev+" "+t.key+"="+rate)
		}
	}
}

// ioWeight converts a v1 blkio weight (10-1000) to io.weight (1-10000),
// as runc does.
func ioWeight(w uint32) uint64 { return 1 + (uint64(w)-10)*9999/990 }

// device checks that a block device numbered major:minor exists.
func (c *converter) device(field string, major, minor int64) (string, bool) {
	if major < 0 || minor < 0 || major > 0xfff || minor > 0xfffff {
		c.fail(field, "%d:%d is not a device number", major, minor)
		return "", false
	}
	dev := fmt.Sprintf("%d:%d", major, minor)
	if _, err := os.Stat(c.sysfs("dev/block/" + dev)); err != nil {
		c.fail(field, "no block device %s", dev)
		return "", false
	}
	return dev, true
}

func (c *converter) hugetlb(r Resources) {
	if len(r.Hugepages) == 0 || c.err != nil {
		return
	}
	sizes, err := HugepageSizes(c.sysfs("kernel/mm/hugepages"))
	if err != nil {
		c.err = err
		return
	}
	for i, h := range r.Hugepages {
		field := fmt.Sprintf("HugepageLimits[%d].Pagesize", i)
		if !sizes[h.Pagesize] {
			c.fail(field, "%q: not a huge page size of this kernel (%v)", h.Pagesize, keys(sizes))
			return
		}
		file := "hugetlb." + h.Pagesize + ".max"
		if !c.need(field, file) {
			return
		}
		c.add(file, strconv.FormatUint(h.Limit, 10))
	}
}

// HugepageSizes lists the huge page sizes the kernel has, as the hugetlb
// controller names them ("2MB", "1GB"), from dir
// (/sys/kernel/mm/hugepages). A kernel without huge pages has none.
func HugepageSizes(dir string) (map[string]bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("huge page sizes: %w", err)
	}
	sizes := map[string]bool{}
	for _, e := range entries {
		kb, ok := strings.CutPrefix(e.Name(), "hugepages-")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(kb, "kB"), 10, 64)
		if err != nil {
			continue
		}
		sizes[pageSizeName(n<<10)] = true
	}
	return sizes, nil
}

// pageSizeName names a page size of b bytes as the kernel's hugetlb
// controller does: in the largest unit (KB, MB, GB) it is a whole number of.
func pageSizeName(b uint64) string {
	units := []string{"B", "KB", "MB", "GB", "TB"}
	i := 0
	for b >= 1024 && b%1024 == 0 && i < len(units)-1 {
		b /= 1024
		i++
	}
	return strconv.FormatUint(b, 10) + units[i]
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Apply writes ws to the cgroup at dir, in order. When one fails, the
// files already written get their old values back, so that a refused
// update changes nothing.
func Apply(dir string, ws []Write) error {
	var done []Write
	for _, w := range ws {
		prev, err := os.ReadFile(filepath.Join(dir, w.File))
		if err != nil {
			return errors.Join(fmt.Errorf("read %s: %w", w.File, err), restore(dir, done))
		}
		if err := writeFile(dir, w.File, w.Value); err != nil {
			return errors.Join(fmt.Errorf("%s: %w", w.File, err), restore(dir, done))
		}
		done = append(done, Write{w.File, string(prev)})
	}
	return nil
}

// restore writes back the values read before done were written, last
// first. A file read as lines (io.weight, io.max: one per device) is
// written back a line at a time; an empty one (cpuset.cpus unset) as an
// empty line.
func restore(dir string, done []Write) error {
	var errs []error
	for i := len(done) - 1; i >= 0; i-- {
		lines := strings.Split(strings.TrimSpace(done[i].Value), "\n")
		for _, line := range lines {
			if line == "" {
				line = "\n"
			}
			if err := writeFile(dir, done[i].File, line); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", done[i].File, err))
			}
		}
	}
	return errors.Join(errs...)
}
