package container

import (
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/names"
)

// checkID enforces the contract's id, the one rule for names
// (internal/names) with at most names.MaxContainer characters. That leaves
// no separator, no "." or ".." and nothing a command line could take for a
// flag, so the id can name a directory under the root. It is stricter than
// libcontainer, which also takes '+'.
func checkID(id string) error {
	return names.Check("container id", id, names.MaxContainer)
}

// checkPath requires p, the value of flag, to be an absolute, clean path:
// the runtime runs as root and its caller knows where things are, so a
// relative or unclean path is taken for a mistake rather than resolved
// against whatever the working directory is.
func checkPath(flag, p string) error {
	switch {
	case p == "":
		return invalidf("%s: empty path", flag)
	case !filepath.IsAbs(p):
		return invalidf("%s %q: not an absolute path", flag, p)
	case filepath.Clean(p) != p:
		return invalidf("%s %q: not a clean path (want %q)", flag, p, filepath.Clean(p))
	case strings.ContainsRune(p, 0):
		return invalidf("%s %q: contains NUL", flag, p)
	}
	return nil
}

// ParseSignal reads a signal as the contract allows: a number (1-64) or a
// name with or without "SIG" ("KILL", "SIGKILL", "kill").
func ParseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		// 0 only probes for the process; it is no signal to send.
		if n < 1 || n > 64 {
			return 0, invalidf("signal %q: out of range 1-64", s)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, invalidf("signal %q: unknown", s)
	}
	return sig, nil
}
