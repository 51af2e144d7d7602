package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/caller/callertest"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// FuzzValidateKey checks what an accepted VM name and owner id guarantee:
// valid UTF-8 of printable characters without '/', '\\' or NUL, within
// their lengths; a name is one local path element that cannot climb out of
// a directory; a key's String reads back as the key, and its VMID, which
// is what names its directory, is a hex element that no other valid key
// split differently shares. Refusals are invalid-argument errors.
func FuzzValidateKey(f *testing.F) {
	for _, k := range []Key{
		{Name: "vm1"}, {Owner: "alice", Name: "vm1"}, {Name: "r1 "}, {Name: "ünï€"}, {Name: "-x"},
		{Name: "."}, {Name: ".."}, {Name: "a/b"}, {Name: `a\b`}, {Name: "a\x00b"}, {Name: "a\nb"},
		{Name: "\xff"}, {Name: strings.Repeat("n", 60)}, {Name: strings.Repeat("é", 61)},
		{Owner: "../..", Name: "x"}, {Owner: "o\x00", Name: "n"}, {Owner: strings.Repeat("o", 129), Name: "n"},
		{Owner: "ab", Name: "c"}, {Owner: "a", Name: "bc"}, {Name: "\u200b"}, {Name: "\u00a0"},
	} {
		f.Add(k.Owner, k.Name)
	}
	f.Fuzz(func(t *testing.T, owner, name string) {
		nerr, oerr := ValidateName(name), ValidateOwner(owner)
		for _, err := range []error{nerr, oerr} {
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("refusal %v is not an invalid argument", err)
			}
		}
		k := Key{Owner: owner, Name: name}
		if kerr := k.Validate(); (kerr == nil) != (nerr == nil && oerr == nil) {
			t.Fatalf("Key.Validate = %v; name: %v, owner: %v", kerr, nerr, oerr)
		}
		if nerr == nil {
			assertText(t, "name", name)
			if n := utf8.RuneCountInString(name); n < 1 || n > MaxNameLength {
				t.Fatalf("name %q of %d characters accepted", name, n)
			}
			const dir = "/state/vms"
			if !filepath.IsLocal(name) || filepath.Join(dir, name) != dir+"/"+name || filepath.Base(name) != name {
				t.Fatalf("name %q is not one path element", name)
			}
		}
		if oerr == nil {
			if len(owner) > MaxOwnerLength {
				t.Fatalf("owner of %d bytes accepted", len(owner))
			}
			if owner != "" {
				assertText(t, "owner", owner)
			}
		}
		if nerr != nil || oerr != nil {
			return
		}
		s := k.String()
		back := Key{Name: s}
		if o, n, ok := strings.Cut(s, "/"); ok {
			back = Key{Owner: o, Name: n}
		}
		if back != k {
			t.Fatalf("%#v.String() = %q reads back as %#v", k, s, back)
		}
		id := statedir.VMID(owner, name)
		if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("VMID %q is not 16 hex digits", id)
		}
		_, size := utf8.DecodeRuneInString(name)
		for _, other := range []Key{
			{Owner: owner + name[:size], Name: name[size:]},
			{Owner: name, Name: owner},
		} {
			if other != k && other.Validate() == nil && statedir.VMID(other.Owner, other.Name) == id {
				t.Fatalf("%#v and %#v share VMID %s", k, other, id)
			}
		}
	})
}

// assertText checks what every accepted name and owner holds.
func assertText(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("%s %q is not UTF-8", what, s)
	}
	for _, r := range s {
		if r == '/' || r == '\\' || r == 0 || !unicode.IsPrint(r) {
			t.Fatalf("%s %q holds %U", what, s, r)
		}
	}
}

