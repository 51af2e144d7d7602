package bootcfg

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// BootMarkPrefix starts the lines the agent writes to the kernel log
// (/dev/kmsg) with its boot marks: where in its start-up it was when. A
// line carries each mark as its offset in milliseconds from the moment
// the line was written, so that a reader of the kernel log (dmesg) places
// it on the kernel's own clock, the printk timestamp, with no clock to
// align:
//
//	cabin-agent: boot main=-41.250 setup=-20.004 ports=0.000
//
// Writing one costs a write(2) to /dev/kmsg; the console does not print it
// (the kernel runs at loglevel=0), so it costs no slow serial output.
const BootMarkPrefix = "cabin-agent: boot"

// The agent's marks, in the order they happen.
const (
	MarkMain    = "main"    // the agent's main: the Go runtime and package init are done
	MarkSetup   = "setup"   // mounts, cgroups, host name done
	MarkModules = "modules" // the boot modules are loaded
	MarkPorts   = "ports"   // both virtio-serial ports are open
	MarkReady   = "ready"   // the host has acknowledged VmReady
)

// BootMark is one mark: a name and when it was reached.
type BootMark struct {
	Name string
	At   time.Time
}

// validMarkName reports whether s is a mark name, ^[a-z]{1,16}$; written
// out, as the cabin CLI links this package and a package-level regexp
// took ~0.6 ms of its every start (decisions §33).
func validMarkName(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

// FormatBootMarks returns the kernel log line for marks written at now.
func FormatBootMarks(marks []BootMark, now time.Time) (string, error) {
	var b strings.Builder
	b.WriteString(BootMarkPrefix)
	for _, m := range marks {
		if !validMarkName(m.Name) {
			return "", fmt.Errorf("boot mark name %q: want 1-16 lower-case letters", m.Name)
		}
		ms := float64(m.At.Sub(now)) / float64(time.Millisecond)
		fmt.Fprintf(&b, " %s=%.3f", m.Name, ms)
	}
	return b.String(), nil
}

// maxMarkOffset bounds an offset a reader accepts: a boot mark is written
// within seconds of the moment it records.
const maxMarkOffset = 10 * time.Minute

// ParseBootMarks reads the marks of one kernel log message (the text after
// the printk timestamp). It returns each mark's offset from the moment the
// line was written, and ok false when the message is not a boot mark line.
func ParseBootMarks(msg string) (marks map[string]time.Duration, ok bool, err error) {
	rest, found := strings.CutPrefix(msg, BootMarkPrefix)
	if !found || (rest != "" && rest[0] != ' ') {
		return nil, false, nil
	}
	marks = map[string]time.Duration{}
	for _, f := range strings.Fields(rest) {
		name, v, found := strings.Cut(f, "=")
		if !found || !validMarkName(name) {
			return nil, true, fmt.Errorf("boot mark %q: want name=milliseconds", f)
		}
		if _, dup := marks[name]; dup {
			return nil, true, fmt.Errorf("boot mark %q: given twice", name)
		}
		ms, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, true, fmt.Errorf("boot mark %q: %w", name, err)
		}
		if math.IsNaN(ms) || math.Abs(ms) > float64(maxMarkOffset/time.Millisecond) {
			return nil, true, fmt.Errorf("boot mark %q: offset %s out of range", name, v)
		}
		marks[name] = time.Duration(ms * float64(time.Millisecond))
	}
	if len(marks) == 0 {
		return nil, true, errors.New("boot mark line without marks")
	}
	return marks, true, nil
}
