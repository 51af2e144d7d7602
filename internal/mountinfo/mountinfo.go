// Package mountinfo reads a process's mount table, /proc/PID/mountinfo,
// whose format proc_pid_mountinfo(5) describes:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// The guest's PID 1 and the container runtime both need to know one thing
// of it: whether the root they run on is a mount of its own, which
// pivot_root(2) needs, or the kernel's initial rootfs, which it refuses.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of a mountinfo table.
type Mount struct {
	ID, Parent int
	// Root is the directory of the filesystem this mount shows; Point is
	// where it is mounted, relative to the reading process's root.
	Root, Point string
	FSType      string
	Source      string
}

// HasParent tells whether the mount is attached to another. The root mount
// of a mount namespace is its own parent: in the guest that is the
// initramfs's rootfs, which pivot_root cannot move.
func (m Mount) HasParent() bool { return m.ID != m.Parent }

// Parse reads a mountinfo table. A line it cannot read is an error naming
// the line.
func Parse(r io.Reader) ([]Mount, error) {
	var ms []Mount
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; s.Scan(); n++ {
		if strings.TrimSpace(s.Text()) == "" {
			continue
		}
		m, err := parseLine(s.Text())
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		ms = append(ms, m)
	}
	return ms, s.Err()
}

// Read reads the calling process's mount table.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Root returns the mount the reading process sees at "/": the last one
// there, as a mount stacked on another hides it.
func Root(ms []Mount) (Mount, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Point == "/" {
			return ms[i], true
		}
	}
	return Mount{}, false
}

func parseLine(line string) (Mount, error) {
	f := strings.Fields(line)
	// Six fields, any number of optional ones, "-", then type and source.
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+1 >= len(f) {
		return Mount{}, fmt.Errorf("%q: too few fields", line)
	}
	id, err1 := strconv.Atoi(f[0])
	parent, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return Mount{}, fmt.Errorf("%q: mount ids are not numbers", line)
	}
	m := Mount{ID: id, Parent: parent, Root: unescape(f[3]), Point: unescape(f[4]), FSType: f[sep+1]}
	if sep+2 < len(f) {
		m.Source = unescape(f[sep+2])
	}
	return m, nil
}

// unescape undoes the kernel's octal escapes (\040 for a space, \011,
// \012, \134) in a path field.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
