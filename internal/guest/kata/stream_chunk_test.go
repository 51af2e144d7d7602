package kata

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/cabinvm/cabin/api/kata"
)

// takeAll takes s to its end, n at a time, checking each chunk's room and
// size, and releasing it as the reply's writer would.
func takeAll(t *testing.T, s *outStream, n int) (out []byte, copies int) {
	t.Helper()
	limit := n
	if n <= 0 || n > maxRead {
		limit = maxRead
	}
	for {
		var front *chunkBuf
		if len(s.ahead) > 0 {
			front = s.ahead[0].b
		}
		c, err := s.take(t.Context(), n)
		if err != nil {
			t.Fatalf("take after %d bytes: %v", len(out), err)
		}
		if c.b == nil {
			return out, copies
		}
		if c.off < chunkHead || c.len() == 0 || c.len() > limit {
			t.Fatalf("took %d bytes at %d of a chunk, asked for %d, room %d", c.len(), c.off, n, chunkHead)
		}
		if front != nil && c.b != front {
			copies++
		}
		out = append(out, c.bytes()...)
		c.release()
	}
}

// A writer ahead of its reader, read in maxRead calls: every reply is a
// chunk as it was read, never a copy, with the room for its envelope;
// nothing lost, reordered or given twice though the chunks are reused.
func TestChunksTakenWhole(t *testing.T) {
	const lines = 120000
	p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s", lines, numberedScript))
	waitFull(t, p.stdout, readAhead)
	out, copies := takeAll(t, p.stdout, maxRead)
	if string(out) != numbered(lines) {
		t.Fatalf("read %d bytes, want %d, or not in order", len(out), len(numbered(lines)))
	}
	if copies > 0 {
		t.Errorf("%d replies were copies", copies)
	}
}

// Calls of sizes around a chunk's take a part of a chunk, or gather from
// two, and still get every byte once, in order, at most what they asked.
func TestChunksOddSizes(t *testing.T) {
	for _, n := range []int{1, chunkHead, 1000, maxRead/2 + 1, maxRead - 1, maxRead, maxRead + 1, 64 << 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			const lines = 50000
			p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s", lines, numberedScript))
			waitFull(t, p.stdout, readAhead)
			if out, _ := takeAll(t, p.stdout, n); string(out) != numbered(lines) {
				t.Fatalf("read %d bytes, want %d, or not in order", len(out), len(numbered(lines)))
			}
		})
	}
}

// Output that ends part way into a chunk: the calls get the chunks, the
// last one short, and then the end.
func TestChunksEndMidChunk(t *testing.T) {
	for _, size := range []int{1, maxRead - 1, maxRead, maxRead + 1, 2*maxRead + 7, 100000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			p := startPiped(t, startReaper(t), fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x", size))
			waitExit(t, p)
			var sizes []int
			for {
				c, err := p.stdout.take(t.Context(), maxRead)
				if err != nil {
					t.Fatal(err)
				}
				if c.b == nil {
					break
				}
				if strings.Trim(string(c.bytes()), "x") != "" {
					t.Fatalf("read %q", c.bytes())
				}
				sizes = append(sizes, c.len())
				c.release()
			}
			total := 0
			for i, k := range sizes {
				total += k
				if k != maxRead && i != len(sizes)-1 {
					t.Errorf("reads %v: a short read before the last", sizes)
				}
			}
			if total != size {
				t.Errorf("read %d bytes in %v, want %d", total, sizes, size)
			}
		})
	}
}

// A call asking for more than there is gets what there is without
// waiting for more: a short read.
func TestChunksShortRead(t *testing.T) {
	p := startPiped(t, startReaper(t), "printf 0123456789; exec sleep 60")
	waitFull(t, p.stdout, 10)
	c, err := p.stdout.take(t.Context(), maxRead)
	if err != nil || string(c.bytes()) != "0123456789" {
		t.Fatalf("read %q, %v", c.bytes(), err)
	}
	if c.off < chunkHead {
		t.Errorf("no room before the bytes: at %d", c.off)
	}
}

// Bytes handed out by Read, which are never given back, stay as they
// were while later calls reuse released chunks.
func TestChunksHandedOutStay(t *testing.T) {
	const lines = 100000
	p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s", lines, numberedScript))
	waitFull(t, p.stdout, readAhead)
	kept, err := p.stdout.Read(t.Context(), maxRead)
	if err != nil {
		t.Fatal(err)
	}
	was := bytes.Clone(kept)
	rest, _ := takeAll(t, p.stdout, maxRead)
	if !bytes.Equal(kept, was) {
		t.Fatal("bytes handed out changed under later reads")
	}
	if string(kept)+string(rest) != numbered(lines) {
		t.Fatal("output lost or reordered")
	}
}

