package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// testID is the i-th VM's directory id.
func testID(i int) string { return fmt.Sprintf("%016x", 0xabc000+i) }

func allocFile(t *testing.T) string { return filepath.Join(t.TempDir(), "network.json") }

func mustOpen(t *testing.T, pool Pool, file string) *allocator {
	t.Helper()
	a, err := openAllocator(pool, file)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The default pool gives ten VMs a subnet each, lowest first; the
// eleventh is told the pool is exhausted, and gets the subnet a VM frees.
func TestAllocatorFullPool(t *testing.T) {
	a := mustOpen(t, DefaultPool, allocFile(t))
	for i := range 10 {
		s, err := a.allocate(testID(i))
		if err != nil {
			t.Fatalf("VM %d: %v", i, err)
		}
		if want := DefaultPool.Subnet(i); s != want {
			t.Errorf("VM %d got %s, want %s", i, s, want)
		}
	}
	_, err := a.allocate(testID(10))
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "all 10 subnets of the pool 100.115.92.24-100.115.92.63 are taken") {
		t.Fatalf("the eleventh VM: %v, want the pool exhausted", err)
	}
	if err := a.free(testID(3), DefaultPool.Subnet(3)); err != nil {
		t.Fatal(err)
	}
	if s, err := a.allocate(testID(10)); err != nil || s != DefaultPool.Subnet(3) {
		t.Errorf("after a VM freed its subnet: %s, %v; want %s", s, err, DefaultPool.Subnet(3))
	}
}

// What is held survives a restart; a VM that allocates again gets the
// subnet it holds (left by a cabind that went away before releasing
// it); freeing another VM's subnet does nothing.
func TestAllocatorPersists(t *testing.T) {
	file := allocFile(t)
	a := mustOpen(t, DefaultPool, file)
	s0, _ := a.allocate(testID(0))
	s1, _ := a.allocate(testID(1))
	if err := a.free(testID(0), s1); err != nil {
		t.Fatal(err)
	}
	b := mustOpen(t, DefaultPool, file)
	if got := b.list(); !slices.Equal(got, []netip.Prefix{s0, s1}) {
		t.Fatalf("reloaded %v, want %v", got, []netip.Prefix{s0, s1})
	}
	if s, err := b.allocate(testID(1)); err != nil || s != s1 {
		t.Errorf("VM 1 again: %s, %v; want its own %s", s, err, s1)
	}
	if s, err := b.allocate(testID(2)); err != nil || s != DefaultPool.Subnet(2) {
		t.Errorf("VM 2: %s, %v", s, err)
	}
	if err := b.free(testID(0), s0); err != nil {
		t.Fatal(err)
	}
	if got := mustOpen(t, DefaultPool, file).list(); !slices.Equal(got, []netip.Prefix{s1, DefaultPool.Subnet(2)}) {
		t.Errorf("after a free, reloaded %v", got)
	}
	// Written whole: nothing but the file is left in its directory.
	entries, _ := os.ReadDir(filepath.Dir(file))
	if len(entries) != 1 {
		t.Errorf("directory holds %v", entries)
	}
}

// Adoption marks what a VM's record says it holds; another VM's subnet
// is refused. A subnet outside the pool (a cabind of another pool
// started the VM) is kept, never handed out, and let go of when its VM
// allocates again.
func TestAllocatorMark(t *testing.T) {
	file := allocFile(t)
	a := mustOpen(t, DefaultPool, file)
	s := DefaultPool.Subnet(4)
	if err := a.mark(testID(0), s); err != nil {
		t.Fatal(err)
	}
	if err := a.mark(testID(0), s); err != nil {
		t.Errorf("marking again: %v", err)
	}
	if err := a.mark(testID(1), s); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("another VM's subnet: %v", err)
	}
	if err := a.mark(testID(1), netip.MustParsePrefix("100.115.92.25/30")); err == nil {
		t.Error("a subnet not given by its first address was marked")
	}
	outside := netip.MustParsePrefix("10.9.0.0/30")
	if err := a.mark(testID(2), outside); err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 12; i++ {
		if _, err := a.allocate(testID(i)); err != nil {
			t.Fatalf("VM %d: %v", i, err)
		}
	}
	if a.holder(outside) != testID(2) {
		t.Error("the subnet outside the pool was let go")
	}
	if got, err := a.allocate(testID(2)); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("VM 2 again, on a full pool: %s, %v", got, err)
	}
	if a.holder(outside) != "" {
		t.Error("VM 2 still holds the subnet outside the pool")
	}
}

func TestAllocatorRefusesABadFile(t *testing.T) {
	for name, content := range map[string]string{
		"not json":        "{",
		"unknown version": `{"version": 2, "subnets": {}}`,
		"not a /30":       `{"version": 1, "subnets": {"100.115.92.24/29": "0000000000abc000"}}`,
		"not its start":   `{"version": 1, "subnets": {"100.115.92.25/30": "0000000000abc000"}}`,
		"not an id":       `{"version": 1, "subnets": {"100.115.92.24/30": "../x"}}`,
	} {
		file := allocFile(t)
		os.WriteFile(file, []byte(content), 0o600)
		if _, err := openAllocator(DefaultPool, file); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A link where the file should be is not followed.
	file := allocFile(t)
	target := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(target, []byte(`{"version": 1, "subnets": {}}`), 0o600)
	os.Symlink(target, file)
	if _, err := openAllocator(DefaultPool, file); err == nil {
		t.Error("a link was followed")
	}
}
