package kata

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// reservedForFuzz are the agent's own directories, as New reserves them.
var reservedForFuzz = []string{DefaultRuntimeRoot, DefaultBundles}

// checkStorage checks what a storage that spec and checkMountPoint
// accepted comes to: a mount of the driver's own file system type, flags
// only from mountFlags, and options (the mount data) each of which is one
// the caller gave and the file system allows, so that no option smuggles
// in another; 9p always over virtio, from a tag without separators; a
// local directory's mode within 07777; a mount point below /run, absolute,
// clean, clear of the agent's own directories.
func checkStorage(t *testing.T, s Storage, ms mountSpec) {
	t.Helper()
	var allFlags uintptr
	for _, f := range mountFlags {
		allFlags |= f.set
	}
	if ms.flags&^allFlags != 0 {
		t.Fatalf("%+v: flags %#x", s, ms.flags)
	}
	var data []string
	if ms.data != "" {
		data = strings.Split(ms.data, ",")
	}
	if strings.ContainsRune(ms.data, 0) {
		t.Fatalf("%+v: mount data %q holds NUL", s, ms.data)
	}
	fstype := ms.fstype
	switch s.Driver {
	case Driver9P:
		if fstype != "9p" || ms.source != s.Source || s.Source == "" || len(s.Source) > maxTag || strings.ContainsAny(s.Source, ",\x00") {
			t.Fatalf("%+v: mounts %+v", s, ms)
		}
		trans := func(o string) bool { return strings.HasPrefix(o, "trans=") }
		if !slices.ContainsFunc(data, trans) || slices.ContainsFunc(data, func(o string) bool { return trans(o) && o != "trans=virtio" }) {
			t.Fatalf("%+v: 9p options %q", s, data)
		}
		if !slices.ContainsFunc(s.Options, trans) {
			data = data[1:]
		}
	case DriverEphemeral:
		if fstype != "tmpfs" || ms.source != "tmpfs" {
			t.Fatalf("%+v: mounts %+v", s, ms)
		}
	case DriverLocal:
		if fstype != "" || ms.data != "" || ms.mode > 0o7777 || ms.flags != 0 {
			t.Fatalf("%+v: makes %+v", s, ms)
		}
	case DriverBind, DriverWatchableBind:
		if !ms.bind || ms.data != "" || ms.source != s.Source || checkMountPoint("source", s.Source, nil) != nil {
			t.Fatalf("%+v: binds %+v", s, ms)
		}
	case DriverOverlay:
		if fstype != "overlay" || ms.source != "overlay" {
			t.Fatalf("%+v: mounts %+v", s, ms)
		}
		// Every directory is absolute, clean, below storageRoot and free
		// of what overlay's own option parser reads; only the known
		// options pass.
		for _, o := range data {
			key, value, _ := strings.Cut(o, "=")
			switch key {
			case "lowerdir", "upperdir", "workdir":
				for _, d := range strings.Split(value, ":") {
					if checkOverlayDir("fuzz", key, d) != nil {
						t.Fatalf("%+v: overlay directory %q passed", s, d)
					}
				}
			case "index", "xino", "redirect_dir", "metacopy", "volatile":
			default:
				t.Fatalf("%+v: overlay option %q passed", s, o)
			}
		}
		return
	case DriverBlk, DriverVirtioBlk, DriverMmioBlk:
		_, known := diskFSOptions[fstype]
		if !ms.disk || !known || ms.source != s.Source || !strings.HasPrefix(s.Source, "/dev/") && s.Driver == DriverMmioBlk {
			t.Fatalf("%+v: mounts %+v", s, ms)
		}
	default:
		t.Fatalf("driver %q accepted", s.Driver)
	}
	var given []string
	for _, o := range s.Options {
		if _, ok := mountFlags[o]; !ok {
			given = append(given, o)
		}
	}
	if s.Driver != DriverLocal && !slices.Equal(data, given) {
		t.Fatalf("%+v: options %q, mount data %q", s, given, data)
	}
	allowed := fsOptions[fstype]
	if ms.disk {
		allowed = diskFSOptions[fstype]
	}
	for _, o := range data {
		key, _, _ := strings.Cut(o, "=")
		if !slices.Contains(allowed, key) {
			t.Fatalf("%+v: option %q for %s", s, o, fstype)
		}
	}
}