// A read waiting for output when the stream is closed (the container
// removed) returns the end.
func TestChunksCloseWakesRead(t *testing.T) {
	p := startPiped(t, startReaper(t), "exec sleep 60")
	done := make(chan error, 1)
	go func() {
		c, err := p.stdout.take(t.Context(), maxRead)
		if err == nil && c.b != nil {
			err = fmt.Errorf("read %q", c.bytes())
		}
		done <- err
	}()
	// Let the read block; closing before it starts gives the end too.
	time.Sleep(50 * time.Millisecond)
	p.stdout.close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The log keeper writes each record from the chunk its bytes were read
// into, the header in the chunk's room: the kept log reads back as the
// process wrote it, both streams, in order.
func TestKeeperRecordsInPlace(t *testing.T) {
	s, k := keptSandbox(t)
	const lines = 60000 // 480,000 bytes: within one log file
	p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s; echo oops >&2", lines, numberedScript))
	done := make(chan struct{}, 2)
	go func() { k.drain(p.stdout, streamStdout); done <- struct{}{} }()
	go func() { k.drain(p.stderr, streamStderr); done <- struct{}{} }()
	waitExit(t, p)
	<-done
	<-done
	out, errOut, dropped, err := collect(t, s, t.Context(), "c", false, -1)
	if err != nil || dropped != 0 || errOut != "oops\n" {
		t.Fatalf("Logs: stderr %q, dropped %d, %v", errOut, dropped, err)
	}
	if out != numbered(lines) {
		t.Fatalf("kept %d bytes, want %d, or not in order", len(out), len(numbered(lines)))
	}
}

// The reply's data field is where stream_reply.go writes it from.
func TestReadStreamDataField(t *testing.T) {
	fd := (&pb.ReadStreamResponse{}).ProtoReflect().Descriptor().Fields().ByName("data")
	if fd == nil || fd.Number() != readStreamData || fd.Kind() != protoreflect.BytesKind {
		t.Errorf("ReadStreamResponse.data is %v, want bytes field %d", fd, readStreamData)
	}
}

// Reads of more than maxRead (cabind's read ahead), alone and mixed with
// reads of less: chunks of at most maxRead with their room, at most
// maxReply in all, every byte once, in order.
func TestTakeChunks(t *testing.T) {
	for _, sizes := range [][]int{{maxReply}, {maxReply, 1000, 200 << 10, maxRead + 1, 0}} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			const lines = 120000
			p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s", lines, numberedScript))
			waitFull(t, p.stdout, readAhead)
			var out []byte
			for i := 0; ; i++ {
				n := sizes[i%len(sizes)]
				cs, err := p.stdout.takeChunks(t.Context(), n)
				if err != nil {
					t.Fatal(err)
				}
				if len(cs) == 0 {
					break
				}
				total := 0
				for j, c := range cs {
					if c.off < chunkHead || c.len() == 0 || c.len() > maxRead {
						t.Fatalf("chunk %d: %d bytes at %d", j, c.len(), c.off)
					}
					total += c.len()
					out = append(out, c.bytes()...)
					c.release()
				}
				if limit := min(max(n, 1), maxReply); n > 0 && total > limit || n == 0 && total > maxRead {
					t.Fatalf("took %d bytes for %d", total, n)
				}
			}
			if string(out) != numbered(lines) {
				t.Fatalf("read %d bytes, want %d, or not in order", len(out), len(numbered(lines)))
			}
		})
	}
}

// Outside a call of the unary server (through gRPC), a reply of several
// chunks carries their bytes in the message, in order; one of one chunk
// its bytes as they are.
func TestReplyChunksThroughGRPC(t *testing.T) {
	p := startPiped(t, startReaper(t), fmt.Sprintf("N=%d; %s", 120000, numberedScript))
	waitFull(t, p.stdout, readAhead)
	cs, err := p.stdout.takeChunks(t.Context(), maxReply)
	if err != nil || len(cs) < 2 {
		t.Fatalf("took %d chunks, %v", len(cs), err)
	}
	var want []byte
	for _, c := range cs {
		want = append(want, c.bytes()...)
	}
	if got := replyChunks(t.Context(), cs).GetData(); !bytes.Equal(got, want) {
		t.Fatalf("reply of %d bytes, want the chunks' %d", len(got), len(want))
	}
	one, err := p.stdout.take(t.Context(), maxRead)
	if err != nil {
		t.Fatal(err)
	}
	if got := replyChunks(t.Context(), []chunk{one}).GetData(); &got[0] != &one.bytes()[0] {
		t.Error("a reply of one chunk copied it")
	}
	if got := replyChunks(t.Context(), nil); len(got.GetData()) != 0 {
		t.Error("no chunks: not the end")
	}
}
