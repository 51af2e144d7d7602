package vmm

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/caller/callertest"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// The fake guest's storage: each call is a step of its VM, and the
// stateful filesystem's size follows ResizeFilesystem.
var fakeFS sync.Map // *fakeVM -> uint64, the size of a mounted stateful fs

func (l *fakeLink) Mount(_ context.Context, m GuestMount) error {
	l.vm.step(fmt.Sprintf("mount %s %s %s %#x %s", m.Source, m.Target, m.FSType, m.Flags, m.Data))
	return nil
}

func (l *fakeLink) Mount9P(_ context.Context, n uint32, target string) error {
	l.vm.step(fmt.Sprintf("mount9p %d %s", n, target))
	return nil
}

func (l *fakeLink) StartTermina(_ context.Context, r TerminaRequest) (TerminaResult, error) {
	l.vm.step(fmt.Sprintf("termina %s %v", r.Device, r.Features))
	fakeFS.Store(l.vm, uint64(1<<30))
	return TerminaResult{NoContainers: "no tremplin in this image"}, nil
}

func (l *fakeLink) ResizeFilesystem(_ context.Context, size uint64) error {
	l.vm.step(fmt.Sprintf("resizefs %d", size))
	fakeFS.Store(l.vm, size)
	return nil
}

func (l *fakeLink) ResizeStatus(context.Context) (ResizeStatus, error) {
	size, ok := fakeFS.Load(l.vm)
	if !ok {
		return ResizeStatus{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "no stateful disk is mounted")
	}
	return ResizeStatus{Current: size.(uint64)}, nil
}

func (f *fakeVM) ResizeDisk(_ context.Context, id string, size int64) error {
	f.step(fmt.Sprintf("block_resize %s %d", id, size))
	return nil
}

// statefulKind attaches a VM's "own image" as diskimage.Resource does.
type statefulKind struct{ path string }

func (k statefulKind) Name() string { return "stateful" }

func (k statefulKind) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	f, err := os.OpenFile(k.path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	cfg.Disks = append([]hypervisor.Disk{{ID: "stateful", Path: k.path, File: f, Format: hypervisor.DiskRaw}}, cfg.Disks...)
	return &statefulHold{f: f, path: k.path}, nil
}

func (k statefulKind) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return &statefulHold{path: k.path}, nil
}

type statefulHold struct {
	f    *os.File
	path string
}

func (h *statefulHold) StatefulDisk() (string, string) { return "stateful", h.path }
func (h *statefulHold) State() json.RawMessage         { return nil }
func (h *statefulHold) Release(context.Context) error {
	if h.f != nil {
		h.f.Close()
	}
	return nil
}

// storageEnv is env with more resource kinds.
func storageEnv(t *testing.T, kinds ...resource.Kind) *env {
	e := newEnv(t)
	e.m.Close()
	opts := e.options()
	opts.Resources = append(opts.Resources, kinds...)
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	m.ladder = ladder{shutdownRPC: 2 * time.Second, step: 200 * time.Millisecond}
	e.m = m
	t.Cleanup(m.Close)
	return e
}