// checkMountPointAccepted checks a mount point checkMountPoint accepted.
func checkMountPointAccepted(t *testing.T, p string) {
	t.Helper()
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || !strings.HasPrefix(p, storageRoot+"/") || strings.ContainsRune(p, 0) {
		t.Fatalf("mount point %q accepted", p)
	}
	for _, r := range reservedForFuzz {
		if rel, err := filepath.Rel(r, p); err == nil && !strings.HasPrefix(rel, "..") {
			t.Fatalf("mount point %q accepted inside %s", p, r)
		}
		if rel, err := filepath.Rel(p, r); err == nil && !strings.HasPrefix(rel, "..") {
			t.Fatalf("mount point %q accepted above %s", p, r)
		}
	}
}

// FuzzStorage checks storages of arbitrary fields (options one a line):
// what is accepted is what checkStorage and checkMountPointAccepted say,
// and refusals are invalid arguments naming the storage.
func FuzzStorage(f *testing.F) {
	for _, s := range []Storage{
		{Driver: "9p", Source: "cabinRootfs", Options: []string{"ro", "nodev"}, MountPoint: "/run/rootfs"},
		{Driver: "9p", Source: "t", FSType: "9p", Options: []string{"trans=virtio", "version=9p2000.L", "msize=512000"}, MountPoint: "/run/a"},
		{Driver: "9p", Source: "t", Options: []string{"trans=tcp"}, MountPoint: "/run/a"},
		{Driver: "9p", Source: "t", Options: []string{"cache=none,trans=fd"}, MountPoint: "/run/a"},
		{Driver: "9p", Source: "a,b", MountPoint: "/run/a"},
		{Driver: "9p", Source: "t", Options: []string{"trans=virtio", "trans=virtio"}, MountPoint: "/run/a"},
		{Driver: "ephemeral", Options: []string{"size=64m", "mode=1777", "nosuid"}, MountPoint: "/run/tmp"},
		{Driver: "ephemeral", FSType: "ext4", MountPoint: "/run/tmp"},
		{Driver: "ephemeral", Options: []string{""}, MountPoint: "/run/tmp"},
		{Driver: "local", Options: []string{"mode=0755"}, MountPoint: "/run/dir"},
		{Driver: "overlayfs", FSType: "overlay", Options: []string{"nodev", "lowerdir=/run/i/a", "upperdir=/run/c/u", "workdir=/run/c/w"}, MountPoint: "/run/c/root"},
		{Driver: "overlayfs", Options: []string{"lowerdir=/run/a:/run/b", "index=off", "volatile"}, MountPoint: "/run/c/ro"},
		{Driver: "blk", Source: "02/03", FSType: "ext4", Options: []string{"ro", "discard"}, MountPoint: "/run/disk"},
		{Driver: "bind", Source: "/run/kata-containers/shared/x", Options: []string{"ro"}, MountPoint: "/run/b"},
		{Driver: "mmioblk", Source: "/dev/vdb", FSType: "xfs", Options: []string{"nouuid"}, MountPoint: "/run/disk"},
		{Driver: "local", Options: []string{"mode=17777"}, MountPoint: "/run/dir"},
		{Driver: "local", Options: []string{"ro"}, MountPoint: "/run/dir"},
		{Driver: "blk", MountPoint: "/run/x"},
		{Driver: "9p", Source: "t", MountPoint: "/run/cabin"},
		{Driver: "9p", Source: "t", MountPoint: "/run/cabin/bundles/x"},
		{Driver: "9p", Source: "t", MountPoint: "/run/../etc"},
		{Driver: "9p", Source: "t", MountPoint: "/run"},
		{Driver: "9p", Source: "t", MountPoint: "/run/cabinx"},
		{Driver: "9p", Source: "t", MountPoint: "run/x"},
		{Driver: "9p", Source: "t", MountPoint: "/run/x\x00"},
	} {
		f.Add(s.Driver, s.Source, s.FSType, strings.Join(s.Options, "\n"), s.MountPoint)
	}
	f.Fuzz(func(t *testing.T, driver, source, fstype, options, mountPoint string) {
		s := Storage{Driver: driver, Source: source, FSType: fstype, MountPoint: mountPoint}
		if options != "" {
			s.Options = strings.Split(options, "\n")
		}
		const field = "storages[0]"
		ms, err := s.spec(field)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), field+".") {
				t.Fatalf("%+v: %v, want an invalid argument naming %s", s, err, field)
			}
		} else {
			checkStorage(t, s, ms)
		}
		err = checkMountPoint(field+".mount_point", mountPoint, reservedForFuzz)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), field+".mount_point: ") {
				t.Fatalf("mount point %q: %v, want an invalid argument naming it", mountPoint, err)
			}
			return
		}
		checkMountPointAccepted(t, mountPoint)
	})
}

