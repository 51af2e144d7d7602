package integration

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/statedir"
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

	t.Run("across cabind killed", func(t *testing.T) {
		const id = "it-stdout-crash"
		start(t, id)
		time.Sleep(time.Second)
		var got []byte
		for range 3 {
			resp, err := agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, Len: 32 << 10})
			if err != nil {
				t.Fatalf("ReadStdout: %v", err)
			}
			got = append(got, resp.GetData()...)
		}
		// What cabind read ahead and the client has not had is in its
		// spool, with the reply read ahead after it once that has come.
		// The kill waits for it: a reply the agent has sent and cabind
		// has not yet read dies with cabind (decisions §39), as a reply
		// to the client's own call would. The first reply is at most
		// 128 KiB, so a spool holding more than twice what was read has
		// the second.
		spool := filepath.Join(e.stateDir, "vms", statedir.VMID("", vm), "readahead")
		waitUntil(t, time.Minute, "the reply read ahead in the spool", func() bool {
			return spoolBytes(t, spool) > 8+2*int64(len(got))
		})
		e.crashDaemon(t)
		agent = kata.NewAgentServiceClient(e.cc) // the new cabind's
		for {
			var resp *kata.ReadStreamResponse
			var err error
			waitUntil(t, time.Minute, "ReadStdout through the new cabind", func() bool {
				resp, err = agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, Len: 32 << 10})
				return status.Code(err) != codes.Unavailable
			})
			if err != nil {
				t.Fatalf("ReadStdout after %d bytes: %v", len(got), err)
			}
			if len(resp.GetData()) == 0 {
				break
			}
			got = append(got, resp.GetData()...)
		}
		if string(got) != want.String() {
			i := 0
			for i < min(len(got), want.Len()) && got[i] == want.String()[i] {
				i++
			}
			t.Fatalf("read %d bytes across the crash, want %d; they part at byte %d", len(got), want.Len(), i)
		}
		if n := spoolBytes(t, spool); n != 0 {
			t.Errorf("the spool holds %d bytes after the end", n)
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

// spoolBytes is how many bytes the spool files in dir hold.
func spoolBytes(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			n += info.Size()
		}
	}
	return n
}
