package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procStat holds the fields of /proc/PID/stat that cabin uses.
type procStat struct {
	State     byte   // field 3: R, S, D, Z, ...
	StartTime uint64 // field 22: clock ticks after boot
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// parseProcStat parses a /proc/PID/stat line. Field 2 is the command name
// in parentheses and may itself hold spaces and parentheses, so the
// fields after it are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("parse /proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3, so field 22 is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("parse /proc stat: too few fields")
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: start time: %w", err)
	}
	return procStat{State: f[0][0], StartTime: start}, nil
}

// readPIDFile reads the pid QEMU wrote with -pidfile.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: bad pid %q", path, bytes.TrimSpace(b))
	}
	return pid, nil
}

// isQEMUFor reports whether pid is a QEMU started with -pidfile pidfile,
// that is, the QEMU of that VM directory and no other process. It reads
// the command line rather than /proc/PID/exe, which needs ptrace access
// that a confined daemon may lack.
func isQEMUFor(pid int, pidfile string) (bool, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false, err
	}
	argv := strings.Split(string(b), "\x00")
	if !strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-") {
		return false, nil
	}
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] == "-pidfile" && argv[i+1] == pidfile {
			return true, nil
		}
	}
	return false, nil
}
