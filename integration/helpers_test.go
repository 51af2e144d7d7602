package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/relay"
)

// bootTimeout bounds a VM's boot under TCG on a busy 2-core host.
const bootTimeout = 60 * time.Second

// testContext is a context with a deadline that ends with t. Unlike
// t.Context it also works in cleanups, which run after t.Context ends.
func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// toVM routes calls made with ctx to the agent of the VM name.
func toVM(ctx context.Context, name string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, relay.MetadataVM, name)
}

// bootVM starts the VM name (1 vCPU, the default memory) and waits for its
// VmStartedSignal.
func bootVM(ctx context.Context, cc grpc.ClientConnInterface, name string) (vmRef, error) {
	w, err := watchEvents(ctx, cc, name)
	if err != nil {
		return vmRef{}, err
	}
	defer w.close()
	resp, err := concierge.NewVmConciergeClient(cc).StartVm(ctx, &concierge.StartVmRequest{Name: name, Cpus: 1})
	if err != nil {
		return vmRef{}, fmt.Errorf("StartVm %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return vmRef{}, fmt.Errorf("StartVm %s: %s", name, resp.GetFailureReason())
	}
	ev, err := w.next(bootTimeout, func(ev *cabinv1.Event) bool {
		return ev.GetVmStarted() != nil || ev.GetVmStopped() != nil
	})
	if err != nil {
		return vmRef{}, fmt.Errorf("boot %s: %w", name, err)
	}
	if ev.GetVmStopped() != nil {
		return vmRef{}, fmt.Errorf("boot %s: stopped while starting (%v)", name, ev.GetVmStopped().GetReason())
	}
	return vmRef{name: name, pid: int(resp.GetVmInfo().GetPid()), cid: resp.GetVmInfo().GetCid()}, nil
}

// bootOwnVM boots a VM that belongs to t and is stopped when t ends, if
// t has not stopped it.
func bootOwnVM(t *testing.T, e *env, name string) vmRef {
	t.Helper()
	t.Cleanup(func() { stopVM(t, e, name) })
	vm, err := bootVM(testContext(t, bootTimeout+10*time.Second), e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// stopVM stops the VM name if it exists, for cleanups.
func stopVM(t testing.TB, e *env, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := concierge.NewVmConciergeClient(e.cc).StopVm(ctx, &concierge.StopVmRequest{Name: name})
	switch {
	case err != nil:
		t.Errorf("cleanup: StopVm %s: %v", name, err)
	case !resp.GetSuccess():
		t.Errorf("cleanup: StopVm %s: %s", name, resp.GetFailureReason())
	}
}

// watcher follows cabind's event stream.
type watcher struct {
	cancel context.CancelFunc
	ch     chan *cabinv1.Event
	err    error // why the stream ended; set before ch is closed
	seen   []*cabinv1.Event
}

// watchEvents subscribes to the events of the VM name (all VMs when
// empty) and returns once cabind confirms the subscription.
func watchEvents(ctx context.Context, cc grpc.ClientConnInterface, name string) (*watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := cabinv1.NewEventsClient(cc).Watch(ctx, &cabinv1.WatchRequest{VmName: name})
	if err == nil {
		_, err = stream.Header()
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch events: %w", err)
	}
	w := &watcher{cancel: cancel, ch: make(chan *cabinv1.Event, 64)}
	go func() {
		defer close(w.ch)
		for {
			ev, err := stream.Recv()
			if err != nil {
				w.err = err
				return
			}
			select {
			case w.ch <- ev:
			case <-ctx.Done():
				w.err = ctx.Err()
				return
			}
		}
	}()
	return w, nil
}

func (w *watcher) close() { w.cancel() }

// next returns the next event match accepts, waiting at most timeout.
// Every event received is kept in w.seen.
func (w *watcher) next(timeout time.Duration, match func(*cabinv1.Event) bool) (*cabinv1.Event, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				return nil, fmt.Errorf("the event stream ended (%v); events seen: %s", w.err, w.summary())
			}
			w.seen = append(w.seen, ev)
			if match(ev) {
				return ev, nil
			}
		case <-timer.C:
			return nil, fmt.Errorf("no such event within %s; events seen: %s", timeout, w.summary())
		}
	}
}

// count is how many of the events seen so far match.
func (w *watcher) count(match func(*cabinv1.Event) bool) int {
	n := 0
	for _, ev := range w.seen {
		if match(ev) {
			n++
		}
	}
	return n
}

