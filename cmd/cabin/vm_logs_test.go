package main

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// serveLogs makes the fake daemon answer Logs with chunks, then err, and
// returns the requests it got.
func serveLogs(d *fakeDaemon, err error, chunks ...[]byte) func() []*cabinv1.LogsRequest {
	var mu sync.Mutex
	var reqs []*cabinv1.LogsRequest
	d.vms.logs = func(req *cabinv1.LogsRequest, stream cabinv1.Vms_LogsServer) error {
		mu.Lock()
		reqs = append(reqs, req)
		mu.Unlock()
		for _, c := range chunks {
			if err := stream.Send(&cabinv1.LogsChunk{Data: c}); err != nil {
				return err
			}
		}
		return err
	}
	return func() []*cabinv1.LogsRequest {
		mu.Lock()
		defer mu.Unlock()
		return reqs
	}
}

func TestVMLogs(t *testing.T) {
	d := startDaemon(t)
	reqs := serveLogs(d, nil, []byte("[    0.000000] Linux version 6.1\ncabin-"), []byte("agent: up"))
	r := d.run(t, nil, "--owner", "me", "vm", "logs", "web")
	if r.code != 0 || r.stdout != "[    0.000000] Linux version 6.1\ncabin-agent: up\n" || r.stderr != "" {
		t.Errorf("got %+v", r)
	}
	want := &cabinv1.LogsRequest{OwnerId: "me", Name: "web"}
	if got := reqs(); len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("requests %v, want %v", got, want)
	}
}

// A log over gRPC's message limit, not UTF-8, is printed whole and as it
// is: nothing added, since it ends with a newline.
func TestVMLogsLarge(t *testing.T) {
	d := startDaemon(t)
	log := make([]byte, 6<<20)
	rand.NewChaCha8([32]byte{}).Read(log)
	log[len(log)-1] = '\n'
	serveLogs(d, nil, slices.Collect(slices.Chunk(log, 32<<10))...)
	r := d.run(t, nil, "vm", "logs", "web")
	if r.code != 0 || r.stdout != string(log) {
		t.Errorf("exit %d, %d bytes out, want the %d of the log; stderr %q", r.code, len(r.stdout), len(log), r.stderr)
	}
}

func TestVMLogsFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want *cabinv1.LogsRequest
	}{
		{[]string{"-f"}, &cabinv1.LogsRequest{Name: "web", Follow: true}},
		{[]string{"--follow", "--tail", "5"}, &cabinv1.LogsRequest{Name: "web", Follow: true, TailLines: proto.Uint32(5)}},
		{[]string{"--tail", "0"}, &cabinv1.LogsRequest{Name: "web", TailLines: proto.Uint32(0)}},
		{[]string{"--tail=99999999999"}, &cabinv1.LogsRequest{Name: "web", TailLines: proto.Uint32(1<<32 - 1)}},
	} {
		d := startDaemon(t)
		reqs := serveLogs(d, nil)
		r := d.run(t, nil, append([]string{"vm", "logs", "web"}, tc.args...)...)
		if got := reqs(); r.code != 0 || r.stdout != "" || len(got) != 1 || !proto.Equal(got[0], tc.want) {
			t.Errorf("%q: %+v, requests %v; want %v", tc.args, r, got, tc.want)
		}
	}
	d := startDaemon(t)
	if r := d.run(t, nil, "vm", "logs", "web", "--tail", "-1"); r.code != 2 || !strings.Contains(r.stderr, "--tail") {
		t.Errorf("--tail -1: %+v", r)
	}
}

// With -f, output is printed as it comes, not when the stream ends.
func TestVMLogsFollowPrintsAsItComes(t *testing.T) {
	d := startDaemon(t)
	next := make(chan struct{})
	d.vms.logs = func(req *cabinv1.LogsRequest, stream cabinv1.Vms_LogsServer) error {
		stream.Send(&cabinv1.LogsChunk{Data: []byte("booted\n")})
		select {
		case <-next:
		case <-stream.Context().Done():
			return nil
		}
		return stream.Send(&cabinv1.LogsChunk{Data: []byte("stopping")})
	}
	var stdout, stderr syncBuffer
	done := make(chan int)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	go func() {
		done <- run(ctx, []string{"--socket", d.socket, "vm", "logs", "-f", "web"}, strings.NewReader(""), &stdout, &stderr, func(string) string { return "" })
	}()
	for stdout.String() != "booted\n" {
		select {
		case code := <-done:
			t.Fatalf("cabin ended (exit %d, stderr %q) before the stream did", code, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	close(next)
	if code := <-done; code != 0 || stdout.String() != "booted\nstopping\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

func TestVMLogsErrors(t *testing.T) {
	d := startDaemon(t)
	serveLogs(d, status.Error(codes.NotFound, "vm web: not found"))
	if r := d.run(t, nil, "vm", "logs", "web"); r.code != 1 || r.stdout != "" || r.stderr != "cabin: logs of web: vm web: not found\n" {
		t.Errorf("unknown VM: %+v", r)
	}
	// A stream cut short keeps what came and says why it ended.
	d = startDaemon(t)
	serveLogs(d, status.Error(codes.Unavailable, "cabind is stopping"), []byte("partial"))
	r := d.run(t, nil, "vm", "logs", "-f", "web")
	if r.code != 1 || r.stdout != "partial\n" || r.stderr != "cabin: logs of web: the connection was lost: cabind is stopping\n" {
		t.Errorf("stream ended by cabind: %+v", r)
	}
}
