package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io/fs"
	"maps"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// renderStanzas writes stanzas back in the form parseStanzas reads.
func renderStanzas(st []map[string]string) string {
	var b strings.Builder
	for i, fields := range st {
		if i > 0 {
			b.WriteString("\n")
		}
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			lines := strings.Split(fields[k], "\n")
			b.WriteString(k + ": " + lines[0] + "\n")
			for _, l := range lines[1:] {
				b.WriteString(" " + l + "\n")
			}
		}
	}
	return b.String()
}

// FuzzPackageData reads arbitrary text as apt's package records and as a
// module's .modinfo. Stanzas hold keys without ':' or line breaks that do
// not start with a blank, and values whose lines are trimmed; written
// back they read the same, and parseControl is the first of them. Package
// names and versions taken from a Depends field or the records are of the
// forms the patterns allow, and what is made of them (the kernel release,
// its directory, the .deb file name) is one safe path element. Module
// names, dependencies, aliases and soft dependencies are normalised and
// hold no separators.
func FuzzPackageData(f *testing.F) {
	for _, s := range []string{
		"Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n",
		"Package: busybox-static\nVersion: 1:1.35.0-4+b3\nDescription: x\n more\n .\n\nPackage: tzdata\nVersion: 2024a-0+deb12u1\n",
		"Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2) | linux-image-cloud, foo",
		"Depends: linux-image-../../x (= 1)", "Depends: linux-image-6.1 (= 1/2)", "Depends: linux-image-6.1 (>= 1)",
		"Depends: linux-image-6.1..x (= 1)", " leading continuation\nA:b\n\n\n:\nB", "A: 1\nA: 2\n\tx\n \nA",
		"name=virtio-mmio\x00depends=virtio,virtio_ring, \x00alias=of:N*T*Cvirtio,mmio\x00softdep=pre: crc32c post: x\x00",
		"softdep=pre: pre: post: pre:\x00name=\x00depends=,,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st := parseStanzas(s)
		for _, fields := range st {
			if len(fields) == 0 {
				t.Fatalf("empty stanza from %q", s)
			}
			for k, v := range fields {
				if strings.ContainsAny(k, ":\n") || strings.HasPrefix(k, " ") || strings.HasPrefix(k, "\t") {
					t.Fatalf("key %q from %q", k, s)
				}
				for _, l := range strings.Split(v, "\n") {
					if l != strings.TrimSpace(l) {
						t.Fatalf("value line %q of %q untrimmed", l, k)
					}
				}
			}
		}
		if again := parseStanzas(renderStanzas(st)); !reflect.DeepEqual(again, st) {
			t.Fatalf("%q: stanzas %q written back read as %q", s, st, again)
		}
		first := map[string]string{}
		if len(st) > 0 {
			first = st[0]
		}
		if c := parseControl(s); !reflect.DeepEqual(c, first) {
			t.Fatalf("parseControl(%q) = %q, want %q", s, c, first)
		}

		depends := []string{s}
		recs := map[string]map[string]string{}
		for _, fields := range st {
			if d, ok := fields["Depends"]; ok {
				depends = append(depends, d)
			}
			if recs[fields["Package"]] == nil {
				recs[fields["Package"]] = fields
			}
		}
		for _, d := range depends {
			if ref, err := kernelFromDepends(d); err == nil {
				checkKernelRef(t, d, ref)
			}
		}
		if refs, err := userlandFromRecords(recs); err == nil {
			for _, ref := range refs {
				if !debVersionRE.MatchString(ref.Version) || !safeElement(debFileName(ref)) {
					t.Fatalf("%+v from records %q", ref, s)
				}
			}
		}

		m := parseModinfo([]byte(s))
		if strings.Contains(m.Name, "-") {
			t.Fatalf("module name %q not normalised", m.Name)
		}
		for what, names := range map[string][]string{"depends": m.Depends, "alias": m.Aliases, "softdep": m.PreDeps} {
			for _, n := range names {
				if strings.Contains(n, "-") || strings.ContainsRune(n, 0) {
					t.Fatalf("%s %q from %q", what, n, s)
				}
			}
		}
		for _, n := range m.Depends {
			if n == "" || strings.ContainsRune(n, ',') || n != strings.TrimSpace(n) {
				t.Fatalf("dependency %q from %q", n, s)
			}
		}
		for _, n := range m.PreDeps {
			if n == "pre:" || n == "post:" || strings.IndexFunc(n, unicode.IsSpace) >= 0 {
				t.Fatalf("soft dependency %q from %q", n, s)
			}
		}
	})
}

// checkKernelRef checks a kernel package taken from depends, and the
// names made of it.
func checkKernelRef(t *testing.T, depends string, ref pkgRef) {
	t.Helper()
	if !kernelPackageRE.MatchString(ref.Name) || !debVersionRE.MatchString(ref.Version) {
		t.Fatalf("%+v from Depends %q", ref, depends)
	}
	if !safeElement(debFileName(ref)) {
		t.Fatalf("%+v from Depends %q: file %q", ref, depends, debFileName(ref))
	}
	rel, err := kernelRelease(ref.Name)
	if err != nil {
		return
	}
	if !safeElement(rel) || strings.Contains(rel, "..") || rel != strings.TrimPrefix(ref.Name, "linux-image-") {
		t.Fatalf("%+v from Depends %q: release %q", ref, depends, rel)
	}
	if dir, err := kernelDirName(rel, ref); err == nil && (!safeElement(dir) || !strings.HasPrefix(dir, rel+"_")) {
		t.Fatalf("%+v from Depends %q: directory %q", ref, depends, dir)
	}
}

