package concierge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	pb "github.com/cabinvm/cabin/api/concierge"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// newManager returns a manager whose VMs cannot start: QEMU fails.
func newManager(t *testing.T) (*vmm.Manager, statedir.Root) {
	t.Helper()
	e := vmmtest.New(t)
	e.LaunchErr = errors.New("qemu-system-x86_64: could not load kernel")
	return e.M, e.Root
}

func TestStartVmReportsFailures(t *testing.T) {
	m, _ := newManager(t)
	c := New(m, Options{})
	ctx := context.Background()

	// A VM that cannot start is a response with success=false.
	resp, err := c.StartVm(ctx, &pb.StartVmRequest{Name: "vm", Cpus: 1})
	if err != nil {
		t.Fatalf("launch failure as an RPC error: %v", err)
	}
	if resp.Success || !strings.Contains(resp.FailureReason, "could not load kernel") || resp.Status != pb.VmStatus_VM_STATUS_FAILURE {
		t.Errorf("response %v", resp)
	}

	// Bad input is INVALID_ARGUMENT naming the field.
	_, err = c.StartVm(ctx, &pb.StartVmRequest{Name: "..", Cpus: 1})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "name:") {
		t.Errorf("bad name: %v", err)
	}
	// What cabin cannot honour is refused, not ignored.
	_, err = c.StartVm(ctx, &pb.StartVmRequest{Name: "vm", Cpus: 1, Fds: []pb.StartVmRequest_FdType{pb.StartVmRequest_KERNEL}})
	if s := status.Convert(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "fds") {
		t.Errorf("fds: %v", err)
	}
	// A disk that is not there is bad input.
	_, err = c.StartVm(ctx, &pb.StartVmRequest{Name: "vm", Cpus: 1, Disks: []*pb.DiskImage{{Path: "/x"}}})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "disks[0].path:") {
		t.Errorf("disks: %v", err)
	}
	// The extension's own fields are checked too.
	_, err = Start(ctx, m, &pb.StartVmRequest{Name: "vm", Cpus: 1}, Extensions{MemoryMiB: 32})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "memory_mib:") {
		t.Errorf("memory: %v", err)
	}
	_, err = Start(ctx, m, &pb.StartVmRequest{Name: "vm", Cpus: 1}, Extensions{Kernel: "/no/such/vmlinux"})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "kernel_path:") {
		t.Errorf("kernel: %v", err)
	}
}

func TestUnknownVMAnswers(t *testing.T) {
	m, _ := newManager(t)
	c := New(m, Options{})
	ctx := context.Background()
	info, err := c.GetVmInfo(ctx, &pb.GetVmInfoRequest{Name: "ghost"})
	if err != nil || info.Success {
		t.Errorf("GetVmInfo of an unknown VM: %v, %v", info, err)
	}
	stop, err := c.StopVm(ctx, &pb.StopVmRequest{Name: "ghost"})
	if err != nil || !stop.Success {
		t.Errorf("StopVm of an unknown VM: %v, %v", stop, err)
	}
	if _, err := c.StopVm(ctx, &pb.StopVmRequest{Name: ""}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("StopVm without a name: %v", err)
	}
	list, err := c.ListVms(ctx, &pb.ListVmsRequest{})
	if err != nil || !list.Success || len(list.Vms) != 0 {
		t.Errorf("ListVms: %v, %v", list, err)
	}
	if _, err := c.GetVmLogs(ctx, &pb.GetVmLogsRequest{Name: "ghost"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetVmLogs of an unknown VM: %v", err)
	}
}

func TestGetVmLogsIsValidUTF8(t *testing.T) {
	m, root := newManager(t)
	c := New(m, Options{})
	dir := root.VM(statedir.VMID("", "noisy"))
	os.MkdirAll(dir.Path(), 0o700)
	os.WriteFile(dir.Record(), []byte("{}"), 0o600)
	os.WriteFile(dir.ConsoleLog(), []byte("boot \xff\xfe ok\n"), 0o600)
	resp, err := c.GetVmLogs(context.Background(), &pb.GetVmLogsRequest{Name: "noisy"})
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.ValidString(resp.Log) || !strings.Contains(resp.Log, "ok") {
		t.Errorf("log %q", resp.Log)
	}
	if _, err := proto.Marshal(resp); err != nil {
		t.Errorf("response does not marshal: %v", err)
	}
}

// getVmLogs serves c over gRPC and calls GetVmLogs with a client of
// gRPC's default limits, as upstream clients are.
func getVmLogs(t *testing.T, c *Server, req *pb.GetVmLogsRequest) (*pb.GetVmLogsResponse, error) {
	t.Helper()
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, c) })
	return pb.NewVmConciergeClient(cc).GetVmLogs(t.Context(), req)
}