// FuzzKernelParam checks the kernel parameters a caller may add: what is
// accepted is one word of printable ASCII without quotes or backslashes,
// at most MaxKernelArg bytes, that sets neither init, rdinit nor a cabin.*
// parameter, so the agent reads the same boot parameters with it on the
// command line, before or after cabin's own. The form check alone refuses
// at least what hypervisor.CheckKernelArg refuses.
func FuzzKernelParam(f *testing.F) {
	for _, p := range []string{
		"quiet", "console=ttyS0", "loglevel=7", "init=/bin/sh", "rdinit=/x", "cabin.mode=echo",
		"cabin.hostname=evil", "cabin.", "a b", `a"b`, "a'b", `a\b`, "a\tb", "\x00", "é", "", "--",
		strings.Repeat("x", hypervisor.MaxKernelArg), strings.Repeat("x", hypervisor.MaxKernelArg+1),
		"init", "initrd=/x", "Init=/x", "cabin=1", "x=init=1",
	} {
		f.Add(p)
	}
	want := bootcfg.Params{Hostname: "vm1", Mode: bootcfg.ModeEcho, Debug: true}
	args, err := want.Args()
	if err != nil {
		f.Fatal(err)
	}
	cabinArgs := strings.Join(args, " ")
	f.Fuzz(func(t *testing.T, p string) {
		aerr := hypervisor.CheckKernelArg(p)
		perr := checkKernelParam(p)
		if aerr != nil && perr == nil {
			t.Fatalf("%q accepted although CheckKernelArg says %v", p, aerr)
		}
		if aerr == nil {
			if len(p) < 1 || len(p) > hypervisor.MaxKernelArg {
				t.Fatalf("%q of %d bytes accepted as a kernel word", p, len(p))
			}
			for i := 0; i < len(p); i++ {
				if c := p[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' {
					t.Fatalf("%q holds %q", p, c)
				}
			}
			if w := strings.Fields(p); len(w) != 1 || w[0] != p {
				t.Fatalf("%q is the words %q", p, w)
			}
		}
		if perr != nil {
			return
		}
		key, _, _ := strings.Cut(p, "=")
		if key == "init" || key == "rdinit" || strings.HasPrefix(key, "cabin.") {
			t.Fatalf("%q sets %s", p, key)
		}
		for _, line := range []string{cabinArgs + " " + p, p + " " + cabinArgs} {
			got, err := bootcfg.Parse("console=ttyS0 " + line)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("with %q the agent reads %+v, %v; want %+v", p, got, err, want)
			}
		}
	})
}

// hostFileTree builds, in a fresh directory others may search, files a
// caller other than the test's user may or may not read, and names that a
// boot path must not hold:
//
//	file        0644
//	private     0600
//	secret/     0700, secret/file 0644
//	link        -> secret/file
//	publink     -> file
//	secretdir   -> secret
//	a,b  a b  c\x01  0644
//	comma-link  -> a,b
//	dir/        0755
//	fifo        0666
func hostFileTree(f *testing.F) string {
	dir, err := os.MkdirTemp("", "cabin-fuzz-host")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		f.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o755))
	for name, perm := range map[string]os.FileMode{"file": 0o644, "private": 0o600, "a,b": 0o644, "a b": 0o644, "c\x01": 0o644} {
		must(os.WriteFile(filepath.Join(dir, name), []byte(name), 0o600))
		must(os.Chmod(filepath.Join(dir, name), perm))
	}
	must(os.Mkdir(filepath.Join(dir, "secret"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "secret", "file"), []byte("secret"), 0o644))
	must(os.Mkdir(filepath.Join(dir, "dir"), 0o755))
	must(os.Symlink(filepath.Join(dir, "secret", "file"), filepath.Join(dir, "link")))
	must(os.Symlink("file", filepath.Join(dir, "publink")))
	must(os.Symlink("secret", filepath.Join(dir, "secretdir")))
	must(os.Symlink("a,b", filepath.Join(dir, "comma-link")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666))
	must(os.Chmod(filepath.Join(dir, "fifo"), 0o666))
	return dir
}

// checkBootPath checks what hypervisor.CheckBootPath guarantees of a path
// it accepts: absolute, and one file to QEMU, which splits -initrd on
// commas and a module's arguments off at a space: no comma, no
// whitespace, no control characters, as bytes or as runes.
func checkBootPath(t *testing.T, p string) {
	t.Helper()
	if !filepath.IsAbs(p) {
		t.Fatalf("boot path %q is not absolute", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == ',' || c <= ' ' || c == 0x7f {
			t.Fatalf("boot path %q holds %q", p, c)
		}
	}
	for _, r := range p {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			t.Fatalf("boot path %q holds %U", p, r)
		}
	}
}

