package kata

import (
	"errors"
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SeccompFromOCI converts the seccomp section of an OCI runtime spec to
// Kata's message. The fields Kata's message has no place for
// (defaultErrnoRet, listenerPath, listenerMetadata) are an error naming
// them, not dropped: a filter must not arrive weaker than it was written.
func SeccompFromOCI(s *specs.LinuxSeccomp) (*LinuxSeccomp, error) {
	if s == nil {
		return nil, nil
	}
	var errs []error
	if s.DefaultErrnoRet != nil {
		errs = append(errs, errors.New("defaultErrnoRet"))
	}
	if s.ListenerPath != "" {
		errs = append(errs, errors.New("listenerPath"))
	}
	if s.ListenerMetadata != "" {
		errs = append(errs, errors.New("listenerMetadata"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("seccomp: not supported by Kata's agent API: %w", err)
	}
	out := &LinuxSeccomp{DefaultAction: string(s.DefaultAction)}
	for _, a := range s.Architectures {
		out.Architectures = append(out.Architectures, string(a))
	}
	for _, f := range s.Flags {
		out.Flags = append(out.Flags, string(f))
	}
	for _, c := range s.Syscalls {
		call := &LinuxSyscall{Names: slices.Clone(c.Names), Action: string(c.Action)}
		if c.ErrnoRet != nil {
			call.ErrnoRet = &LinuxSyscall_Errnoret{Errnoret: uint32(*c.ErrnoRet)}
		}
		for _, a := range c.Args {
			call.Args = append(call.Args, &LinuxSeccompArg{Index: uint64(a.Index), Value: a.Value, ValueTwo: a.ValueTwo, Op: string(a.Op)})
		}
		out.Syscalls = append(out.Syscalls, call)
	}
	return out, nil
}
