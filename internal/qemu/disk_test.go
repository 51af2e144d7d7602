package qemu

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// argsAfter is every argument that follows flag in args.
func argsAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

// Disks go to QEMU as fd sets of the descriptors Launch passes, never by
// path, in order after the kernel, the initrd and the shares' folders;
// each is two block nodes with the format said, and a device whose serial
// is its id.
func TestCmdlineDisks(t *testing.T) {
	kernel, initrd, shareDir := openFile(t), openFile(t), openFile(t)
	stateful, extra := openFile(t), openFile(t)
	cfg := baseConfig()
	cfg.KernelFile, cfg.InitrdFile = kernel, initrd
	cfg.Shares = []hypervisor.Share{
		{Tag: "cabinRootfs", Path: "/var/lib/cabin/image/rootfs/abc", ReadOnly: true},
		{Tag: "cabinShare1", Path: "/home/u/src", File: shareDir},
	}
	cfg.Disks = []hypervisor.Disk{
		{ID: "stateful", Path: "/var/lib/cabin/disks/x/crosvm/vm1.img", File: stateful, Format: hypervisor.DiskRaw},
		{ID: "disk1", Path: "/home/u/a,b.qcow2", File: extra, Format: hypervisor.DiskQcow2, ReadOnly: true},
	}
	args, err := cmdline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	files, _, _ := bootFiles(cfg.Config)
	if want := []*os.File{kernel, initrd, shareDir, stateful, extra}; !slices.Equal(files, want) {
		t.Fatalf("files passed %v, want %v", files, want)
	}
	fd := func(f *os.File) string { return strconv.Itoa(3 + slices.Index(files, f)) }
	if got, want := argsAfter(args, "-add-fd"), []string{
		"fd=" + fd(stateful) + ",set=1,opaque=disk-stateful",
		"fd=" + fd(extra) + ",set=2,opaque=disk-disk1",
	}; !slices.Equal(got, want) {
		t.Errorf("-add-fd %q, want %q", got, want)
	}
	if got, want := argsAfter(args, "-blockdev"), []string{
		"driver=file,node-name=file-stateful,filename=/dev/fdset/1,cache.direct=off,cache.no-flush=off,aio=threads,discard=unmap,read-only=off",
		"driver=raw,node-name=stateful,file=file-stateful,discard=unmap,read-only=off",
		"driver=file,node-name=file-disk1,filename=/dev/fdset/2,cache.direct=off,cache.no-flush=off,aio=threads,discard=unmap,read-only=on",
		"driver=qcow2,node-name=disk1,file=file-disk1,discard=unmap,read-only=on",
	}; !slices.Equal(got, want) {
		t.Errorf("-blockdev %q, want %q", got, want)
	}
	devices := argsAfter(args, "-device")
	for _, want := range []string{"virtio-blk-device,drive=stateful,serial=stateful", "virtio-blk-device,drive=disk1,serial=disk1"} {
		if !slices.Contains(devices, want) {
			t.Errorf("no -device %q in %q", want, devices)
		}
	}
	// The share passed open is served from its descriptor; cabin's own
	// goes by path.
	fsdevs := argsAfter(args, "-fsdev")
	if want := "local,id=fs1,path=/proc/self/fd/" + fd(shareDir) + ",security_model=mapped-xattr"; !slices.Contains(fsdevs, want) {
		t.Errorf("-fsdev %q, want %q among them", fsdevs, want)
	}
	// No image path reaches QEMU.
	for _, a := range args {
		if strings.Contains(a, "/home/u") || strings.Contains(a, "/disks/") {
			t.Errorf("an image or share path reaches QEMU: %q", a)
		}
	}
}

// On q35 disks are PCI devices.
func TestCmdlineDisksQ35(t *testing.T) {
	cfg := baseConfig()
	cfg.Machine = hypervisor.MachineQ35
	cfg.Disks = []hypervisor.Disk{{ID: "disk1", File: openFile(t), Format: hypervisor.DiskRaw}}
	args, err := cmdline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(argsAfter(args, "-device"), "virtio-blk-pci,drive=disk1,serial=disk1") {
		t.Errorf("no virtio-blk-pci device in %q", args)
	}
	// Without a kernel or initrd passed open, the disk is descriptor 3.
	if got := argsAfter(args, "-add-fd"); len(got) != 1 || !strings.HasPrefix(got[0], "fd=3,") {
		t.Errorf("-add-fd %q, want fd=3", got)
	}
}

func TestCmdlineBadDisks(t *testing.T) {
	f := openFile(t)
	tests := []struct {
		name  string
		disks []hypervisor.Disk
		field string
	}{
		{"empty id", []hypervisor.Disk{{File: f, Format: hypervisor.DiskRaw}}, "disks[0].id"},
		{"comma in id", []hypervisor.Disk{{ID: "a,b", File: f, Format: hypervisor.DiskRaw}}, "disks[0].id"},
		{"long id", []hypervisor.Disk{{ID: strings.Repeat("a", hypervisor.MaxDiskID+1), File: f, Format: hypervisor.DiskRaw}}, "disks[0].id"},
		{"same id", []hypervisor.Disk{{ID: "d", File: f, Format: hypervisor.DiskRaw}, {ID: "d", File: f, Format: hypervisor.DiskRaw}}, "disks[1].id"},
		{"not open", []hypervisor.Disk{{ID: "d", Path: "/x.img", Format: hypervisor.DiskRaw}}, "disks[0].file"},
		{"no format", []hypervisor.Disk{{ID: "d", File: f}}, "disks[0].format"},
		{"probed format", []hypervisor.Disk{{ID: "d", File: f, Format: "vmdk"}}, "disks[0].format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Disks = tt.disks
			_, err := cmdline(cfg)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("got %v, want invalid argument naming %s", err, tt.field)
			}
		})
	}
}

func TestGuestDiskName(t *testing.T) {
	for i, want := range map[int]string{0: "vda", 1: "vdb", 25: "vdz", 26: "vdaa", 27: "vdab", 51: "vdaz", 52: "vdba", 701: "vdzz", 702: "vdaaa"} {
		if got := hypervisor.GuestDiskName(i); got != want {
			t.Errorf("GuestDiskName(%d) = %q, want %q", i, got, want)
		}
	}
}
