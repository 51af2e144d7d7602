package ociimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// TestShareDefersTreeRemoval: an image removed while a VM has the share
// is unlisted at once (no new container can be made of it) but its tree
// stays for the containers already reading it, until the last VM lets
// the share go; the next Open collects what a restart left.
func TestShareDefersTreeRemoval(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	d, err := s.importImage(imageOf(t, layerOf(t, file("motd", "hello"))), "example.com/a:v1")
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(s.ShareDir(), RootfsName(d))
	if readFile(t, filepath.Join(tree, "motd")) != "hello" {
		t.Fatalf("the image's tree is not at %s", tree)
	}
	vm1, vm2 := s.Share(), s.Share()
	if _, err := s.Remove(ctx, "example.com/a:v1"); err != nil {
		t.Fatalf("Remove while VMs have the share: %v", err)
	}
	if _, _, _, err := s.Hold(ctx, string(d)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Hold of the removed image = %v; want not found", err)
	}
	if readFile(t, filepath.Join(tree, "motd")) != "hello" {
		t.Error("the tree went while VMs have the share")
	}
	// Imported again meanwhile, it keeps the tree containers read.
	before, _ := os.Stat(tree)
	if d2, err := s.importImage(imageOf(t, layerOf(t, file("motd", "hello"))), "example.com/a:v1"); err != nil || d2 != d {
		t.Fatalf("import again: %s, %v", d2, err)
	}
	if after, err := os.Stat(tree); err != nil || !os.SameFile(before, after) {
		t.Errorf("the import again replaced the kept tree: %v", err)
	}
	if _, err := s.Remove(ctx, "example.com/a:v1"); err != nil {
		t.Fatal(err)
	}
	vm1()
	vm1() // twice is once
	if _, err := os.Stat(tree); err != nil {
		t.Errorf("the tree went while a VM has the share: %v", err)
	}
	vm2()
	if _, err := os.Stat(tree); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tree stays once no VM has the share: %v", err)
	}
	s.assertEmpty()

	// A tree kept for a VM when cabind stopped is collected by the next
	// Open, which no VM has counted in yet.
	d, err = s.importImage(imageOf(t, layerOf(t, file("b", "b"))), "example.com/b:v1")
	if err != nil {
		t.Fatal(err)
	}
	s.Share()
	if _, err := s.Remove(ctx, string(d)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.ShareDir(), RootfsName(d))); err != nil {
		t.Fatalf("the tree went while a VM has the share: %v", err)
	}
	if _, err := Open(ctx, s.dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.ShareDir(), RootfsName(d))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open kept the tree of a removed image: %v", err)
	}
}
