package guestimage

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheckAgent(t *testing.T) {
	agent := staticAgent(t)
	if err := checkAgent(agent); err != nil {
		t.Fatalf("static Go binary rejected: %v", err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"dynamic": buildELF(elf.ET_EXEC, "/lib64/ld-linux-x86-64.so.2", nil),
		"object":  buildELF(elf.ET_REL, "", nil),
		"script":  []byte("#!/bin/sh\necho hi\n"),
	}
	for name, data := range files {
		os.WriteFile(filepath.Join(dir, name), data, 0o755)
	}
	for _, tc := range []struct {
		path, want string
		is         error
	}{
		{filepath.Join(dir, "dynamic"), "dynamically linked", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "object"), "not an executable", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "script"), "not an ELF", errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "missing"), "not found", errdefs.ErrNotFound},
		{dir, "not a regular file", errdefs.ErrInvalidArgument},
	} {
		err := checkAgent(tc.path)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %v mentioning %q", filepath.Base(tc.path), err, tc.is, tc.want)
		}
	}
	// A real dynamically linked program, where the host has one.
	if _, err := os.Stat("/bin/sh"); err == nil {
		if err := checkAgent("/bin/sh"); err == nil {
			t.Error("/bin/sh accepted as a static agent")
		}
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// An agent that is not the binary the image is named after (replaced
// while the build downloaded packages) must not be written under that name.
func TestWriteInitramfsChecksTheAgent(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	busybox := filepath.Join(dir, "busybox")
	os.WriteFile(agent, []byte("AGENT B"), 0o700)
	os.WriteFile(busybox, []byte("BUSYBOX"), 0o700)
	dst := filepath.Join(dir, "initramfs.cpio")
	_, err := writeInitramfs(dst, initramfsSpec{Agent: agent, AgentSHA256: sha256Hex("AGENT A"), Busybox: busybox})
	if err == nil || !strings.Contains(err.Error(), "changed while the image was built") {
		t.Fatalf("writeInitramfs with another agent = %v, want an error saying it changed", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an initramfs was left at %s: %v", dst, err)
	}
}

func TestWriteInitramfs(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	runtime := filepath.Join(dir, "runtime")
	busybox := filepath.Join(dir, "busybox")
	os.WriteFile(agent, []byte("AGENT"), 0o700)
	os.WriteFile(runtime, []byte("RUNTIME"), 0o700)
	os.WriteFile(busybox, []byte("BUSYBOX"), 0o700)
	modroot := filepath.Join(dir, "modules")
	mods := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/fs/ext4/ext4.ko"}
	for _, m := range mods {
		p := filepath.Join(modroot, m)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("module "+m), 0o644)
	}
	zoneRoot := zoneTree(t, debianLikeZones())
	zones, err := zoneinfoEntries(zoneRoot)
	if err != nil {
		t.Fatal(err)
	}
	spec := initramfsSpec{
		Agent: agent, AgentSHA256: sha256Hex("AGENT"), Busybox: busybox,
		Runtime: runtime, RuntimeSHA256: sha256Hex("RUNTIME"),
		// busybox lists "init" and itself among its applets: neither may
		// replace a real file.
		Applets:      []string{"sh", "init", "busybox", "[", "ls"},
		ModulesRoot:  modroot,
		Boot:         mods[:2],
		Late:         mods[2:],
		ZoneinfoRoot: zoneRoot,
		Zones:        zones,
	}
	dst := filepath.Join(dir, "initramfs.cpio")
	size, err := writeInitramfs(dst, spec)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) != size {
		t.Errorf("size %d, file %d", size, len(data))
	}
	if err := CheckInitramfs(dst); err != nil {
		t.Errorf("CheckInitramfs: %v", err)
	}
	entries, err := readCPIO(data)
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) cpioEntry {
		t.Helper()
		e, ok := findEntry(entries, strings.TrimPrefix(name, "/"))
		if !ok {
			t.Fatalf("%s missing from the initramfs", name)
		}
		return e
	}
	if e := get(bootcfg.Init); e.typ() != cpioTypeReg || string(e.Data) != "AGENT" || e.Mode&0o777 != 0o755 {
		t.Errorf("/init: mode %o data %q; want the agent, 0755", e.Mode, e.Data)
	}
	if e := get(bootcfg.RuntimeBinary); e.typ() != cpioTypeReg || string(e.Data) != "RUNTIME" || e.Mode&0o777 != 0o755 {
		t.Errorf("%s: mode %o data %q; want the runtime, 0755", bootcfg.RuntimeBinary, e.Mode, e.Data)
	}
	for _, d := range []string{"/usr", "/usr/bin"} {
		if e := get(d); e.typ() != cpioTypeDir || e.Mode&0o777 != 0o755 {
			t.Errorf("%s: mode %o, want a directory, 0755", d, e.Mode)
		}
	}
	if e := get(bootcfg.Busybox); e.typ() != cpioTypeReg || string(e.Data) != "BUSYBOX" {
		t.Errorf("busybox: mode %o data %q", e.Mode, e.Data)
	}
	for _, a := range []string{"sh", "[", "ls", "init"} {
		e := get(bootcfg.BusyboxBinDir + "/" + a)
		if e.typ() != cpioTypeLink || string(e.Data) != bootcfg.Busybox {
			t.Errorf("applet %s: mode %o target %q", a, e.Mode, e.Data)
		}
	}
	if e := get("/dev/console"); e.typ() != cpioTypeChar || e.RMajor != 5 || e.RMinor != 1 {
		t.Errorf("/dev/console: mode %o rdev %d:%d", e.Mode, e.RMajor, e.RMinor)
	}
	if e := get("/dev/null"); e.typ() != cpioTypeChar || e.RMajor != 1 || e.RMinor != 3 {
		t.Errorf("/dev/null: mode %o rdev %d:%d", e.Mode, e.RMajor, e.RMinor)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/root", "/mnt", bootcfg.ModulesDir} {
		if e := get(d); e.typ() != cpioTypeDir {
			t.Errorf("%s: mode %o, want a directory", d, e.Mode)
		}
	}
	if e := get("/tmp"); e.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp mode %o, want sticky 1777", e.Mode)
	}
	for _, m := range mods {
		if e := get(bootcfg.ModulesDir + "/" + m); string(e.Data) != "module "+m {
			t.Errorf("%s: data %q", m, e.Data)
		}
	}
	if got := string(get(bootcfg.BootModules).Data); got != mods[0]+"\n"+mods[1]+"\n" {
		t.Errorf("boot list %q", got)
	}
	if got := string(get(bootcfg.LateModules).Data); got != mods[2]+"\n" {
		t.Errorf("late list %q", got)
	}
	if e := get("/etc/localtime"); e.typ() != cpioTypeLink || string(e.Data) != "/usr/share/zoneinfo/UTC" {
		t.Errorf("/etc/localtime: mode %o target %q", e.Mode, e.Data)
	}
	for name, want := range map[string]string{
		"/etc/localtime":                            "usr/share/zoneinfo/Etc/UTC",
		"/usr/share/zoneinfo/UTC":                   "usr/share/zoneinfo/Etc/UTC",
		"/usr/share/zoneinfo/Europe/Paris":          "usr/share/zoneinfo/Europe/Paris",
		"/usr/share/zoneinfo/America/New_York":      "usr/share/zoneinfo/America/New_York",
		"/usr/share/zoneinfo/Antarctica/South_Pole": "usr/share/zoneinfo/Europe/Paris",
		"/usr/share/zoneinfo/posix/Europe/Paris":    "usr/share/zoneinfo/Europe/Paris",
	} {
		e, ok := resolveEntry(entries, name)
		if !ok || e.Name != want || e.typ() != cpioTypeReg || !strings.HasPrefix(string(e.Data), "TZif") {
			t.Errorf("%s resolves to %q (found %v, mode %o), want the file %s", name, e.Name, ok, e.Mode, want)
		}
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name, "usr/share/zoneinfo/right") || e.Name == "usr/share/zoneinfo/localtime" {
			t.Errorf("%s is in the initramfs", e.Name)
		}
	}

	// Same spec, same bytes.
	dst2 := filepath.Join(dir, "again.cpio")
	if _, err := writeInitramfs(dst2, spec); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(dst2); !bytes.Equal(again, data) {
		t.Error("rebuilding the same spec changed the bytes")
	}

	for name, bad := range map[string]func(*initramfsSpec){
		"no runtime":                           func(s *initramfsSpec) { s.Runtime = "" },
		"runtime changed during the build":     func(s *initramfsSpec) { s.RuntimeSHA256 = sha256Hex("RUNTIME A") },
		"module path escaping the modules dir": func(s *initramfsSpec) { s.Late = []string{"../../etc/shadow.ko"} },
		"zone path escaping the tree":          func(s *initramfsSpec) { s.Zones = []zoneEntry{{Rel: "../../etc/shadow"}} },
		"zone link leaving the tree":           func(s *initramfsSpec) { s.Zones = []zoneEntry{{Rel: "UTC", Target: "/etc/shadow"}} },
	} {
		s := spec
		bad(&s)
		if _, err := writeInitramfs(filepath.Join(dir, "bad.cpio"), s); err == nil {
			t.Errorf("%s accepted", name)
		}
		if _, err := os.Stat(filepath.Join(dir, "bad.cpio")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: failed build left an initramfs behind", name)
		}
	}
}

// resolveEntry follows symlinks in an archive as the guest kernel would,
// element by element, and returns the entry name reaches. It fails on a
// missing element, on more than 40 links, and on ".." above the root.
func resolveEntry(entries []cpioEntry, name string) (cpioEntry, bool) {
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	todo := strings.Split(strings.TrimPrefix(name, "/"), "/")
	cur, links := "", 0
	for len(todo) > 0 {
		el := todo[0]
		todo = todo[1:]
		switch el {
		case "", ".":
			continue
		case "..":
			if cur == "" {
				return cpioEntry{}, false
			}
			if cur = path.Dir(cur); cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, el)
		e, ok := byName[next]
		if !ok {
			return cpioEntry{}, false
		}
		if e.typ() == cpioTypeLink {
			if links++; links > 40 {
				return cpioEntry{}, false
			}
			target := string(e.Data)
			if path.IsAbs(target) {
				cur = ""
			}
			todo = append(strings.Split(target, "/"), todo...)
			continue
		}
		cur = next
	}
	e, ok := byName[cur]
	return e, ok
}