// FuzzCreateContainer reads arbitrary bytes as a CreateContainerRequest
// and checks what the agent takes from it before it acts: a container id
// is a safe directory name that no command line takes for a flag; the
// converted spec has a process with arguments, environment entries of the
// form KEY=value, an absolute working directory, an OOM score within the
// kernel's range, an absolute clean root, absolute mount destinations and
// hook paths, known namespace and device types, and no NUL in any of the
// paths and arguments checked; it encodes as JSON, as the bundle's
// config.json, and reads back the same; and the storages are checked as
// FuzzStorage checks them.
func FuzzCreateContainer(f *testing.F) {
	full := fullSpec()
	for _, req := range []*pb.CreateContainerRequest{
		{ContainerId: "c1", OCI: full, Storages: []*pb.Storage{{Driver: "9p", Source: "cabinRootfs", MountPoint: "/run/rootfs/c1"}}},
		{ContainerId: "c1", ExecId: "c1", OCI: &pb.Spec{Process: &pb.Process{Args: []string{"sh"}}, Root: &pb.Root{Path: "/run/rootfs/c1"}}},
		{ContainerId: "-x", OCI: &pb.Spec{Process: &pb.Process{Args: []string{""}}}},
		{ContainerId: "../x", OCI: &pb.Spec{Process: &pb.Process{Args: []string{"a\x00"}, Env: []string{"=x", "A"}, Cwd: "rel"}}},
		{ContainerId: "c", OCI: &pb.Spec{Process: &pb.Process{Args: []string{"sh"}, OOMScoreAdj: 1001}, Root: &pb.Root{Path: "/a/../b"}}},
		{ContainerId: "c", OCI: &pb.Spec{Process: &pb.Process{Args: []string{"sh"}}, Root: &pb.Root{Path: "/r"},
			Linux: &pb.Linux{Namespaces: []*pb.LinuxNamespace{{Type: "pid"}, {Type: "bogus"}}, Devices: []*pb.LinuxDevice{{Path: "/dev/x", Type: "q"}}}}},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.CreateContainerRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		if id := req.GetContainerId(); checkID("container_id", id) == nil {
			if !isSafeID(id) {
				t.Fatalf("container id %q accepted", id)
			}
		}
		if h := req.GetOCI().GetHostname(); checkHostname("hostname", h) == nil && !isHostname(h) {
			t.Fatalf("hostname %q accepted", h)
		}
		for _, s := range storages(req.GetStorages()) {
			if ms, err := s.spec("storages"); err == nil {
				checkStorage(t, s, ms)
			}
			if checkMountPoint("storages", s.MountPoint, reservedForFuzz) == nil {
				checkMountPointAccepted(t, s.MountPoint)
			}
		}
		spec, err := convertSpec("OCI", req.GetOCI())
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "OCI") {
				t.Fatalf("convertSpec: %v, want an invalid argument naming the field", err)
			}
			return
		}
		checkSpec(t, spec)
		js, err := json.Marshal(spec)
		if err != nil {
			t.Fatalf("spec does not encode: %v", err)
		}
		var back specs.Spec
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("config.json %s does not decode: %v", js, err)
		}
		if again, _ := json.Marshal(&back); string(again) != string(js) {
			t.Fatalf("config.json %s reads back as %s", js, again)
		}
	})
}

