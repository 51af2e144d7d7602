package kata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// The calls a Kata runtime makes on the guest as a whole: CPUs and memory
// it hot-plugged, entropy, the clock.

// sysRoot is where sysfs is mounted in the guest.
const sysRoot = "/sys"

const (
	// maxCPUs is the most CPUs a Debian kernel takes (NR_CPUS).
	maxCPUs = 8192
	// onlineTries and onlinePause bound the wait for hot-plugged CPUs
	// to appear and come online: 5 s, as upstream.
	onlineTries = 100
	onlinePause = 50 * time.Millisecond
	// maxEntropy bounds ReseedRandomDev's data.
	maxEntropy = 64 << 10
)

// OnlineCPUMem brings nCPUs offline CPUs online (hot-plugged ones take a
// moment to appear) and, unless cpuOnly, every offline memory block.
// With wait it returns when that is done; without, at once, the work
// going on meanwhile. cgroup v2's cpuset controller is not enabled in the
// guest, so a CPU that comes online is every container's at once (upstream
// rewrites the containers' cpusets).
func (s *Sandbox) OnlineCPUMem(ctx context.Context, nCPUs uint32, cpuOnly, wait bool) error {
	if nCPUs > maxCPUs {
		return errdefs.InvalidArgument("nb_cpus", fmt.Sprintf("%d is more than a guest can have (%d)", nCPUs, maxCPUs))
	}
	work := func() error { return onlineCPUMem(sysRoot, int(nCPUs), cpuOnly) }
	if wait {
		return work()
	}
	go func() {
		if err := work(); err != nil {
			s.log.Warn("online CPUs and memory", "err", err)
		}
	}()
	return nil
}

var (
	cpuDir    = regexp.MustCompile(`^cpu[0-9]+$`)
	memoryDir = regexp.MustCompile(`^memory[0-9]+$`)
)

// onlineCPUMem does OnlineCPUMem's work on the sysfs at root.
func onlineCPUMem(root string, nCPUs int, cpuOnly bool) error {
	var errs []error
	if nCPUs > 0 {
		done := 0
		for try := 0; ; try++ {
			n, err := onlineAll(filepath.Join(root, "devices/system/cpu"), cpuDir, nCPUs-done)
			done += n
			if err != nil {
				errs = append(errs, err)
				break
			}
			if done >= nCPUs {
				break
			}
			if try == onlineTries {
				errs = append(errs, errdefs.Errorf(errdefs.ErrFailedPrecondition,
					"nb_cpus: brought %d of %d CPUs online: no other CPU is offline", done, nCPUs))
				break
			}
			time.Sleep(onlinePause)
		}
	}
	if !cpuOnly {
		if _, err := onlineAll(filepath.Join(root, "devices/system/memory"), memoryDir, -1); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// onlineAll writes 1 to the online file of up to limit (all, when
// negative) entries of dir whose names match and which are offline. It
// returns how many it brought online.
func onlineAll(dir string, match *regexp.Regexp, limit int) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("online: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if limit >= 0 && n >= limit {
			break
		}
		if !match.MatchString(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name(), "online")
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != "0" {
			continue // always online (cpu0), or online already
		}
		if err := os.WriteFile(p, []byte("1"), 0); err != nil {
			errs = append(errs, fmt.Errorf("online %s: %w", e.Name(), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// MemHotplugByProbe tells the kernel of memory the host added at each
// address, through the memory probe interface.
func (s *Sandbox) MemHotplugByProbe(ctx context.Context, addrs []uint64) error {
	return probeMemory(sysRoot, addrs)
}

// probeMemory does MemHotplugByProbe's work on the sysfs at root.
func probeMemory(root string, addrs []uint64) error {
	const field = "memHotplugProbeAddr"
	if len(addrs) == 0 {
		return errdefs.InvalidArgument(field, "no address")
	}
	dir := filepath.Join(root, "devices/system/memory")
	probe := filepath.Join(dir, "probe")
	if _, err := os.Stat(probe); err != nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"the guest kernel has no memory probe interface (%s; CONFIG_ARCH_MEMORY_PROBE): %w", probe, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "block_size_bytes"))
	if err != nil {
		return fmt.Errorf("memory block size: %w", err)
	}
	block, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || block == 0 {
		return fmt.Errorf("memory block size %q: not a hex number", b)
	}
	for i, a := range addrs {
		if a%block != 0 {
			return errdefs.InvalidArgument(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%#x is not a multiple of the memory block size %#x", a, block))
		}
	}
	for i, a := range addrs {
		if err := os.WriteFile(probe, []byte(fmt.Sprintf("%#x", a)), 0); err != nil {
			return fmt.Errorf("%s[%d]: probe %#x: %w", field, i, a, err)
		}
	}
	return nil
}

// ReseedRandomDev mixes data into the kernel's entropy pool, credited as
// entropy (it comes from the host's), and reseeds the CRNG from it.
func (s *Sandbox) ReseedRandomDev(ctx context.Context, data []byte) error {
	return reseed("/dev/random", data)
}

func reseed(dev string, data []byte) error {
	switch {
	case len(data) == 0:
		return errdefs.InvalidArgument("data", "no entropy given")
	case len(data) > maxEntropy:
		return errdefs.InvalidArgument("data", fmt.Sprintf("%d bytes; at most %d", len(data), maxEntropy))
	}
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer unix.Close(fd)
	// struct rand_pool_info: entropy_count (bits), buf_size (bytes), buf.
	info := make([]byte, 8+len(data))
	*(*int32)(unsafe.Pointer(&info[0])) = int32(len(data) * 8)
	*(*int32)(unsafe.Pointer(&info[4])) = int32(len(data))
	copy(info[8:], data)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("reseed: RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("reseed: RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// maxClock is the latest time the kernel's clock holds (ktime_t, 64-bit
// nanoseconds: April 2262).
const maxClock = (1<<63 - 1) / int64(time.Second)

// SetGuestDateTime sets the guest's clock to sec and usec since the epoch.
func (s *Sandbox) SetGuestDateTime(ctx context.Context, sec, usec int64) error {
	ts, err := guestTime(sec, usec)
	if err != nil {
		return err
	}
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	s.log.Info("clock set", "time", time.Unix(sec, usec*1000).UTC())
	return nil
}

// guestTime checks a time given as seconds and microseconds.
func guestTime(sec, usec int64) (unix.Timespec, error) {
	switch {
	case sec < 0:
		return unix.Timespec{}, errdefs.InvalidArgument("Sec", fmt.Sprintf("%d is before the epoch", sec))
	case sec >= maxClock:
		return unix.Timespec{}, errdefs.InvalidArgument("Sec", fmt.Sprintf("%d is beyond what the kernel's clock holds (year 2262)", sec))
	case usec < 0 || usec >= 1e6:
		return unix.Timespec{}, errdefs.InvalidArgument("Usec", fmt.Sprintf("%d is not within [0, 1000000)", usec))
	case sec == 0 && usec == 0:
		// A zero value from the wire, never a host's clock.
		return unix.Timespec{}, errdefs.InvalidArgument("Sec", "must be set")
	}
	return unix.Timespec{Sec: sec, Nsec: usec * 1000}, nil
}
