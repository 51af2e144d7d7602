package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func listedVMs() []*cabinv1.Vm {
	return []*cabinv1.Vm{
		{Name: "web", State: cabinv1.VmState_VM_STATE_RUNNING, Pid: 4242, Cid: 33, Cpus: 2, MemoryMib: 512, Ipv4Address: "100.115.92.26",
			Accelerator: cabinv1.Accelerator_ACCELERATOR_TCG, StartedAt: timestamppb.New(time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC))},
		{Name: "database", State: cabinv1.VmState_VM_STATE_UNREACHABLE, Pid: 17, Cid: 34, Cpus: 1,
			Problem: "its hypervisor does not answer"},
	}
}

func TestVMListTable(t *testing.T) {
	d := startDaemon(t)
	var gotOwner string
	d.vms.listVMs = func(req *cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		gotOwner = req.GetOwnerId()
		return &cabinv1.ListVmsResponse{Vms: listedVMs()}, nil
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "list")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if gotOwner != "alice" {
		t.Errorf("ListVms owner_id = %q, want alice", gotOwner)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want a header, 2 rows and the unreachable VM's problem:\n%s", len(lines), r.stdout)
	}
	// Each value must start where its header does.
	want := map[string][]string{
		"NAME":   {"web", "database"},
		"STATE":  {"running", "unreachable"},
		"PID":    {"4242", "17"},
		"CID":    {"33", "34"},
		"CPUS":   {"2", "1"},
		"MEMORY": {"512 MiB", "-"},
		"ACCEL":  {"tcg", "auto"},
		"IPV4":   {"100.115.92.26", "-"},
	}
	for col, vals := range want {
		at := strings.Index(lines[0], col)
		if at < 0 {
			t.Fatalf("header %q lacks %s", lines[0], col)
		}
		for i, v := range vals {
			if row := lines[i+1]; len(row) < at || !strings.HasPrefix(row[at:], v) {
				t.Errorf("row %q: column %s does not start with %q", row, col, v)
			}
		}
	}
	if lines[3] != "database is unreachable: its hypervisor does not answer" {
		t.Errorf("problem line %q", lines[3])
	}
	if strings.Contains(lines[0], "OWNER") {
		t.Errorf("OWNER column shown though no VM has an owner: %q", lines[0])
	}
}

func TestVMListJSON(t *testing.T) {
	d := startDaemon(t)
	vms := listedVMs()
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return &cabinv1.ListVmsResponse{Vms: vms}, nil
	}
	r := d.run(t, nil, "vm", "list", "--json")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &arr); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, r.stdout)
	}
	if len(arr) != len(vms) {
		t.Fatalf("got %d elements, want %d", len(arr), len(vms))
	}
	for i, raw := range arr {
		var got cabinv1.Vm
		if err := protojson.Unmarshal(raw, &got); err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		if !proto.Equal(&got, vms[i]) {
			t.Errorf("element %d = %v, want %v", i, &got, vms[i])
		}
	}
	// The documented shape: proto field names, all fields, numbers as
	// numbers (32-bit ones), enums by name.
	var second map[string]any
	if err := json.Unmarshal(arr[1], &second); err != nil {
		t.Fatal(err)
	}
	if second["name"] != "database" || second["owner_id"] != "" || second["cid"] != float64(34) ||
		second["state"] != "VM_STATE_UNREACHABLE" || second["problem"] != "its hypervisor does not answer" {
		t.Errorf("element 1 = %s", arr[1])
	}
}

func TestVMListJSONEmpty(t *testing.T) {
	d := startDaemon(t)
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return &cabinv1.ListVmsResponse{}, nil
	}
	if r := d.run(t, nil, "vm", "list", "--json"); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("got %+v, want []", r)
	}
}

func TestVMListFailure(t *testing.T) {
	d := startDaemon(t)
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return nil, status.Error(codes.PermissionDenied, `owner_id "x": permission denied`)
	}
	if r := d.run(t, nil, "vm", "list"); r.code != 1 || !strings.Contains(r.stderr, "list VMs: ") || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("got %+v", r)
	}
}

func TestWriteVMTableOwnerColumn(t *testing.T) {
	var b strings.Builder
	vms := []*cabinv1.Vm{{Name: "a", OwnerId: "alice"}, {Name: "b"}}
	if err := writeVMTable(&b, vms); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME  STATE        PID  CID  CPUS  MEMORY  ACCEL  IPV4  OWNER\n" +
		"a     unspecified  -    -    -     -       auto   -     alice\n" +
		"b     unspecified  -    -    -     -       auto   -     -\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestVMInfo(t *testing.T) {
	d := startDaemon(t)
	vm := listedVMs()[1]
	d.vms.getVM = func(req *cabinv1.GetVmRequest) (*cabinv1.Vm, error) {
		if req.GetName() != "database" {
			return nil, status.Error(codes.NotFound, "vm "+req.GetName()+": not found")
		}
		return vm, nil
	}

	r := d.run(t, nil, "vm", "info", "database")
	want := "" +
		"NAME     database\n" +
		"OWNER    -\n" +
		"STATE    unreachable\n" +
		"PROBLEM  its hypervisor does not answer\n" +
		"PID      17\n" +
		"CID      34\n" +
		"CPUS     1\n" +
		"MEMORY   -\n" +
		"ACCEL    auto\n" +
		"IPV4     -\n" +
		"STARTED  -\n" +
		"TYPE     unknown\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got %+v, want stdout:\n%s", r, want)
	}

	r = d.run(t, nil, "vm", "info", "database", "--json")
	var got cabinv1.Vm
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	if !proto.Equal(&got, vm) {
		t.Errorf("--json = %v, want %v", &got, vm)
	}

	r = d.run(t, nil, "vm", "info", "ghost")
	if r.code != 1 || r.stderr != "cabin: no VM named ghost\n" {
		t.Errorf("unknown VM: got %+v", r)
	}
}
