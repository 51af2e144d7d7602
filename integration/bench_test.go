package integration

import (
	"strconv"
	"strings"
	"testing"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/vmtools"
)

// settle waits until the shared VM's guest has loaded its late kernel
// modules, which right after boot takes its CPU for most of a second: a
// tmpfs mount answers once they are in (as in cabin-bench).
func settle(b *testing.B, e *env) {
	b.Helper()
	resp, err := vmtools.NewMaitredClient(e.cc).Mount(toVM(b.Context(), e.shared.name), &vmtools.MountRequest{
		Source: "tmpfs", Target: "/run/bench-settle", Fstype: "tmpfs", CreateTarget: true,
	})
	if err != nil || resp.GetError() != 0 {
		b.Fatalf("settle: %v, mount error %d", err, resp.GetError())
	}
}

// BenchmarkRelayedGetKernelVersion is one small unary call to the shared
// VM's agent through cabind's relay.
func BenchmarkRelayedGetKernelVersion(b *testing.B) {
	e := needEnv(b)
	settle(b, e)
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
	settle(b, e)
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

// streamBytes is what the exec streaming benchmarks move per operation.
const streamBytes = 8 << 20

// BenchmarkRelayedExecOutput streams a process's output out of the shared
// VM: bytes per second out of the guest, through the relay.
func BenchmarkRelayedExecOutput(b *testing.B) {
	e := needEnv(b)
	settle(b, e)
	// dd, not head -c: busybox's head is itself slower than the stream
	// under emulation.
	const block = 64 << 10
	start := &execv1.ExecStart{Argv: []string{"dd", "if=/dev/zero", "bs=" + strconv.Itoa(block), "count=" + strconv.Itoa(streamBytes/block)}}
	b.SetBytes(streamBytes)
	for b.Loop() {
		res, err := execIn(b.Context(), e.cc, e.shared.name, start)
		if err != nil {
			b.Fatal(err)
		}
		if res.code != 0 || len(res.stdout) != streamBytes {
			b.Fatalf("dd exited %d with %d bytes", res.code, len(res.stdout))
		}
	}
}

// BenchmarkRelayedExecInput streams input into a process in the shared VM:
// bytes per second into the guest, through the relay.
func BenchmarkRelayedExecInput(b *testing.B) {
	e := needEnv(b)
	settle(b, e)
	chunk := make([]byte, execv1.MaxChunk)
	var reqs []*execv1.ExecRequest
	for n := 0; n < streamBytes; n += len(chunk) {
		reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: chunk[:min(len(chunk), streamBytes-n)]}})
	}
	reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_CloseStdin{CloseStdin: &execv1.CloseStdin{}}})
	// dd, not wc -c: busybox's wc is itself slower than the stream under
	// emulation (11-14 MB/s measured with it, ~25 MB/s with dd).
	const block = 64 << 10
	start := &execv1.ExecStart{Argv: []string{"dd", "of=/dev/null", "bs=" + strconv.Itoa(block), "iflag=fullblock"}, Stdin: true}
	want := strconv.Itoa(streamBytes/block) + "+0 records in\n"
	b.SetBytes(streamBytes)
	for b.Loop() {
		res, err := execIn(b.Context(), e.cc, e.shared.name, start, reqs...)
		if err != nil {
			b.Fatal(err)
		}
		// Full blocks only, so the records count the bytes.
		if res.code != 0 || !strings.HasPrefix(string(res.stderr), want) {
			b.Fatalf("dd exited %d and reported %q", res.code, res.stderr)
		}
	}
}
