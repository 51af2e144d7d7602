package main

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/concierge"
)

// 100.115.92.26 as the wire carries it: network byte order in a fixed32.
const webIPv4 = uint32(100) | 115<<8 | 92<<16 | 26<<24

func listedVMs() []*concierge.ExtendedVmInfo {
	return []*concierge.ExtendedVmInfo{
		{Name: "web", Status: concierge.VmStatus_VM_STATUS_RUNNING, VmInfo: &concierge.VmInfo{
			Pid: 4242, Cid: 33, AllocatedMemory: 512 << 20, Ipv4Address: webIPv4, Status: concierge.VmStatus_VM_STATUS_RUNNING}},
		{Name: "database", Status: concierge.VmStatus_VM_STATUS_STARTING, VmInfo: &concierge.VmInfo{Pid: 17, Cid: 34}},
	}
}

func TestVMListTable(t *testing.T) {
	d := startDaemon(t)
	var gotOwner string
	d.concierge.listVMs = func(req *concierge.ListVmsRequest) (*concierge.ListVmsResponse, error) {
		gotOwner = req.GetOwnerId()
		return &concierge.ListVmsResponse{Success: true, Vms: listedVMs()}, nil
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "list")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if gotOwner != "alice" {
		t.Errorf("ListVms owner_id = %q, want alice", gotOwner)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want a header and 2 rows:\n%s", len(lines), r.stdout)
	}
	// Each value must start where its header does.
	want := map[string][]string{
		"NAME":   {"web", "database"},
		"STATUS": {"running", "starting"},
		"PID":    {"4242", "17"},
		"CID":    {"33", "34"},
		"MEMORY": {"512 MiB", "-"},
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
	if strings.Contains(lines[0], "OWNER") {
		t.Errorf("OWNER column shown though no VM has an owner: %q", lines[0])
	}
}

func TestVMListJSON(t *testing.T) {
	d := startDaemon(t)
	vms := listedVMs()
	d.concierge.listVMs = func(*concierge.ListVmsRequest) (*concierge.ListVmsResponse, error) {
		return &concierge.ListVmsResponse{Success: true, Vms: vms}, nil
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
		var got concierge.ExtendedVmInfo
		if err := protojson.Unmarshal(raw, &got); err != nil {
			t.Fatalf("element %d: %v", i, err)
		}
		if !proto.Equal(&got, vms[i]) {
			t.Errorf("element %d = %v, want %v", i, &got, vms[i])
		}
	}
	// The documented shape: proto field names, all fields, int64 as strings.
	var first map[string]any
	if err := json.Unmarshal(arr[1], &first); err != nil {
		t.Fatal(err)
	}
	info, _ := first["vm_info"].(map[string]any)
	if first["name"] != "database" || first["owner_id"] != "" || info["cid"] != "34" || info["allocated_memory"] != "0" {
		t.Errorf("element 1 = %s", arr[1])
	}
}

func TestVMListJSONEmpty(t *testing.T) {
	d := startDaemon(t)
	d.concierge.listVMs = func(*concierge.ListVmsRequest) (*concierge.ListVmsResponse, error) {
		return &concierge.ListVmsResponse{Success: true}, nil
	}
	if r := d.run(t, nil, "vm", "list", "--json"); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("got %+v, want []", r)
	}
}

func TestVMListFailure(t *testing.T) {
	d := startDaemon(t)
	d.concierge.listVMs = func(*concierge.ListVmsRequest) (*concierge.ListVmsResponse, error) {
		return &concierge.ListVmsResponse{Success: false, FailureReason: "state root unreadable"}, nil
	}
	if r := d.run(t, nil, "vm", "list"); r.code != 1 || r.stderr != "cabin: list VMs: state root unreadable\n" {
		t.Errorf("got %+v", r)
	}
}

func TestWriteVMTableOwnerColumn(t *testing.T) {
	var b strings.Builder
	vms := []*concierge.ExtendedVmInfo{{Name: "a", OwnerId: "alice"}, {Name: "b"}}
	if err := writeVMTable(&b, vms); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME  STATUS   PID  CID  MEMORY  IPV4  OWNER\n" +
		"a     unknown  -    -    -       -     alice\n" +
		"b     unknown  -    -    -       -     -\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestVMInfo(t *testing.T) {
	d := startDaemon(t)
	info := listedVMs()[0].GetVmInfo()
	d.concierge.getVMInfo = func(req *concierge.GetVmInfoRequest) (*concierge.GetVmInfoResponse, error) {
		if req.GetName() != "web" {
			return &concierge.GetVmInfoResponse{Success: false}, nil
		}
		return &concierge.GetVmInfoResponse{Success: true, VmInfo: info}, nil
	}

	r := d.run(t, nil, "vm", "info", "web")
	want := "" +
		"NAME    web\n" +
		"OWNER   -\n" +
		"STATUS  running\n" +
		"PID     4242\n" +
		"CID     33\n" +
		"MEMORY  512 MiB\n" +
		"IPV4    100.115.92.26\n" +
		"TYPE    unknown\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got %+v, want stdout:\n%s", r, want)
	}

	r = d.run(t, nil, "vm", "info", "web", "--json")
	var got concierge.ExtendedVmInfo
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	wantVM := &concierge.ExtendedVmInfo{Name: "web", VmInfo: info, Status: info.GetStatus()}
	if !proto.Equal(&got, wantVM) {
		t.Errorf("--json = %v, want %v", &got, wantVM)
	}

	r = d.run(t, nil, "vm", "info", "ghost")
	if r.code != 1 || r.stderr != "cabin: no VM named ghost\n" {
		t.Errorf("unknown VM: got %+v", r)
	}
}