func writeFile(t *testing.T, path string, size int64, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// A start's disks go to the hypervisor open, after the VM's own image,
// and bring-up mounts them, then the shares, then runs StartTermina on
// the stateful disk, after the network and the time zone.
func TestStartAttachesDisksAndBringsThemUp(t *testing.T) {
	dir := t.TempDir()
	stateful := writeFile(t, filepath.Join(dir, "stateful.img"), 1<<20, 0o600)
	e := storageEnv(t, statefulKind{path: stateful})
	data := writeFile(t, filepath.Join(dir, "data.img"), 1<<20, 0o600)
	ro := writeFile(t, filepath.Join(dir, "ro.img"), 1<<20, 0o600)
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o755)
	s := spec("vm1")
	s.Disks = []Disk{
		{Path: data, Format: hypervisor.DiskRaw, Writable: true, Mount: &DiskMount{Target: "/data", FSType: "ext4", Flags: unix.MS_NOATIME, Data: "discard"}},
		{Path: ro, Format: hypervisor.DiskRaw, Mount: &DiskMount{Target: "/ro", FSType: "ext4"}},
	}
	s.Shares = []Share{{HostDir: shared, GuestDir: "/host"}}
	s.TerminaFeatures = []int32{5}
	w, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	w.await(t, EventStarted, "vm1")
	f := e.launcher.get(e.root.VM(statedir.VMID("", "vm1")))
	var ids []string
	for _, d := range f.cfg.Disks {
		ids = append(ids, fmt.Sprintf("%s:%s:ro=%v", d.ID, d.Format, d.ReadOnly))
	}
	if want := []string{"stateful:raw:ro=false", "disk1:raw:ro=false", "disk2:raw:ro=true"}; !slices.Equal(ids, want) {
		t.Errorf("disks %q, want %q", ids, want)
	}
	var share *hypervisor.Share
	for i, sh := range f.cfg.Shares {
		if sh.Tag == bootcfg.ShareTag(1) {
			share = &f.cfg.Shares[i]
		}
	}
	if share == nil || share.File == nil || share.Path != shared || share.ReadOnly {
		t.Errorf("share %+v, want %s passed open, writable, as %s", share, shared, bootcfg.ShareTag(1))
	}
	steps := strings.Join(f.stepsSoFar(), "; ")
	want := "timezone Europe/Paris; " +
		"mount /dev/vdb /data ext4 0x400 discard; mount /dev/vdc /ro ext4 0x1 ; " +
		"mount9p 1 /host; termina /dev/vda [5]"
	if !strings.HasPrefix(steps, want) {
		t.Errorf("bring-up %q, want %q", steps, want)
	}
	in, err := e.m.Get(Key{Name: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Disks) != 3 || in.Disks[0].Device != "/dev/vda" || !in.Disks[0].Stateful ||
		in.Disks[1].MountPoint != "/data" || in.Disks[2].Device != "/dev/vdc" || !in.Disks[2].ReadOnly {
		t.Errorf("info disks %+v", in.Disks)
	}
	var guestDirs []string
	for _, sh := range in.Shares {
		guestDirs = append(guestDirs, sh.GuestDir)
	}
	if !slices.Contains(guestDirs, "/host") {
		t.Errorf("info shares %+v, want one mounted on /host", in.Shares)
	}
}

// The owner's images in the store are disks by path without a format
// (their names say it); no other file in the state directory is.
func TestStartTakesOwnStoreImages(t *testing.T) {
	e := storageEnv(t)
	img := writeFile(t, e.root.DiskDir(statedir.DiskOwnerID(""), statedir.DiskLocationRoot).Image("data", statedir.DiskExtRaw), 1<<20, 0o600)
	s := spec("vm1")
	s.Disks = []Disk{{Path: img, Writable: true}}
	w, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	w.await(t, EventStarted, "vm1")
	f := e.launcher.get(e.root.VM(statedir.VMID("", "vm1")))
	if len(f.cfg.Disks) != 1 || f.cfg.Disks[0].Format != hypervisor.DiskRaw || f.cfg.Disks[0].ReadOnly {
		t.Errorf("disks %+v, want the store's raw image, writable", f.cfg.Disks)
	}
}

// qcow2Header is the start of a qcow2 v3 image of 1 MiB, with a backing
// file when backing.
func qcow2Header(backing bool) []byte {
	h := make([]byte, 512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	if backing {
		binary.BigEndian.PutUint64(h[8:], 256)
		binary.BigEndian.PutUint32(h[16:], 11)
		copy(h[256:], "/etc/shadow")
	}
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	return h
}

// Every refusal names its field, says why, and starts nothing.
func TestStartRefusesBadDisksAndShares(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	file := writeFile(t, filepath.Join(dir, "a.img"), 1<<20, 0o644)
	private := writeFile(t, filepath.Join(dir, "private.img"), 1<<20, 0o600)
	link := filepath.Join(dir, "link.img")
	os.Symlink(file, link)
	backing := filepath.Join(dir, "backing.qcow2")
	os.WriteFile(backing, qcow2Header(true), 0o644)
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o755)
	shareLink := filepath.Join(dir, "sharelink")
	os.Symlink("/etc", shareLink)
	other := &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	e := storageEnv(t)
	inState := writeFile(t, filepath.Join(e.root.Dir(), "vms", "x.img"), 1<<20, 0o600)
	othersImage := writeFile(t, e.root.DiskDir(statedir.DiskOwnerID("someone"), statedir.DiskLocationRoot).Image("vm1", statedir.DiskExtRaw), 1<<20, 0o600)
	raw := func(p string) Disk { return Disk{Path: p, Format: hypervisor.DiskRaw} }
	tests := []struct {
		name  string
		edit  func(*Spec)
		words []string
	}{
		{"relative path", func(s *Spec) { s.Disks = []Disk{raw("a.img")} }, []string{"disks[0].path", "absolute"}},
		{"not existing", func(s *Spec) { s.Disks = []Disk{raw(filepath.Join(dir, "none.img"))} }, []string{"disks[0].path", "no such file"}},
		{"a directory", func(s *Spec) { s.Disks = []Disk{raw(dir)} }, []string{"disks[0].path", "directory"}},
		{"in the state dir", func(s *Spec) { s.Disks = []Disk{raw(inState)} }, []string{"disks[0].path", "outside the allowed roots"}},
		{"another owner's image", func(s *Spec) { s.Disks = []Disk{raw(othersImage)} }, []string{"disks[0].path", "outside the allowed roots"}},
		{"same disk twice", func(s *Spec) { s.Disks = []Disk{raw(file), raw(file)} }, []string{"disks[1].path", "same disk twice"}},
		{"same disk through a link", func(s *Spec) { s.Disks = []Disk{raw(file), raw(link)} }, []string{"disks[1].path", "same disk twice"}},
		{"qcow2 with a backing file", func(s *Spec) { s.Disks = []Disk{{Path: backing, Format: hypervisor.DiskQcow2}} }, []string{"disks[0].path", "backing file"}},
		{"format not said", func(s *Spec) { s.Disks = []Disk{{Path: file}} }, []string{"disks[0].image_type", "never probes"}},
		{"unknown format", func(s *Spec) { s.Disks = []Disk{{Path: file, Format: "vmdk"}} }, []string{"disks[0].image_type"}},
		{"bind mount", func(s *Spec) {
			s.Disks = []Disk{{Path: file, Format: hypervisor.DiskRaw, Mount: &DiskMount{Target: "/d", FSType: "ext4", Flags: unix.MS_BIND}}}
		}, []string{"disks[0].mount_point", "not allowed"}},
		{"mount on /proc", func(s *Spec) {
			s.Disks = []Disk{{Path: file, Format: hypervisor.DiskRaw, Mount: &DiskMount{Target: "/proc/x", FSType: "ext4"}}}
		}, []string{"disks[0].mount_point", "/proc"}},
		{"bad fstype", func(s *Spec) {
			s.Disks = []Disk{{Path: file, Format: hypervisor.DiskRaw, Mount: &DiskMount{Target: "/d", FSType: "ext4,x"}}}
		}, []string{"disks[0].mount_point", "fstype"}},
		{"unreadable by the caller", func(s *Spec) { s.Caller = other; s.Disks = []Disk{raw(private)} }, []string{"disks[0].path", "may read"}},
		{"unwritable by the caller", func(s *Spec) {
			s.Caller = other
			s.Disks = []Disk{{Path: file, Format: hypervisor.DiskRaw, Writable: true}}
		}, []string{"disks[0].path", "read and write"}},
		{"share not existing", func(s *Spec) { s.Shares = []Share{{HostDir: filepath.Join(dir, "none"), GuestDir: "/h"}} }, []string{"shares[0].host_path"}},
		{"share through a link", func(s *Spec) { s.Shares = []Share{{HostDir: shareLink, GuestDir: "/h"}} }, []string{"shares[0].host_path", "symbolic link"}},
		{"share of a file", func(s *Spec) { s.Shares = []Share{{HostDir: file, GuestDir: "/h"}} }, []string{"shares[0].host_path"}},
		{"share of the state dir", func(s *Spec) { s.Shares = []Share{{HostDir: e.root.Dir(), GuestDir: "/h"}} }, []string{"shares[0].host_path", "outside the allowed roots"}},
		{"share of a parent of the state dir", func(s *Spec) { s.Shares = []Share{{HostDir: "/", GuestDir: "/h"}} }, []string{"shares[0].host_path", "outside the allowed roots"}},
		{"share on the guest's root", func(s *Spec) { s.Shares = []Share{{HostDir: shared, GuestDir: "/"}} }, []string{"shares[0].guest_path"}},
		{"two shares on one folder", func(s *Spec) {
			s.Shares = []Share{{HostDir: shared, GuestDir: "/h"}, {HostDir: shared, GuestDir: "/h"}}
		}, []string{"shares[1].guest_path"}},
		{"share the caller may not write", func(s *Spec) {
			s.Caller = other
			s.Shares = []Share{{HostDir: shared, GuestDir: "/h"}}
		}, []string{"shares[0].host_path", "read and write"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.launcher.launches.Load()
			s := spec("vm1")
			tt.edit(&s)
			_, _, err := e.m.Start(context.Background(), s)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want invalid argument", err)
			}
			for _, w := range tt.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
			if e.launcher.launches.Load() != before || len(e.m.List("")) != 0 {
				t.Errorf("a refused start launched or listed a VM")
			}
		})
	}
}