// isHostname reports whether h is at most 64 bytes of dot-separated
// labels of 1 to 63 letters, digits and '-', not starting or ending with
// '-'.
func isHostname(h string) bool {
	if len(h) > 64 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' ||
			strings.Trim(l, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return false
		}
	}
	return true
}

// isSafeID reports whether id is a container id as the contract has it:
// one path element that no command line takes for a flag.
func isSafeID(id string) bool {
	if id == "" || len(id) > maxID || id[0] == '.' || id[0] == '-' || filepath.Base(id) != id || id == "." || id == ".." {
		return false
	}
	return strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == ""
}

// checkSpec checks a spec convertSpec accepted.
func checkSpec(t *testing.T, s *specs.Spec) {
	t.Helper()
	noNUL := func(what, v string) {
		if strings.ContainsRune(v, 0) {
			t.Fatalf("%s %q holds NUL", what, v)
		}
	}
	abs := func(what, p string) {
		if !filepath.IsAbs(p) {
			t.Fatalf("%s %q is not absolute", what, p)
		}
		noNUL(what, p)
	}
	p := s.Process
	if p == nil || len(p.Args) == 0 || p.Args[0] == "" {
		t.Fatalf("process %+v accepted", p)
	}
	for _, a := range p.Args {
		noNUL("argument", a)
	}
	for _, e := range p.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			t.Fatalf("environment entry %q accepted", e)
		}
		noNUL("environment entry", e)
	}
	abs("cwd", p.Cwd)
	if p.OOMScoreAdj == nil || *p.OOMScoreAdj < -1000 || *p.OOMScoreAdj > 1000 {
		t.Fatalf("OOM score adjustment %v", p.OOMScoreAdj)
	}
	for _, r := range p.Rlimits {
		if !strings.HasPrefix(r.Type, "RLIMIT_") {
			t.Fatalf("rlimit %q accepted", r.Type)
		}
	}
	if s.Root == nil {
		t.Fatal("no root")
	}
	abs("root", s.Root.Path)
	if filepath.Clean(s.Root.Path) != s.Root.Path {
		t.Fatalf("root %q is not clean", s.Root.Path)
	}
	for _, m := range s.Mounts {
		abs("mount destination", m.Destination)
		noNUL("mount source", m.Source)
	}
	if h := s.Hooks; h != nil {
		for _, list := range [][]specs.Hook{h.Prestart, h.CreateRuntime, h.CreateContainer, h.StartContainer, h.Poststart, h.Poststop} {
			for _, hk := range list {
				abs("hook", hk.Path)
				if hk.Timeout != nil && *hk.Timeout <= 0 {
					t.Fatalf("hook timeout %d", *hk.Timeout)
				}
			}
		}
	}
	if l := s.Linux; l != nil {
		for _, ns := range l.Namespaces {
			if !slices.Contains(namespaceTypes, ns.Type) {
				t.Fatalf("namespace %q accepted", ns.Type)
			}
			if ns.Path != "" {
				abs("namespace path", ns.Path)
			}
		}
		for _, d := range l.Devices {
			abs("device", d.Path)
			if !slices.Contains([]string{"c", "b", "u", "p"}, d.Type) {
				t.Fatalf("device type %q accepted", d.Type)
			}
		}
		if r := l.Resources; r != nil && r.Memory != nil && r.Memory.Swappiness != nil && *r.Memory.Swappiness > 100 {
			t.Fatalf("swappiness %d accepted", *r.Memory.Swappiness)
		}
	}
}
