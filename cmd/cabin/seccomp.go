package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/api/kata"
)

// The values of cabin run's --seccomp that are not a file.
const (
	seccompDefault    = "default"
	seccompUnconfined = "unconfined"
)

// maxProfileBytes bounds a seccomp profile file; real ones are a few
// dozen KiB.
const maxProfileBytes = 1 << 20

// deniedSyscalls are the system calls cabin run's default filter refuses
// with EPERM; every other call is allowed. A container's process has no
// business with them, and each opens kernel code beyond what a container
// needs, some of it before any capability check. Most also need a
// capability cabin run does not grant; the filter is the second wall.
//
// It is a list of what to refuse rather than of what to allow: a program
// that makes a call nobody listed still works, and what the list holds is
// small enough to read.
var deniedSyscalls = []struct {
	why   string
	names []string
}{
	{"load or replace the kernel, or stop it", []string{
		"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot"}},
	{"system-wide state a container shares with the guest", []string{
		"swapon", "swapoff", "acct", "settimeofday", "clock_settime", "syslog", "quotactl", "quotactl_fd",
		"iopl", "ioperm"}},
	{"the kernel's keyrings, which no namespace separates", []string{"keyctl", "add_key", "request_key"}},
	{"large kernel interfaces a container does not need", []string{
		"bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"}},
	{"mounts, and joining other namespaces", []string{
		"mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
		"fspick", "mount_setattr", "setns"}},
	{"opening files by handle, past the mount the container sees", []string{"open_by_handle_at"}},
}

// userNSCalls create namespaces from their first argument's flags. A new
// user namespace would give the process every capability inside it, and
// with them the kernel code behind them: refused, as Docker's profile
// does. clone3 passes its flags in memory a filter cannot read, so it
// fails with ENOSYS, which makes the C library fall back to clone.
var userNSCalls = []string{"clone", "unshare"}

// defaultSeccomp is the filter cabin run gives a container by default:
// deniedSyscalls and user namespaces refused, on every x86 ABI.
func defaultSeccomp() *specs.LinuxSeccomp {
	eperm, enosys := uint(unix.EPERM), uint(unix.ENOSYS)
	s := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		// The 32-bit ABIs too: a filter applies to the calls of the ABI
		// it names, and an x86-64 process can make i386 calls.
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
	}
	for _, d := range deniedSyscalls {
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: d.names, Action: specs.ActErrno, ErrnoRet: &eperm})
	}
	s.Syscalls = append(s.Syscalls,
		specs.LinuxSyscall{Names: userNSCalls, Action: specs.ActErrno, ErrnoRet: &eperm, Args: []specs.LinuxSeccompArg{
			{Index: 0, Value: unix.CLONE_NEWUSER, ValueTwo: unix.CLONE_NEWUSER, Op: specs.OpMaskedEqual},
		}},
		specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
	)
	return s
}

// loadSeccomp turns --seccomp into the container's filter: the default
// one, none ("unconfined"), or the file named, which holds the seccomp
// section of an OCI runtime spec (runtime-spec's LinuxSeccomp in JSON).
func loadSeccomp(value string) (*kata.LinuxSeccomp, error) {
	var s *specs.LinuxSeccomp
	switch value {
	case seccompDefault:
		s = defaultSeccomp()
	case seccompUnconfined:
		return nil, nil
	default:
		var err error
		if s, err = readProfile(value); err != nil {
			return nil, err
		}
	}
	k, err := kata.SeccompFromOCI(s)
	if err != nil {
		return nil, usagef("--seccomp %s: %v", value, err)
	}
	return k, nil
}

// readProfile reads a seccomp profile file. Unknown fields are an error:
// a profile in another format (Docker's has includes and excludes that
// say when a rule applies) must not load as a different filter.
func readProfile(path string) (*specs.LinuxSeccomp, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("--seccomp: %v (want %q, %q or a profile file)", err, seccompDefault, seccompUnconfined)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxProfileBytes+1))
	if err != nil {
		return nil, usagef("--seccomp %s: %v", path, err)
	}
	if len(data) > maxProfileBytes {
		return nil, usagef("--seccomp %s: larger than %d bytes", path, maxProfileBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s specs.LinuxSeccomp
	if err := dec.Decode(&s); err != nil {
		return nil, usagef("--seccomp %s: not an OCI seccomp section: %v", path, err)
	}
	if dec.More() {
		return nil, usagef("--seccomp %s: more than one JSON value", path)
	}
	if s.DefaultAction == "" {
		return nil, usagef("--seccomp %s: no defaultAction", path)
	}
	for i, c := range s.Syscalls {
		if len(c.Names) == 0 || slices.Contains(c.Names, "") {
			return nil, usagef("--seccomp %s: syscalls[%d] has an empty or no system call name", path, i)
		}
		if c.Action == "" {
			return nil, usagef("--seccomp %s: syscalls[%d] (%s) has no action", path, i, c.Names[0])
		}
	}
	return &s, nil
}

// seccompFlagHelp is --seccomp's help text.
var seccompFlagHelp = fmt.Sprintf("seccomp filter: %q (refuses system calls a container has no business with), %q (none), or a file holding an OCI spec's linux.seccomp section", seccompDefault, seccompUnconfined)
