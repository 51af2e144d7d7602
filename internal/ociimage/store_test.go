package ociimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestRemoveHoldAndGarbageCollection(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	shared := layerOf(t, file("shared", "both images have me"))
	a := imageOf(t, shared, layerOf(t, file("a", "a")))
	b := imageOf(t, shared, layerOf(t, file("b", "b")))
	da, err := s.importImage(a, "example.com/a:v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportDir(ctx, writeLayout(t, a, "example.com/a:v2"), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	db, err := s.importImage(b, "example.com/b:v1")
	if err != nil {
		t.Fatal(err)
	}

	// A held image cannot go, by digest or by its last tag; an extra tag can.
	hd, rootfs, release, err := s.Hold(ctx, "example.com/a:v1")
	if err != nil || hd != da || readFile(t, filepath.Join(rootfs, "a")) != "a" {
		t.Fatalf("Hold = %s %s %v", hd, rootfs, err)
	}
	if _, err := s.Remove(ctx, string(da)); !errors.Is(err, ErrInUse) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Remove of a held image = %v", err)
	}
	if removed, err := s.Remove(ctx, "example.com/a:v2"); err != nil || !slices.Equal(removed, []string{"example.com/a:v2"}) {
		t.Errorf("Remove of a second tag = %v, %v", removed, err)
	}
	if _, err := s.Remove(ctx, "example.com/a:v1"); !errors.Is(err, ErrInUse) {
		t.Errorf("Remove of the last tag of a held image = %v", err)
	}
	release()
	release() // twice is once
	removed, err := s.Remove(ctx, "example.com/a:v1")
	if err != nil || !slices.Equal(removed, []string{"example.com/a:v1", string(da)}) {
		t.Fatalf("Remove = %v, %v", removed, err)
	}
	if _, err := s.Remove(ctx, "example.com/a:v1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Remove = %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "rootfs", da.Hex())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root filesystem of a removed image: %v", err)
	}
	// b still has every blob it needs, the shared layer included.
	det, err := s.Inspect(ctx, "example.com/b:v1")
	if err != nil || det.Digest != db {
		t.Fatalf("Inspect b = %v", err)
	}
	sharedDigest, _ := shared.Digest()
	if _, err := os.Stat(filepath.Join(s.dir, "blobs", "sha256", sharedDigest.Hex)); err != nil {
		t.Errorf("shared layer: %v", err)
	}
	if _, err := s.Remove(ctx, string(db)); err != nil {
		t.Fatal(err)
	}
	s.assertEmpty()
}

