package hostcgroup

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// Through the VM manager: each VM's "QEMU" goes into the cgroup of its
// type's class when it starts; the cgroup goes when the VM stops, and
// comes back for a new VM of the same name; a restriction made before a
// VM starts holds for it.
func TestThroughManager(t *testing.T) {
	ctx := context.Background()
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			fs, h := newFake(t, v.v2)
			// The manager's fake VMs exit without the fake cgroups
			// seeing it.
			fs.exitUnseen = true
			r := openFake(t, fs, h, filepath.Join(t.TempDir(), "cpu.json"))
			if err := r.Restrict(ctx, ARCVM, BackgroundWithQuota); err != nil {
				t.Fatal(err)
			}
			e := vmmtest.New(t, r)
			for _, c := range []struct {
				name  string
				typ   vmm.VMType
				class Class
			}{{"crostini", vmm.VMTypeTermina, Termina}, {"android", vmm.VMTypeARC, ARCVM}, {"plain", vmm.VMTypeUnknown, Termina}} {
				key := vmm.Key{Name: c.name}
				e.Start(t, vmm.Spec{Key: key, Type: c.typ})
				info, err := e.M.Get(key)
				if err != nil {
					t.Fatal(err)
				}
				leaf := filepath.Join(DefaultGroup, string(c.class), statedir.VMID("", c.name))
				if got := fs.cgroupOf(info.PID); got != "/"+leaf {
					t.Errorf("%s's QEMU (pid %d) is in %s, want /%s", c.name, info.PID, got, leaf)
				}
			}
			if got := limits(t, fs, ARCVM); got != want(v.v2, 64, DefaultQuota) {
				t.Errorf("arcvm: %s", got)
			}

			// Stopped: its cgroup goes, the other VMs' stay.
			info, _ := e.M.Get(vmm.Key{Name: "android"})
			stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := e.M.Stop(stopCtx, vmm.Key{Name: "android"}); err != nil {
				t.Fatal(err)
			}
			leaf := filepath.Join(DefaultGroup, "arcvm", statedir.VMID("", "android"))
			waitGone(t, fs, leaf)
			if !fs.exists(filepath.Join(DefaultGroup, "termina", statedir.VMID("", "crostini"))) {
				t.Error("another VM's cgroup went too")
			}
			// A new VM of the same name gets it again.
			e.Start(t, vmm.Spec{Key: vmm.Key{Name: "android"}, Type: vmm.VMTypeARC})
			info2, _ := e.M.Get(vmm.Key{Name: "android"})
			if info2.PID == info.PID {
				t.Fatalf("the fake launcher reused pid %d", info.PID)
			}
			if got := fs.cgroupOf(info2.PID); got != "/"+leaf {
				t.Errorf("the new android's QEMU is in %s", got)
			}
			if err := e.M.StopAll(stopCtx, nil); err != nil {
				t.Fatal(err)
			}
			for _, leaf := range []string{leaf, filepath.Join(DefaultGroup, "termina", statedir.VMID("", "crostini"))} {
				waitGone(t, fs, leaf)
			}
		})
	}
}

// waitGone waits for the cgroup rel to be removed: the manager releases
// a VM's resources just after it reports it stopped.
func waitGone(t *testing.T, fs *fakeFS, rel string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for fs.exists(rel) {
		if time.Now().After(deadline) {
			t.Fatalf("cgroup %s still there", rel)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