// Kernel parameters: only the allow-list's words, each in its form.
func TestKernelParamsAllowList(t *testing.T) {
	for _, ok := range []string{"loglevel=7", "quiet", "mitigations=off", "transparent_hugepage=never", "panic=-1", "cgroup_no_v1=all", "tsc=reliable"} {
		if err := checkKernelParam(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for p, why := range map[string]string{
		"init=/bin/sh":           "set by cabin",
		"cabin.mode=echo":        "set by cabin",
		"console=ttyS1":          "not among",
		"mem=64G":                "not among",
		"root=/dev/vda":          "not among",
		"loglevel=9":             "not of the form",
		"loglevel":               "needs a value",
		"quiet=1":                "takes no value",
		"clocksource=tsc,hpet":   "not of the form",
		"modprobe.blacklist=x":   "not among",
		"panic=1;reboot":         "not of the form",
		"ipv6.disable=0 init=/x": "spaces",
	} {
		err := checkKernelParam(p)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want a refusal saying %q", p, err, why)
		}
	}
	e := storageEnv(t)
	s := spec("vm1")
	s.KernelParams = []string{"quiet", "console=ttyS1"}
	if _, _, err := e.m.Start(context.Background(), s); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "kernel_params[1]") {
		t.Errorf("start with console=: %v, want invalid argument naming kernel_params[1]", err)
	}
}

