package main

import (
	"strings"
	"testing"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func TestVMListQuietAndFormat(t *testing.T) {
	d := startDaemon(t)
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return &cabinv1.ListVmsResponse{Vms: []*cabinv1.Vm{{Name: "db", Pid: 10, MemoryMib: 512}, {Name: "web", Pid: 11, MemoryMib: 1024}}}, nil
	}
	if r := d.run(t, nil, "vm", "list", "-q"); r.code != 0 || r.stdout != "db\nweb\n" {
		t.Errorf("vm list -q: %+v", r)
	}
	if r := d.run(t, nil, "vm", "ls", "--format", "{{.Name}}={{.Pid}}/{{.MemoryMib}}"); r.code != 0 || r.stdout != "db=10/512\nweb=11/1024\n" {
		t.Errorf("vm ls --format: %+v", r)
	}
	for _, args := range [][]string{
		{"-q", "--json"},
		{"-q", "--format", "{{.Name}}"},
		{"--format", "{{.Name"},
		{"--format", "{{.NoSuchField}}"},
	} {
		r := d.run(t, nil, append([]string{"vm", "list"}, args...)...)
		if r.code != 2 || r.stdout != "" && !strings.Contains(r.stderr, "format") {
			t.Errorf("vm list %q: %+v; want a usage error", args, r)
		}
	}
}
