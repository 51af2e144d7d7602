package guestimage

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// A VM without a kernel of its own boots the image and gets its root
// filesystems as a read-only share; one with its own kernel keeps it and
// gets the share too.
func TestResourcePrepare(t *testing.T) {
	f := newUpdateFixture(t)
	vm := resource.VM{Name: "r", Log: f.b.Log}
	share := []hypervisor.Share{{Tag: bootcfg.RootfsTag, Path: f.img.Rootfs, ReadOnly: true}}

	var cfg hypervisor.Config
	h, err := Resource{Builder: f.b}.Prepare(context.Background(), vm, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kernel != f.img.Kernel || cfg.Initrd != f.img.Initramfs || !slices.Equal(cfg.Shares, share) {
		t.Errorf("config %+v, want the image's kernel, initramfs and share", cfg)
	}
	if h.State() != nil || h.Release(context.Background()) != nil {
		t.Error("the image's hold keeps state or fails to release")
	}

	own := hypervisor.Config{Kernel: "/home/u/vmlinux"}
	if _, err := (Resource{Builder: f.b}).Prepare(context.Background(), vm, &own); err != nil {
		t.Fatal(err)
	}
	if own.Kernel != "/home/u/vmlinux" || own.Initrd != "" || !slices.Equal(own.Shares, share) {
		t.Errorf("config %+v, want its own kernel and the image's share", own)
	}
}

// Without an image to be had, a VM that needs the image's kernel cannot
// start, while one booting its own starts without the share.
func TestResourceWithoutAnImage(t *testing.T) {
	f := newUpdateFixture(t)
	f.apt.cand.Kernel = pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	if err := os.Remove(f.img.Initramfs); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(f.img.Rootfs); err != nil {
		t.Fatal(err)
	}
	vm := resource.VM{Name: "r", Log: f.b.Log}
	var cfg hypervisor.Config
	if _, err := (Resource{Builder: f.b}).Prepare(context.Background(), vm, &cfg); !errors.Is(err, errMirrorDown) {
		t.Errorf("Prepare without an image = %v, want the build's error", err)
	}
	own := hypervisor.Config{Kernel: "/home/u/vmlinux"}
	if _, err := (Resource{Builder: f.b}).Prepare(context.Background(), vm, &own); err != nil {
		t.Fatalf("Prepare of a VM with its own kernel: %v", err)
	}
	if len(own.Shares) != 0 {
		t.Errorf("shares %+v, want none", own.Shares)
	}
}