// A crash mid-import leaves temporaries, blobs and a root filesystem no
// index lists; Open clears them, and an index that lists the image
// survives.
func TestOpenClearsWhatACrashLeft(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	img := layeredImage(t)
	d, err := s.importImage(img, "example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"tmp/rootfs-123/etc/x", "tmp/blob-9", "rootfs/" + strings.Repeat("a", 64) + "/bin/sh", "blocks-stray"} {
		p = filepath.Join(s.dir, p)
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, []byte("x"), 0o600)
	}
	orphan := filepath.Join(s.dir, "blobs", "sha256", strings.Repeat("b", 64))
	os.WriteFile(orphan, []byte("orphan"), 0o600)
	os.WriteFile(filepath.Join(s.dir, "block", strings.Repeat("c", 64)+".ext4"), []byte("x"), 0o600)

	s2, err := Open(ctx, s.dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := &testStore{Store: s2, t: t, dir: s.dir}
	if ls := ts.List(ctx); len(ls) != 1 || ls[0].Digest != d {
		t.Fatalf("after reopening: %+v", ls)
	}
	checkLayered(t, filepath.Join(s.dir, "rootfs", d.Hex()))
	for _, p := range []string{"tmp/rootfs-123", "tmp/blob-9", "rootfs/" + strings.Repeat("a", 64), "block/" + strings.Repeat("c", 64) + ".ext4"} {
		if _, err := os.Stat(filepath.Join(s.dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived Open: %v", p, err)
		}
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan blob survived Open: %v", err)
	}
	if _, err := ts.Remove(ctx, string(d)); err != nil {
		t.Fatal(err)
	}
	ts.assertEmpty()
}

func TestOpenRefusesACorruptIndex(t *testing.T) {
	s := newStore(t, Options{})
	os.WriteFile(filepath.Join(s.dir, "index.json"), []byte(`{"version":1,"tags":{"x:y":"sha256:00"}}`), 0o600)
	if _, err := Open(context.Background(), s.dir, Options{}); err == nil {
		t.Error("Open accepted a corrupt index")
	}
}

// An import cancelled half way lists nothing and leaves nothing.
func TestCancelledImportLeavesNothing(t *testing.T) {
	s := newStore(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	img := imageOf(t, layerOf(t, file("big", strings.Repeat("q", 1<<20))), layerOf(t, file("b", "b")))
	_, err := s.ImportDir(ctx, writeLayout(t, img, "example.com/c:v1"), ImportOptions{Progress: func(p Progress) {
		if p.Done > 0 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("import = %v, want cancelled", err)
	}
	s.assertEmpty()
}

// Imports of images sharing a layer, at once, all land; none loses a
// blob to the garbage collection of another's failure.
func TestConcurrentImports(t *testing.T) {
	s := newStore(t, Options{Limits: Limits{MaxEntries: 10}})
	shared := layerOf(t, file("shared", strings.Repeat("s", 100000)))
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			top := layerOf(t, file("n", string(rune('a'+i))))
			if i%2 == 1 {
				top = layerOf(t, file("1", ""), file("2", ""), file("3", ""), file("4", ""), file("5", ""), file("6", ""), file("7", ""), file("8", ""), file("9", ""), file("10", ""))
			}
			_, errs[i] = s.importImage(imageOf(t, shared, top), "example.com/c:v"+string(rune('0'+i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%2 == 1) != errors.Is(err, errdefs.ErrResourceExhausted) {
			t.Errorf("import %d: %v", i, err)
		}
	}
	ls := s.List(context.Background())
	if len(ls) != 4 {
		t.Fatalf("List = %+v", ls)
	}
	for _, img := range ls {
		if det, err := s.Inspect(context.Background(), string(img.Digest)); err != nil || len(det.Layers) != 2 {
			t.Errorf("Inspect %s: %v", img.Digest, err)
		}
	}
}

func TestBlockImage(t *testing.T) {
	skipUnlessRoot(t, "the ext4 image keeps the layers' owners")
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs)", tool)
		}
	}
	ctx := context.Background()
	s := newStore(t, Options{})
	d, err := s.importImage(layeredImage(t), "example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.BlockImage(ctx, "example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(s.dir, "block", d.Hex()+".ext4") {
		t.Errorf("path %s", p)
	}
	if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /usr/bin/added", p).Output()
	if err != nil || string(out) != "through the bin link" {
		t.Errorf("debugfs cat = %q, %v", out, err)
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /etc/gone", p).CombinedOutput(); !strings.Contains(string(out), "not found") {
		t.Errorf("a whited-out file is in the block image: %s", out)
	}
	st1, _ := os.Stat(p)
	if p2, err := s.BlockImage(ctx, string(d)); err != nil || p2 != p {
		t.Errorf("second BlockImage = %s, %v", p2, err)
	}
	if st2, _ := os.Stat(p); !os.SameFile(st1, st2) {
		t.Error("the block image was built again")
	}
	if _, err := s.BlockImage(ctx, "example.com/none:v1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("BlockImage of a missing image = %v", err)
	}
	if _, err := s.Remove(ctx, string(d)); err != nil {
		t.Fatal(err)
	}
	s.assertEmpty()
}

func TestBlockImageWithoutMkfs(t *testing.T) {
	s := newStore(t, Options{Mkfs: "/nonexistent/mkfs.ext4"})
	if _, err := s.importImage(layeredImage(t), "example.com/app:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BlockImage(context.Background(), "example.com/app:v1"); err == nil {
		t.Error("BlockImage without mkfs.ext4 succeeded")
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, "block"))
	tmp, _ := os.ReadDir(filepath.Join(s.dir, "tmp"))
	if len(ents)+len(tmp) != 0 {
		t.Errorf("left behind: %v %v", ents, tmp)
	}
}

// The block image's size is estimated from the tree: a directory of
// thousands of long names and empty files must fit too.
func TestBlockImageManySmallFiles(t *testing.T) {
	skipUnlessRoot(t, "the ext4 image keeps the layers' owners")
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
	ents := []ent{dir("d/")}
	for i := range 3000 {
		ents = append(ents, file(fmt.Sprintf("d/%0200d", i), ""))
	}
	s := newStore(t, Options{})
	if _, err := s.importImage(imageOf(t, layerOf(t, ents...)), "example.com/many:v1"); err != nil {
		t.Fatal(err)
	}
	p, err := s.BlockImage(context.Background(), "example.com/many:v1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
}
