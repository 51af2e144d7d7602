package kata

import (
	"context"
	"encoding/json"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

func TestIDMap(t *testing.T) {
	m, err := parseIDMap("         0     100000      65536\n     65536          0          1\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in, out int
		ok      bool
	}{{0, 100000, true}, {1000, 101000, true}, {65535, 165535, true}, {65536, 0, true}, {65537, 0, false}, {-1, 0, false}} {
		if out, ok := m.outside(tc.in); out != tc.out || ok != tc.ok {
			t.Errorf("outside(%d) = %d, %v", tc.in, out, ok)
		}
	}
	if got := m.inside(101000); got != 1000 {
		t.Errorf("inside(101000) = %d", got)
	}
	if got := m.inside(5); got != 65534 {
		t.Errorf("inside of an unmapped id = %d, want the overflow id", got)
	}
	host, _ := parseIDMap("0 0 4294967295\n")
	if out, ok := host.outside(1234); out != 1234 || !ok {
		t.Errorf("the initial namespace: %d, %v", out, ok)
	}
	for _, bad := range []string{"0 0", "a b c", "0 0 99999999999"} {
		if _, err := parseIDMap(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// FuzzParseIDMap: any bytes parse or are refused; a parsed map maps
// without panicking.
func FuzzParseIDMap(f *testing.F) {
	f.Add("0 100000 65536\n")
	f.Add("0 0 4294967295\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseIDMap(s)
		if err != nil {
			return
		}
		for _, id := range []int{0, 1, 65534, 1 << 31} {
			m.outside(id)
			m.inside(uint32(id))
		}
	})
}

func TestSpecResources(t *testing.T) {
	for _, tc := range []struct {
		r    cgroup.Resources
		want string
	}{
		{cgroup.Resources{}, `{}`},
		{cgroup.Resources{MemoryLimit: -1, MemorySwap: -1}, `{"memory":{"limit":-1,"swap":-1}}`},
		{cgroup.Resources{CPUPeriod: 100000, Mems: "0"}, `{"cpu":{"period":100000,"mems":"0"}}`},
		{cgroup.Resources{BlkioWeight: 300, BlkioThrottleReadBps: []cgroup.ThrottleDevice{{Major: 254, Minor: 0, Rate: 1 << 20}}},
			`{"blockIO":{"weight":300,"throttleReadBpsDevice":[{"major":254,"minor":0,"rate":1048576}]}}`},
		{cgroup.Resources{Hugepages: []cgroup.HugepageLimit{{Pagesize: "2MB", Limit: 4 << 20}}}, `{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}`},
	} {
		b, _ := json.Marshal(specResources(tc.r))
		if string(b) != tc.want {
			t.Errorf("%+v: %s, want %s", tc.r, b, tc.want)
		}
	}
}

// TestArchiveEdgeBadInput: the archive calls refuse what is malformed
// before any container is looked at.
func TestArchiveEdgeBadInput(t *testing.T) {
	sb := New(Config{Log: testLog(), Runtime: "/nonexistent", Bundles: t.TempDir(), RuntimeRoot: t.TempDir(), Reaper: startReaper(t)})
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	containersv1.RegisterContainersServer(srv, NewContainersService(sb))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cs := containersv1.NewContainersClient(conn)
	send := func(msgs ...*containersv1.CopyInArchiveRequest) error {
		stream, err := cs.CopyInArchive(t.Context())
		if err != nil {
			return err
		}
		for _, m := range msgs {
			stream.Send(m)
		}
		_, err = stream.CloseAndRecv()
		return err
	}
	header := func(h *containersv1.CopyInArchiveHeader) *containersv1.CopyInArchiveRequest {
		return &containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Header{Header: h}}
	}
	data := &containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Data{Data: []byte("x")}}
	wantCode(t, "data first", send(data), codes.InvalidArgument, "header: ")
	wantCode(t, "bad id", send(header(&containersv1.CopyInArchiveHeader{ContainerId: "../x", Path: "/tmp"})), codes.InvalidArgument, "container_id: ")
	wantCode(t, "relative path", send(header(&containersv1.CopyInArchiveHeader{ContainerId: "c", Path: "tmp"})), codes.InvalidArgument, "path: ")
	wantCode(t, "source name", send(header(&containersv1.CopyInArchiveHeader{ContainerId: "c", Path: "/tmp", SourceName: "../x"})), codes.InvalidArgument, "source_name: ")
	wantCode(t, "no container", send(header(&containersv1.CopyInArchiveHeader{ContainerId: "c", Path: "/tmp"})), codes.NotFound, "")
	out, err := cs.CopyOutArchive(t.Context(), &containersv1.CopyOutArchiveRequest{ContainerId: "c", Path: "/"})
	if err == nil {
		_, err = out.Recv()
	}
	wantCode(t, "copy out of /", err, codes.InvalidArgument, "path: ")
}