// A live resize grows the device, then the guest's filesystem; shrinks
// the filesystem first.
func TestResizeDiskLive(t *testing.T) {
	dir := t.TempDir()
	e := storageEnv(t, statefulKind{path: writeFile(t, filepath.Join(dir, "s.img"), 1<<20, 0o600)})
	w, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("vm1")); err != nil {
		t.Fatal(err)
	}
	w.await(t, EventStarted, "vm1")
	f := e.launcher.get(e.root.VM(statedir.VMID("", "vm1")))
	key := Key{Name: "vm1"}
	if err := e.m.ResizeDisk(context.Background(), key, 2<<30); err != nil {
		t.Fatal(err)
	}
	if err := e.m.ResizeDisk(context.Background(), key, 1<<30); err != nil {
		t.Fatal(err)
	}
	steps := strings.Join(f.stepsSoFar(), "; ")
	want := "block_resize stateful 2147483648; resizefs 2147483648; resizefs 1073741824; block_resize stateful 1073741824"
	if !strings.Contains(steps, want) {
		t.Errorf("steps %q, want %q", steps, want)
	}
	if err := e.m.ResizeDisk(context.Background(), Key{Name: "nope"}, 1<<30); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("resize of no VM: %v, want not found", err)
	}
}

// A VM without its own image has nothing to resize live.
func TestResizeDiskWithoutImage(t *testing.T) {
	e := storageEnv(t)
	w, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("vm1")); err != nil {
		t.Fatal(err)
	}
	w.await(t, EventStarted, "vm1")
	if err := e.m.ResizeDisk(context.Background(), Key{Name: "vm1"}, 1<<30); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("got %v, want failed precondition", err)
	}
}

// FuzzDiskMount: a mount that passes is of a clean absolute target
// outside the agent's filesystems, a plain fstype, only the allowed
// flags, and data without control characters.
func FuzzDiskMount(f *testing.F) {
	f.Add("/data", "ext4", uint64(0), "discard")
	f.Add("/proc/x", "ext4", uint64(unix.MS_BIND), "")
	f.Add("/d/../e", "ext4,x", uint64(1), "a\x00b")
	f.Fuzz(func(t *testing.T, target, fstype string, flags uint64, data string) {
		m := &DiskMount{Target: target, FSType: fstype, Flags: flags, Data: data}
		if checkDiskMount(m) != nil {
			return
		}
		switch {
		case !filepath.IsAbs(target) || filepath.Clean(target) != target || target == "/":
			t.Fatalf("target %q", target)
		case strings.HasPrefix(target+"/", "/proc/") || strings.HasPrefix(target+"/", "/sys/") || strings.HasPrefix(target+"/", "/dev/"):
			t.Fatalf("target %q in the agent's filesystems", target)
		case flags&^mountFlagsAllowed != 0:
			t.Fatalf("flags %#x", flags)
		case strings.ContainsAny(fstype, ",= /\x00") || strings.ContainsRune(data, 0):
			t.Fatalf("fstype %q data %q", fstype, data)
		}
	})
}

// A VM on its way out is not resized: the resize says why at once.
func TestResizeDiskWhileStopping(t *testing.T) {
	dir := t.TempDir()
	e := storageEnv(t, statefulKind{path: writeFile(t, filepath.Join(dir, "s.img"), 1<<20, 0o600)})
	e.launcher.configure = func(f *fakeVM) { f.obeyShutdown, f.obeyQuit, f.obeyTerm = false, false, false }
	w, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("vm1")); err != nil {
		t.Fatal(err)
	}
	w.await(t, EventStarted, "vm1")
	stopped := make(chan error, 1)
	go func() { stopped <- e.m.Stop(context.Background(), Key{Name: "vm1"}) }()
	w.await(t, EventStopping, "vm1")
	err := e.m.ResizeDisk(context.Background(), Key{Name: "vm1"}, 2<<30)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) && !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("resize while stopping: %v, want failed precondition", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	f := e.launcher.get(e.root.VM(statedir.VMID("", "vm1")))
	for _, s := range f.stepsSoFar() {
		if strings.HasPrefix(s, "block_resize") {
			t.Errorf("the disk of a stopping VM was resized: %q", f.stepsSoFar())
		}
	}
}
