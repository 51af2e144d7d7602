package kata

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

func TestSeccompFromOCI(t *testing.T) {
	zero, eperm := uint(0), uint(1)
	got, err := SeccompFromOCI(&specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86},
		Flags:         []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"a", "b"}, Action: specs.ActErrno, ErrnoRet: &eperm},
			// Set to 0 is set: the oneof must say so.
			{Names: []string{"c"}, Action: specs.ActErrno, ErrnoRet: &zero,
				Args: []specs.LinuxSeccompArg{{Index: 1, Value: 2, ValueTwo: 3, Op: specs.OpMaskedEqual}}},
			{Names: []string{"d"}, Action: specs.ActKillProcess},
		},
	})
	want := &LinuxSeccomp{
		DefaultAction: "SCMP_ACT_ALLOW",
		Architectures: []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_X86"},
		Flags:         []string{"SECCOMP_FILTER_FLAG_LOG"},
		Syscalls: []*LinuxSyscall{
			{Names: []string{"a", "b"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &LinuxSyscall_Errnoret{Errnoret: 1}},
			{Names: []string{"c"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &LinuxSyscall_Errnoret{Errnoret: 0},
				Args: []*LinuxSeccompArg{{Index: 1, Value: 2, ValueTwo: 3, Op: "SCMP_CMP_MASKED_EQ"}}},
			{Names: []string{"d"}, Action: "SCMP_ACT_KILL_PROCESS"},
		},
	}
	if err != nil || !proto.Equal(got, want) {
		t.Fatalf("SeccompFromOCI = %v, %v\nwant %v", got, err, want)
	}
	if got, err := SeccompFromOCI(nil); got != nil || err != nil {
		t.Errorf("SeccompFromOCI(nil) = %v, %v", got, err)
	}
	// What Kata's message cannot carry is refused, by name.
	_, err = SeccompFromOCI(&specs.LinuxSeccomp{DefaultAction: specs.ActErrno, DefaultErrnoRet: &eperm, ListenerPath: "/run/x.sock"})
	if err == nil || !strings.Contains(err.Error(), "defaultErrnoRet") || !strings.Contains(err.Error(), "listenerPath") {
		t.Errorf("unsupported fields: %v; want both named", err)
	}
}