// FuzzKernelImage reads arbitrary bytes as the parts of a kernel image:
// ELF notes, an ELF file, a bzImage boot header. A Xen PVH note is found
// only where its name is, always when it comes first, and after any
// well-formed note; hasPVHNote finds in a note section what findNote
// finds in its bytes; an ELF file of any bytes is read without panicking;
// a bzImage payload found lies inside the file, after the boot sector
// and setup code, behind the "HdrS" magic.
func FuzzKernelImage(f *testing.F) {
	xen := elfNote(xenNoteName, xenElfnotePhys32Entr, []byte{0, 0x10, 0, 1})
	f.Add(xen)
	f.Add(append(elfNote("GNU", 3, []byte("build-id")), xen...))
	f.Add(elfNote("Xen", 17, []byte{1, 2, 3}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 18, 0, 0, 0})
	f.Add(pvhELF(true)[:4096])
	f.Add(pvhELF(false)[:4096])
	bz := make([]byte, bzHeaderEnd+64)
	copy(bz[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[bzVersion:], 0x020f)
	bz[bzSetupSects] = 0
	binary.LittleEndian.PutUint32(bz[bzPayloadLength:], 16)
	f.Add(bz)
	f.Fuzz(func(t *testing.T, data []byte) {
		le := binary.LittleEndian
		found := findNote(data, le, xenNoteName, xenElfnotePhys32Entr)
		if found && !bytes.Contains(data, []byte(xenNoteName)) {
			t.Fatalf("Xen note found in %x, which does not hold its name", data)
		}
		if !findNote(append(append([]byte{}, xen...), data...), le, xenNoteName, xenElfnotePhys32Entr) {
			t.Fatalf("Xen note first, then %x: not found", data)
		}
		if !findNote(append(elfNote("GNU", 3, data), xen...), le, xenNoteName, xenElfnotePhys32Entr) {
			t.Fatalf("a note holding %x, then the Xen note: not found", data)
		}
		ef, err := elf.NewFile(bytes.NewReader(buildELF(elf.ET_EXEC, "", []testSection{
			{name: ".notes", typ: elf.SHT_NOTE, data: data},
		})))
		if err != nil {
			t.Fatalf("synthetic ELF: %v", err)
		}
		if ok, err := hasPVHNote(ef); err != nil || ok != found {
			t.Fatalf("hasPVHNote of a note section %x = %v, %v; findNote says %v", data, ok, err, found)
		}
		if ef, err := elf.NewFile(bytes.NewReader(data)); err == nil {
			hasPVHNote(ef)
		}

		off, length, err := bzPayload(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		if length <= 0 || off < 2*512 || off+length > int64(len(data)) || string(data[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" {
			t.Fatalf("bzImage payload [%d, +%d) of a %d-byte file", off, length, len(data))
		}
	})
}

// localPath reports whether p is a relative path of elements that are
// neither empty, "." nor "..": below the directory it is joined to.
func localPath(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." || el == ".." {
			return false
		}
	}
	return true
}

// FuzzGuestPaths checks the names the image builder takes from packages
// before it writes them: a cpio name is the path relative to the root,
// clean and inside it; a module path is a clean relative .ko path without
// whitespace inside the modules directory; a zoneinfo path is clean,
// relative, printable ASCII, without dot files; and a zoneinfo link
// zoneLinkInside lets through resolves, from its directory, inside the
// zoneinfo tree.
func FuzzGuestPaths(f *testing.F) {
	for _, p := range [][2]string{
		{"/bin/sh", ""}, {"bin/sh", ""}, {"/", ""}, {"//", ""}, {"//bin/sh", ""}, {".", ""}, {"..", ""}, {"../x", ""}, {"a/../b", ""},
		{"a//b", ""}, {"a\x00", ""}, {"kernel/fs/ext4/ext4.ko", ""}, {"/abs.ko", ""}, {"a b.ko", ""},
		{"Europe/Paris", "../UTC"}, {"UTC", "Etc/UTC"}, {"Etc/UTC", "../../etc/shadow"}, {"Europe/Paris", "/etc/shadow"},
		{"a/b/c", "../../x"}, {"a/b/c", "../../../x"}, {".hidden", "x"}, {"Etc/UTC", "./UTC"}, {"x", "a/../../y"},
		{"a/b", "..//x"}, {"é", "x"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, name, target string) {
		if rel, err := cleanName(name); err == nil {
			if rel != strings.TrimPrefix(name, "/") || !localPath(rel) || strings.ContainsRune(rel, 0) ||
				!strings.HasPrefix(path.Join("/root", rel), "/root/") {
				t.Fatalf("cpio name %q from %q", rel, name)
			}
		}
		if checkModulePath(name) == nil {
			if !localPath(name) || !strings.HasSuffix(name, ".ko") || strings.ContainsAny(name, " \t\r\n\x00") ||
				!strings.HasPrefix(path.Join("/lib/modules", name), "/lib/modules/") {
				t.Fatalf("module path %q accepted", name)
			}
		}
		if checkZonePath(name) != nil {
			return
		}
		if !fs.ValidPath(name) || name == "." {
			t.Fatalf("zoneinfo path %q accepted", name)
		}
		for i := 0; i < len(name); i++ {
			if name[i] <= ' ' || name[i] >= 0x7f {
				t.Fatalf("zoneinfo path %q holds %q", name, name[i])
			}
		}
		for _, el := range strings.Split(name, "/") {
			if strings.HasPrefix(el, ".") {
				t.Fatalf("zoneinfo path %q has the element %q", name, el)
			}
		}
		if zoneLinkInside(name, target) {
			to := path.Join(path.Dir(name), target)
			if path.IsAbs(target) || to == ".." || strings.HasPrefix(to, "../") {
				t.Fatalf("link %s -> %s leads to %s, outside the tree", name, target, to)
			}
		}
	})
}