// A log over gRPC's 4 MiB message limit is answered with its newest part,
// from the start of a line, after a line saying it was cut and where all
// of it is; one that only grows past the limit as UTF-8 is cut too.
func TestGetVmLogsFitsTheMessageLimit(t *testing.T) {
	m, root := newManager(t)
	c := New(m, Options{})
	var lines bytes.Buffer
	for i := 0; lines.Len() < 11<<20; i++ {
		fmt.Fprintf(&lines, "line %07d \xff of a chatty guest\n", i)
	}
	big := lines.Bytes()
	// Six 2 MiB files: a rotated log.
	noisy := root.VM(statedir.VMID("o", "noisy"))
	os.MkdirAll(noisy.Path(), 0o700)
	os.WriteFile(noisy.Record(), []byte("{}"), 0o600)
	for n := 5; n >= 1; n-- {
		os.WriteFile(noisy.RotatedLog(n), big[:2<<20], 0o600)
		big = big[2<<20:]
	}
	os.WriteFile(noisy.ConsoleLog(), big, 0o600)
	all := strings.ToValidUTF8(lines.String(), "\uFFFD")

	resp, err := getVmLogs(t, c, &pb.GetVmLogsRequest{OwnerId: "o", Name: "noisy"})
	if err != nil {
		t.Fatalf("GetVmLogs of an 11 MiB log: %v", err)
	}
	note, rest, _ := strings.Cut(resp.Log, "\n")
	for _, want := range []string{"cut", fmt.Sprint(lines.Len()), "cabin --owner o vm logs noisy", "cabin.v1.Vms/Logs"} {
		if !strings.Contains(note, want) {
			t.Errorf("first line %q does not say %q", note, want)
		}
	}
	if !strings.HasSuffix(all, rest) || !strings.HasPrefix(rest, "line ") || len(rest) < 3<<20 {
		t.Errorf("after the note, %d bytes starting %q: not the newest lines of the log", len(rest), rest[:min(len(rest), 40)])
	}

	// Bytes that are not UTF-8 become three: 3 MiB of them and as much
	// ASCII grow to 12 MiB.
	odd := root.VM(statedir.VMID("", "odd"))
	os.MkdirAll(odd.Path(), 0o700)
	os.WriteFile(odd.Record(), []byte("{}"), 0o600)
	os.WriteFile(odd.ConsoleLog(), bytes.Repeat([]byte("\xffa"), 3<<20), 0o600)
	resp, err = getVmLogs(t, c, &pb.GetVmLogsRequest{Name: "odd"})
	if err != nil {
		t.Fatalf("GetVmLogs of a log that grows as UTF-8: %v", err)
	}
	if note, rest, _ := strings.Cut(resp.Log, "\n"); !strings.Contains(note, "cut") || !strings.HasPrefix(rest, "\uFFFDa") || !utf8.ValidString(rest) {
		t.Errorf("log that grows as UTF-8: note %q, then %q...", note, rest[:min(len(rest), 20)])
	}
}

// A VM's address travels in network byte order (spec/semantics.md): the
// fixed32's little-endian bytes are the address's.
func TestVMInfoAddress(t *testing.T) {
	info := VMInfo(vmm.Info{IPv4: netip.MustParseAddr("100.115.92.26")})
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], info.GetIpv4Address())
	if got := netip.AddrFrom4(b); got.String() != "100.115.92.26" {
		t.Errorf("ipv4_address %#x reads %s", info.GetIpv4Address(), got)
	}
	if VMInfo(vmm.Info{}).GetIpv4Address() != 0 {
		t.Error("a VM without an address has one")
	}
}

func TestGetDnsSettings(t *testing.T) {
	m, _ := newManager(t)
	m.SetDNS(vmm.DNS{Nameservers: []string{"192.0.2.53"}, SearchDomains: []string{"example.test"}})
	d, err := New(m, Options{}).GetDnsSettings(context.Background(), nil)
	if err != nil || len(d.GetNameservers()) != 1 || d.GetNameservers()[0] != "192.0.2.53" || d.GetSearchDomains()[0] != "example.test" {
		t.Errorf("GetDnsSettings = %v, %v", d, err)
	}
}
