package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

func TestParseDisk(t *testing.T) {
	d, err := parseDisk("/srv/a.qcow2:ro,format=qcow2,mount=/data,fstype=ext2")
	if err != nil {
		t.Fatal(err)
	}
	if d.GetPath() != "/srv/a.qcow2" || d.GetWritable() || d.GetImageType() != concierge.DiskImageType_DISK_IMAGE_QCOW2 ||
		!d.GetDoMount() || d.GetMountPoint() != "/data" || d.GetFstype() != "ext2" {
		t.Errorf("disk %v", d)
	}
	d, err = parseDisk("/srv/b.img")
	if err != nil || !d.GetWritable() || d.GetImageType() != concierge.DiskImageType_DISK_IMAGE_AUTO || d.GetDoMount() {
		t.Errorf("plain disk %v, %v", d, err)
	}
	d, err = parseDisk("/srv/b.img,mount=/m")
	if err != nil || d.GetFstype() != "ext4" {
		t.Errorf("mounted disk %v, %v", d, err)
	}
	for _, bad := range []string{"", ":ro", "/a,format=vmdk", "/a,speed=9", "/a,fstype=ext4"} {
		if _, err := parseDisk(bad); err == nil {
			t.Errorf("--disk %q accepted", bad)
		}
	}
}

func TestParseShare(t *testing.T) {
	s, err := parseShare("/srv/src:/src:ro")
	if err != nil || s.GetHostPath() != "/srv/src" || s.GetGuestPath() != "/src" || !s.GetReadOnly() {
		t.Errorf("share %v, %v", s, err)
	}
	s, err = parseShare("/srv/src:/src")
	if err != nil || s.GetReadOnly() {
		t.Errorf("share %v, %v", s, err)
	}
	for _, bad := range []string{"/srv", ":/x", "/srv:", "/srv:ro"} {
		if _, err := parseShare(bad); err == nil {
			t.Errorf("--share %q accepted", bad)
		}
	}
}

func TestStartRequestStorage(t *testing.T) {
	o := vmStartOptions{cpus: 1, accel: "auto", storage: vmStartStorage{
		disks: []string{"/a.img,format=raw"}, shares: []string{"/h:/g"}, kernelParams: []string{"quiet"}, startTermina: true,
	}}
	req, err := startRequest("vm", "", o)
	if err != nil {
		t.Fatal(err)
	}
	r := req.GetRequest()
	if len(r.GetDisks()) != 1 || len(req.GetShares()) != 1 || r.GetKernelParams()[0] != "quiet" || !r.GetStartTermina() {
		t.Errorf("request %v", req)
	}
	o.storage.disks = []string{"/a.img,format=ntfs"}
	if _, err := startRequest("vm", "", o); err == nil {
		t.Error("a bad --disk accepted")
	}
}

func TestWriteVMStorage(t *testing.T) {
	var b bytes.Buffer
	writeVMStorage(&b, &cabinv1.Vm{
		Disks: []*cabinv1.VmDisk{
			{Id: "stateful", Device: "/dev/vda", Path: "/var/lib/cabin/disks/x/crosvm/vm.img", Stateful: true},
			{Id: "disk1", Device: "/dev/vdb", Path: "/srv/a.qcow2", ImageType: concierge.DiskImageType_DISK_IMAGE_QCOW2, ReadOnly: true, MountPoint: "/data"},
		},
		Shares: []*cabinv1.VmShare{{Tag: "cabinShare1", HostPath: "/srv/src", GuestPath: "/src"}},
	})
	var lines []string
	for _, l := range strings.Split(b.String(), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	for _, want := range []string{
		"stateful /dev/vda raw rw /mnt/stateful /var/lib/cabin/disks/x/crosvm/vm.img",
		"disk1 /dev/vdb qcow2 ro /data /srv/a.qcow2",
		"cabinShare1 rw /src /srv/src",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in\n%s", want, b.String())
		}
	}
	b.Reset()
	writeVMStorage(&b, &cabinv1.Vm{})
	if b.Len() != 0 {
		t.Errorf("a VM without disks: %q", b.String())
	}
}
