package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

// A VM that starts drops the spools an earlier run of it left; one that
// is adopted keeps them for the clients reading on; one that is gone
// takes them with it. Another VM's stay.
func TestReadAheadFollowsTheVM(t *testing.T) {
	root := statedirtest.New(t)
	kind := readAheadKind{ahead: newReadAhead(root)}
	vm := func(name string) resource.VM {
		return resource.VM{Owner: "user-1000", Name: name, Dir: root.VM(statedir.VMID("user-1000", name))}
	}
	spool := func(v resource.VM) string {
		t.Helper()
		p := filepath.Join(v.Dir.ReadAheadDir(), "x.out")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("left"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	there := func(p string) bool {
		_, err := os.Lstat(p)
		return err == nil
	}
	ctx := context.Background()
	a, b := vm("a"), vm("b")
	other := spool(b)

	stale := spool(a)
	h, err := kind.Prepare(ctx, a, &hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if there(stale) {
		t.Error("a VM that starts kept the spools of its last run")
	}
	kept := spool(a)
	if _, err := kind.Adopt(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	if !there(kept) {
		t.Error("an adopted VM lost its spools")
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if there(a.Dir.ReadAheadDir()) {
		t.Error("a VM that is gone left its spools")
	}
	if !there(other) {
		t.Error("another VM's spools went")
	}
}
