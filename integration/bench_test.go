package integration

import (
	"testing"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/vmtools"
)

// BenchmarkRelayedGetKernelVersion is one small unary call to the shared
// VM's agent through cabind's relay.
func BenchmarkRelayedGetKernelVersion(b *testing.B) {
	e := needEnv(b)
	c := vmtools.NewMaitredClient(e.cc)
	ctx := toVM(b.Context(), e.shared.name)
	for b.Loop() {
		if _, err := c.GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayedExecTrue is a whole exec of true in the shared VM: the
// stream through the relay, the process's start and exit, and its status.
func BenchmarkRelayedExecTrue(b *testing.B) {
	e := needEnv(b)
	start := &execv1.ExecStart{Argv: []string{"true"}}
	for b.Loop() {
		res, err := execIn(b.Context(), e.cc, e.shared.name, start)
		if err != nil {
			b.Fatal(err)
		}
		if res.code != 0 {
			b.Fatalf("true exited %d", res.code)
		}
	}
}