// mayAccess reports whether uid with gids has permission bit (4 read, 1
// search) on fi, by the owner/group/other rules.
func mayAccess(fi os.FileInfo, uid uint32, gids []uint32, bit os.FileMode) bool {
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == uid:
		return perm&(bit<<6) != 0
	case slices.Contains(gids, st.Gid):
		return perm&(bit<<3) != 0
	default:
		return perm&bit != 0
	}
}

// FuzzOpenHostFile opens arbitrary paths as a kernel or initrd for a
// caller that owns none of the files: a path inside a tree of files it may
// and may not read (rel), or any path on the host (raw). Every path
// hypervisor.CheckBootPath accepts is fit for QEMU (checkBootPath). A
// refusal is an invalid argument naming the field, and never tells where
// a link leads; what is opened was asked for by an absolute clean path fit
// for a QEMU command line, resolves to such a path too, is a regular file
// and is the file the resolved path names, and the caller could have
// opened it itself: every directory above it searchable, the file
// readable.
func FuzzOpenHostFile(f *testing.F) {
	for _, rel := range []string{
		"file", "private", "secret/file", "link", "publink", "secretdir/file", "a,b", "a b", "c\x01",
		"comma-link", "dir", "fifo", "missing", "dir/../file", "./file", "dir/", "dir//file",
		"secret/../file", "../", "file,/etc/shadow", "file\x00",
	} {
		f.Add(rel, false)
	}
	for _, raw := range []string{"", "relative", "/", "/etc/passwd", "/etc/shadow", "/proc/self/exe", "/dev/null", "/a/./b", "/tmp/"} {
		f.Add(raw, true)
	}
	dir := hostFileTree(f)
	c := &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	const field = "kernel_path"
	f.Fuzz(func(t *testing.T, p string, raw bool) {
		if !raw {
			p = dir + "/" + p
		}
		if hypervisor.CheckBootPath(p) == nil {
			checkBootPath(t, p)
		}
		resolved, file, err := openHostFile(field, p, c)
		if p == "" {
			if resolved != "" || file != nil || err != nil {
				t.Fatalf("empty path: %q, %v, %v", resolved, file, err)
			}
			return
		}
		target, terr := filepath.EvalSymlinks(p)
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(msg, field+": ") {
				t.Fatalf("%q: %v, want an invalid argument naming %s", p, err, field)
			}
			if terr == nil && target != p && !strings.Contains(p, target) && strings.Contains(msg, target) {
				t.Fatalf("%q: %v tells where it leads (%q)", p, err, target)
			}
			if !raw && !strings.Contains(p, "secret") && strings.Contains(msg, "secret") {
				t.Fatalf("%q: %v tells where it leads", p, err)
			}
			return
		}
		defer file.Close()
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			t.Fatalf("%q accepted: not absolute and clean", p)
		}
		for _, q := range []string{p, resolved} {
			if err := hypervisor.CheckBootPath(q); err != nil {
				t.Fatalf("%q accepted as %q, which %v", p, resolved, err)
			}
			checkBootPath(t, q)
		}
		if terr != nil || resolved != target {
			t.Fatalf("%q resolved to %q; it leads to %q, %v", p, resolved, target, terr)
		}
		fi, err := file.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%q opened %v, %v: not a regular file", p, fi, err)
		}
		want, err := os.Stat(resolved)
		if err != nil || !os.SameFile(fi, want) {
			t.Fatalf("%q opened a file other than %q (%v)", p, resolved, err)
		}
		if !mayAccess(fi, c.UID, c.GIDs, 4) {
			t.Fatalf("%q opened, but the caller may not read it", resolved)
		}
		for d := filepath.Dir(resolved); ; d = filepath.Dir(d) {
			di, err := os.Stat(d)
			if err != nil || !mayAccess(di, c.UID, c.GIDs, 1) {
				t.Fatalf("%q opened, but the caller may not search %s (%v)", resolved, d, err)
			}
			if d == "/" {
				break
			}
		}
	})
}
