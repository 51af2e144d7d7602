package kata

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/guest/ttyio"
)

// numbered is what the scripts below write: n numbered lines.
func numbered(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%07d\n", i)
	}
	return b.String()
}

const numberedScript = `awk -v n=$N 'BEGIN { for (i = 1; i <= n; i++) printf "%07d\n", i }'`

// waitFull waits until s's pipe holds at least n bytes.
func waitFull(t *testing.T, s *outStream, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); s.buffered() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the pipe holds %d bytes, waited for %d", s.buffered(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOutputPipeHoldsReadAhead: a process's output pipes are enlarged so
// that its writer can run a read-ahead's worth in front of the reader.
func TestOutputPipeHoldsReadAhead(t *testing.T) {
	p := startPiped(t, startReaper(t), "true")
	for _, s := range []*outStream{p.stdout, p.stderr} {
		var size int
		if err := ttyio.Control(s.f, func(fd int) error {
			var err error
			size, err = unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if size < readAhead {
			t.Errorf("pipe holds %d bytes, want %d", size, readAhead)
		}
	}
}

// TestReadAheadInOrder: a writer ahead of its reader (a full pipe) is
// read a pipe's worth at a time, and calls of every size get the bytes in
// order, none twice, none lost, each at most what it asked for; after the
// exit what was read ahead still comes before the end.
func TestReadAheadInOrder(t *testing.T) {
	r := startReaper(t)
	const lines = 120000 // 960,000 bytes: several pipes' worth
	p := startPiped(t, r, fmt.Sprintf("N=%d; %s; exit 4", lines, numberedScript))
	waitFull(t, p.stdout, readAhead)
	var out bytes.Buffer
	sizes := []int{100, maxRead, 1, 7000, 0, 40000, maxRead}
	for i := 0; ; i++ {
		n := sizes[i%len(sizes)]
		b, err := p.stdout.Read(t.Context(), n)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", out.Len(), err)
		}
		if len(b) == 0 {
			break
		}
		limit := n
		if n <= 0 || n > maxRead {
			limit = maxRead
		}
		if len(b) > limit {
			t.Fatalf("read %d bytes, asked for %d", len(b), n)
		}
		if i == 0 && p.stdout.aheadLen() == 0 {
			t.Error("a read of a full pipe kept nothing for the next calls")
		}
		out.Write(b)
	}
	if got, want := out.String(), numbered(lines); got != want {
		t.Fatalf("read %d bytes, want %d, or not in order", len(got), len(want))
	}
	if e := waitExit(t, p); e.Code != 4 {
		t.Errorf("exit %+v", e)
	}
}

// TestReadAheadSurvivesExitAndCancel: what a read took ahead is given out
// after the process has exited, to a call after one that was cancelled,
// and the end comes only after it.
func TestReadAheadSurvivesExitAndCancel(t *testing.T) {
	r := startReaper(t)
	const lines = 60000 // 480,000 bytes: more than the pipe holds
	p := startPiped(t, r, fmt.Sprintf("N=%d; %s", lines, numberedScript))
	waitFull(t, p.stdout, readAhead)
	first, err := p.stdout.Read(t.Context(), 10)
	if err != nil || len(first) != 10 {
		t.Fatalf("first read: %d bytes, %v", len(first), err)
	}
	ahead := p.stdout.aheadLen()
	if ahead == 0 {
		t.Fatal("nothing read ahead")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.stdout.Read(ctx, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	if p.stdout.aheadLen() != ahead {
		t.Fatalf("a cancelled read changed what was read ahead: %d, was %d", p.stdout.aheadLen(), ahead)
	}
	rest := readAllOut(t, p.stdout, 5000)
	waitExit(t, p)
	if got, want := string(first)+string(rest), numbered(lines); got != want {
		t.Fatalf("read %d bytes, want %d, or not in order", len(got), len(want))
	}
	if b, err := p.stdout.Read(t.Context(), 10); err != nil || len(b) != 0 {
		t.Errorf("read past the end: %q, %v", b, err)
	}
}

// TestReadAheadSmallOutput: a reader waiting for output gets it as soon
// as it comes, however little, in a buffer no larger than it.
func TestReadAheadSmallOutput(t *testing.T) {
	p := startPiped(t, startReaper(t), "read x; echo $x; read y; echo $y")
	for _, line := range []string{"a", "bb"} {
		done := make(chan []byte, 1)
		go func() {
			b, _ := p.stdout.Read(t.Context(), maxRead)
			done <- b
		}()
		if _, err := p.stdin.Write(t.Context(), []byte(line+"\n")); err != nil {
			t.Fatal(err)
		}
		b := <-done
		if string(b) != line+"\n" || cap(b) != len(b) {
			t.Errorf("read %q (capacity %d), want %q", b, cap(b), line+"\n")
		}
	}
}

// TestFullReadFitsOnePortWrite: the largest reply to ReadStdout, in the
// unary envelope (at most 32 bytes: frame length, reply and payload tags
// and lengths, a 64-bit call id), is one 32 KiB write to the agent's port.
func TestFullReadFitsOnePortWrite(t *testing.T) {
	n := proto.Size(&pb.ReadStreamResponse{Data: make([]byte, maxRead)})
	if n+32 > 32<<10 {
		t.Errorf("a full reply is %d bytes with its envelope; a port write takes %d", n+32, 32<<10)
	}
}
