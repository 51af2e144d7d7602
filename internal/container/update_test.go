package container

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/guest/cgroup/cgrouptest"
)

// cgroupValue reads a container's cgroup file, in whichever hierarchy has
// it (v1's controller directories or v2's one).
func cgroupValue(t *testing.T, id string, files ...string) string {
	t.Helper()
	for _, d := range cgrouptest.Dirs(cgroupTop + "/" + id) {
		for _, f := range files {
			if b, err := os.ReadFile(filepath.Join(d, f)); err == nil {
				return strings.TrimSpace(string(b))
			}
		}
	}
	t.Fatalf("no %v in the cgroups of %s", files, id)
	return ""
}

// TestUpdateState: update changes the limits live and in the container's
// state, so that what libcontainer applies later (pause, resume, another
// update, which rewrites every limit from the state) keeps them, as
// runc update does; what an update leaves unset stays.
func TestUpdateState(t *testing.T) {
	h := newHarness(t)
	if !freezerAvailable() {
		t.Skip("no cgroup freezer on this host")
	}
	const id = "upd"
	spec := testSpec(id, "tick")
	mem, pids := int64(128<<20), int64(100)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &mem}, Pids: &specs.LinuxPids{Limit: &pids}}
	p := newPipes(t)
	h.create(id, spec, p.child)
	p.handedOver()
	h.must(nil, "start", id)
	p.stdout.expect(t, "t")
	memFiles := []string{"memory.max", "memory.limit_in_bytes"}
	if got := cgroupValue(t, id, memFiles...); got != strconv.Itoa(128<<20) {
		t.Fatalf("memory limit at create: %s", got)
	}
	update := func(doc string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "r.json")
		os.WriteFile(f, []byte(doc), 0o644)
		h.must(nil, "update", "--resources", f, id)
	}
	update(`{"memory":{"limit":67108864}}`)
	if got := cgroupValue(t, id, memFiles...); got != "67108864" {
		t.Errorf("memory limit after update: %s", got)
	}
	h.must(nil, "pause", id)
	update(`{"pids":{"limit":42}}`)
	h.must(nil, "resume", id)
	update(`{"cpu":{"shares":512}}`)
	if got, pids := cgroupValue(t, id, memFiles...), cgroupValue(t, id, "pids.max"); got != "67108864" || pids != "42" {
		t.Errorf("after pause, resume and two more updates: memory %s, pids %s; want 67108864 and 42", got, pids)
	}
	state, err := os.ReadFile(filepath.Join(h.root, id, "state.json"))
	if err != nil || !bytes.Contains(state, []byte(`"memory":67108864`)) || !bytes.Contains(state, []byte(`"pids_limit":42`)) {
		t.Errorf("state.json does not record the updates (%v)", err)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"memory":`), 0o644)
	devs := filepath.Join(t.TempDir(), "devs.json")
	os.WriteFile(devs, []byte(`{"devices":[{"allow":true,"access":"rwm"}]}`), 0o644)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"update", "--resources", bad, id}, ExitUsage},
		{[]string{"update", "--resources", devs, id}, ExitUsage},
		{[]string{"update", "--resources", "rel.json", id}, ExitUsage},
		{[]string{"update", id}, ExitUsage},
		{[]string{"update", "--resources", devs, "nobody"}, ExitUsage},
	} {
		if r := h.run(nil, tc.args...); r.code != tc.code {
			t.Errorf("%v: %v, want exit %d", tc.args, r, tc.code)
		}
	}
	good := filepath.Join(t.TempDir(), "good.json")
	os.WriteFile(good, []byte(`{"pids":{"limit":7}}`), 0o644)
	if r := h.run(nil, "update", "--resources", good, "nobody"); r.code != ExitNotFound {
		t.Errorf("update of no container: %v", r)
	}
	if got := cgroupValue(t, id, "pids.max"); got != "42" {
		t.Errorf("refused updates changed pids.max to %s", got)
	}
	h.must(nil, "delete", "--force", id)
}
