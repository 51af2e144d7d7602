package cabinv1

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

// logsClient serves cabin.v1.Vms over a manager of a fresh state dir
// (which starts no VMs: logs are read from disk) and returns a client
// with gRPC's default limits.
func logsClient(t *testing.T) (pb.VmsClient, statedir.Root) {
	t.Helper()
	return logsClientAs(t, nil)
}

// logsClientAs is logsClient for calls made by c (nil: cabind itself).
func logsClientAs(t *testing.T, c *caller.Caller) (pb.VmsClient, statedir.Root) {
	t.Helper()
	root := statedirtest.New(t)
	m, err := vmm.New(vmm.Options{Root: root, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmsServer(s, NewVms(m)) }, grpctest.As(c)...)
	return pb.NewVmsClient(cc), root
}

// stoppedVM leaves what a stopped VM name leaves: its record, and its
// console log, rotated[0] the oldest file.
func stoppedVM(t *testing.T, root statedir.Root, name string, rotated [][]byte, live []byte) {
	t.Helper()
	ownedVM(t, root, "", name, rotated, live)
}

func ownedVM(t *testing.T, root statedir.Root, owner, name string, rotated [][]byte, live []byte) {
	t.Helper()
	dir := root.VM(statedir.VMID(owner, name))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dir.Record(), []byte("{}"), 0o600)
	for i, b := range rotated {
		os.WriteFile(dir.RotatedLog(len(rotated)-i), b, 0o600)
	}
	os.WriteFile(dir.ConsoleLog(), live, 0o600)
}

// logs makes one Logs call and returns the chunks.
func logs(t *testing.T, c pb.VmsClient, req *pb.LogsRequest) ([][]byte, error) {
	t.Helper()
	stream, err := c.Logs(t.Context(), req)
	if err != nil {
		return nil, err
	}
	var chunks [][]byte
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return chunks, nil
		}
		if err != nil {
			return chunks, err
		}
		chunks = append(chunks, msg.GetData())
	}
}

// A log far over gRPC's 4 MiB message limit, and not UTF-8, comes whole
// and unaltered, in chunks of at most maxLogChunk.
func TestLogsStreamsAllOfABigLog(t *testing.T) {
	c, root := logsClient(t)
	rnd := rand.NewChaCha8([32]byte{})
	old, live := make([]byte, 5<<20), make([]byte, 2<<20)
	rnd.Read(old)
	rnd.Read(live)
	stoppedVM(t, root, "big", [][]byte{old}, live)
	chunks, err := logs(t, c, &pb.LogsRequest{Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range chunks {
		if len(ch) > maxLogChunk || len(ch) == 0 {
			t.Fatalf("chunk %d has %d bytes", i, len(ch))
		}
	}
	if got, want := bytes.Join(chunks, nil), append(old, live...); !bytes.Equal(got, want) {
		t.Errorf("got %d bytes, want the %d of the log", len(got), len(want))
	}
}

func TestLogsTailLines(t *testing.T) {
	c, root := logsClient(t)
	stoppedVM(t, root, "t", [][]byte{[]byte("one\ntwo\n")}, []byte("three\nfour\n"))
	for _, tc := range []struct {
		tail *uint32
		want string
	}{
		{nil, "one\ntwo\nthree\nfour\n"},
		{proto.Uint32(3), "two\nthree\nfour\n"},
		{proto.Uint32(0), ""},
		{proto.Uint32(1 << 31), "one\ntwo\nthree\nfour\n"},
	} {
		// Follow ends at once: the VM does not run.
		chunks, err := logs(t, c, &pb.LogsRequest{Name: "t", TailLines: tc.tail, Follow: true})
		if got := string(bytes.Join(chunks, nil)); got != tc.want || err != nil {
			t.Errorf("tail %v: %q, %v; want %q", tc.tail, got, err, tc.want)
		}
	}
}

func TestLogsErrors(t *testing.T) {
	c, _ := logsClient(t)
	if _, err := logs(t, c, &pb.LogsRequest{Name: "ghost"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown VM: %v", err)
	}
	if _, err := logs(t, c, &pb.LogsRequest{Name: ".."}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad name: %v", err)
	}
}

// A caller other than root reads the logs of its own VMs, and no one
// else's.
func TestLogsOfOwnVMsOnly(t *testing.T) {
	c, root := logsClientAs(t, &caller.Caller{UID: 1000, GIDs: []uint32{1000}})
	ownedVM(t, root, caller.UserOwner(1000), "mine", nil, []byte("mine\n"))
	ownedVM(t, root, "other", "theirs", nil, []byte("theirs\n"))
	for _, owner := range []string{"", caller.UserOwner(1000)} {
		chunks, err := logs(t, c, &pb.LogsRequest{OwnerId: owner, Name: "mine"})
		if got := string(bytes.Join(chunks, nil)); got != "mine\n" || err != nil {
			t.Errorf("own VM, owner %q: %q, %v", owner, got, err)
		}
	}
	if _, err := logs(t, c, &pb.LogsRequest{OwnerId: "other", Name: "theirs"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another owner's VM: %v, want PermissionDenied", err)
	}
}

func TestLogChunkFitsGRPCPoolClass(t *testing.T) {
	m := &pb.LogsChunk{Data: bytes.Repeat([]byte{0xff}, maxLogChunk)}
	if n := proto.Size(m); n > 32<<10 {
		t.Errorf("a full chunk encodes to %d bytes, over 32 KiB", n)
	}
}
