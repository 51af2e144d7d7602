package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// TestContainerStdout reads a container's output through cabind's relay
// as a Kata runtime does, while the container writes faster than it is
// read (the agent reads its pipe ahead): every byte comes, in order, none
// twice, no reply over the client's len; then a reader that gives up
// mid-stream leaves nothing behind.
func TestContainerStdout(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	ctx := toVM(testContext(t, 5*time.Minute), vm)
	agent := kata.NewAgentServiceClient(e.cc)
	const lines = 150000 // ~1 MB: several pipes' and read-aheads' worth
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	start := func(t *testing.T, id string) {
		t.Helper()
		if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id,
			Storages: []*kata.Storage{kataRootfs()}, OCI: kataSpec("seq", "1", strconv.Itoa(lines))}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		t.Cleanup(func() {
			agent.RemoveContainer(context.WithoutCancel(ctx), &kata.RemoveContainerRequest{ContainerId: id})
		})
		if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
	}

	t.Run("all of it in order", func(t *testing.T) {
		const id = "it-stdout"
		start(t, id)
		// Let seq fill the pipe first, so that reads find it full.
		time.Sleep(time.Second)
		var got strings.Builder
		sizes := []uint32{32 << 10, 1, 5000, 0, 100 << 10, 32 << 10}
		for i := 0; ; i++ {
			n := sizes[i%len(sizes)]
			resp, err := agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, Len: n})
			if err != nil {
				t.Fatalf("ReadStdout after %d bytes: %v", got.Len(), err)
			}
			d := resp.GetData()
			if len(d) == 0 {
				break
			}
			if n > 0 && len(d) > int(n) {
				t.Fatalf("ReadStdout(len %d) gave %d bytes", n, len(d))
			}
			got.Write(d)
		}
		if got.String() != want.String() {
			t.Fatalf("read %d bytes, want %d, or not in order", got.Len(), want.Len())
		}
		w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id})
		if err != nil || w.GetStatus() != 0 {
			t.Errorf("WaitProcess: %v, %v", w, err)
		}
	})

	t.Run("a reader that goes", func(t *testing.T) {
		const id = "it-stdout-gone"
		start(t, id)
		rctx, cancel := context.WithCancel(ctx)
		for range 3 {
			if _, err := agent.ReadStdout(rctx, &kata.ReadStreamRequest{ContainerId: id, Len: 32 << 10}); err != nil {
				t.Fatalf("ReadStdout: %v", err)
			}
		}
		cancel()
		// The container is killed and removed with output still read
		// ahead and in its pipe; nothing of it is left.
		if _, err := agent.SignalProcess(ctx, &kata.SignalProcessRequest{ContainerId: id, Signal: 9}); err != nil {
			t.Fatalf("SignalProcess: %v", err)
		}
		if _, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}); err != nil {
			t.Fatalf("WaitProcess: %v", err)
		}
		if _, err := agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer: %v", err)
		}
		_, err := agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, Len: 10})
		wantCode(t, err, codes.NotFound)
		l, err := containersv1.NewContainersClient(e.cc).List(ctx, &containersv1.ListContainersRequest{})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, c := range l.GetContainers() {
			if c.GetId() == id {
				t.Errorf("a removed container is listed: %v", c)
			}
		}
	})
}