func (w *watcher) summary() string {
	var s []string
	for _, ev := range w.seen {
		s = append(s, eventKind(ev))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func eventKind(ev *cabinv1.Event) string {
	switch s := ev.GetSignal().(type) {
	case *cabinv1.Event_VmStartingUp:
		return "VmStartingUp(" + s.VmStartingUp.GetName() + ")"
	case *cabinv1.Event_VmStarted:
		return "VmStarted(" + s.VmStarted.GetName() + ")"
	case *cabinv1.Event_VmStopping:
		return "VmStopping(" + s.VmStopping.GetName() + ")"
	case *cabinv1.Event_VmStopped:
		return "VmStopped(" + s.VmStopped.GetName() + "," + s.VmStopped.GetReason().String() + ")"
	}
	return fmt.Sprintf("%T", ev.GetSignal())
}

// execResult is how a command run with cabin.v1.Exec went.
type execResult struct {
	stdout, stderr []byte
	code, signal   int32
}

// execArgs runs argv in the VM vm without input and returns its outcome.
func execArgs(ctx context.Context, cc grpc.ClientConnInterface, vm string, argv ...string) (execResult, error) {
	return execIn(ctx, cc, vm, &execv1.ExecStart{Argv: argv})
}

// execIn runs one process through cabind's relay: start, then the
// requests in order, then the end of the request stream; meanwhile it
// collects the output until the exit status. Requests are sent while
// output is read, so a process echoing large input cannot stall on a full
// window.
func execIn(ctx context.Context, cc grpc.ClientConnInterface, vm string, start *execv1.ExecStart, reqs ...*execv1.ExecRequest) (execResult, error) {
	ctx, cancel := context.WithCancel(toVM(ctx, vm))
	defer cancel()
	stream, err := execv1.NewExecClient(cc).Exec(ctx)
	if err != nil {
		return execResult{}, err
	}
	all := append([]*execv1.ExecRequest{{Kind: &execv1.ExecRequest_Start{Start: start}}}, reqs...)
	go func() {
		for _, r := range all {
			if stream.Send(r) != nil {
				return // Recv reports why
			}
		}
		stream.CloseSend()
	}()
	var res execResult
	var out, errOut bytes.Buffer
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return res, errors.New("exec: the stream ended without an exit status")
		}
		if err != nil {
			return res, err
		}
		switch k := resp.GetKind().(type) {
		case *execv1.ExecResponse_Stdout:
			out.Write(k.Stdout)
		case *execv1.ExecResponse_Stderr:
			errOut.Write(k.Stderr)
		case *execv1.ExecResponse_Exit:
			res.stdout, res.stderr = out.Bytes(), errOut.Bytes()
			res.code, res.signal = k.Exit.GetCode(), k.Exit.GetSignal()
			return res, nil
		}
	}
}

// mustExec runs argv in the VM vm and fails t unless it exits 0; it
// returns the standard output.
func mustExec(t testing.TB, e *env, vm string, argv ...string) string {
	t.Helper()
	res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, argv...)
	if err != nil {
		t.Fatalf("exec %q: %v", argv, err)
	}
	if res.code != 0 {
		t.Fatalf("exec %q: exit %d, stdout %q, stderr %q", argv, res.code, res.stdout, res.stderr)
	}
	return string(res.stdout)
}

// copyToVM copies the host's file src to dst in the VM vm, executable,
// making dst's directory.
func copyToVM(t testing.TB, e *env, vm, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []*execv1.ExecRequest
	for chunk := range slices.Chunk(b, execv1.MaxChunk) {
		reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: chunk}})
	}
	reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_CloseStdin{CloseStdin: &execv1.CloseStdin{}}})
	// Positional parameters, not text in the script: nothing is quoted.
	argv := []string{"sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1" && chmod 755 "$1"`, "sh", dst}
	res, err := execIn(testContext(t, 60*time.Second), e.cc, vm, &execv1.ExecStart{Argv: argv, Stdin: true}, reqs...)
	if err != nil || res.code != 0 {
		t.Fatalf("copy %s to %s in %s: %v, %v", src, dst, vm, res, err)
	}
}

// wantCode fails t unless err is a gRPC status with code want whose
// message contains each of the words.
func wantCode(t testing.TB, err error, want codes.Code, words ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok {
		t.Fatalf("got error %v, want a gRPC %v error", err, want)
	}
	if st.Code() != want {
		t.Fatalf("got %v (%q), want %v", st.Code(), st.Message(), want)
	}
	for _, w := range words {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("error message %q does not name %q", st.Message(), w)
		}
	}
}

// processGone reports whether pid has exited (a zombie has).
func processGone(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// waitGone waits until pid has exited.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// qemuPIDs lists the running QEMU processes of VMs under stateDir: the
// ones whose -pidfile lies below it.
func qemuPIDs(stateDir string) []int {
	if !filepath.IsAbs(stateDir) || filepath.Clean(stateDir) == "/" {
		return nil // never everyone's
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || processGone(pid) {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if !strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-") {
			continue
		}
		for i := 1; i+1 < len(argv); i++ {
			if argv[i] == "-pidfile" && strings.HasPrefix(argv[i+1], stateDir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	slices.Sort(pids)
	return pids
}

// killQEMUs SIGKILLs every QEMU of stateDir and returns their pids.
func killQEMUs(stateDir string) []int {
	pids := qemuPIDs(stateDir)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitGone(pid, 5*time.Second)
	}
	return pids
}

// vmDirs lists the entries of the state dir's vms/.
func vmDirs(t testing.TB, e *env) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.stateDir, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, ent := range entries {
		names = append(names, ent.Name())
	}
	return names
}

// vmInfo is GetVmInfo of name.
func vmInfo(t testing.TB, e *env, name string) *concierge.GetVmInfoResponse {
	t.Helper()
	resp, err := concierge.NewVmConciergeClient(e.cc).GetVmInfo(testContext(t, 10*time.Second), &concierge.GetVmInfoRequest{Name: name})
	if err != nil {
		t.Fatalf("GetVmInfo %s: %v", name, err)
	}
	return resp
}

// listed reports whether ListVms shows the VM name.
func listed(t testing.TB, e *env, name string) bool {
	t.Helper()
	resp, err := concierge.NewVmConciergeClient(e.cc).ListVms(testContext(t, 10*time.Second), &concierge.ListVmsRequest{})
	if err != nil {
		t.Fatalf("ListVms: %v", err)
	}
	return slices.ContainsFunc(resp.GetVms(), func(v *concierge.ExtendedVmInfo) bool { return v.GetName() == name })
}
