package tarcopy

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// entry is one entry of a test archive.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	size             int64 // -1: len(body)
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644, size: -1}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeLink, mode: 0o644}
}

func archive(t testing.TB, es ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		size := e.size
		if e.typ == tar.TypeReg && size < 0 {
			size = int64(len(e.body))
		}
		if e.typ != tar.TypeReg {
			size = 0
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: size, Uid: 1234, Gid: 1234}); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

// tree lists dir: name, type and, for files, contents; for links, targets.
func tree(t testing.TB, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out = append(out, rel+"->"+l)
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			b, _ := os.ReadFile(p)
			out = append(out, rel+"="+string(b))
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, " ")
}

func extract(t testing.TB, dst string, data []byte, o Options) (Result, error) {
	t.Helper()
	if o.Limits == (Limits{}) {
		o.Limits = DefaultLimits
	}
	d, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		return Result{}, err
	}
	return r.Extract(d, o)
}

func TestExtract(t *testing.T) {
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "keep"), []byte("k"), 0o644)
	os.Mkdir(filepath.Join(dst, "app"), 0o700)
	os.WriteFile(filepath.Join(dst, "app", "old"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(dst, "app", "conf"), []byte("was"), 0o644)
	data := archive(t, dir("app"), file("app/conf", "new"), dir("app/sub/"), file("./app/sub/x", "xx"),
		symlink("app/sub/link", "/etc/passwd"), hardlink("app/hard", "app/conf"), file("app/deep/er/f", "implicit parents"))
	res, err := extract(t, dst, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "app/ app/conf=new app/deep/ app/deep/er/ app/deep/er/f=implicit parents app/hard=new app/old=old app/sub/ app/sub/link->/etc/passwd app/sub/x=xx keep=k"
	if got := tree(t, dst); got != want {
		t.Errorf("tree:\n%s\nwant\n%s", got, want)
	}
	if res.Entries != 7 || res.Bytes != int64(len("new")+len("xx")+len("implicit parents")) {
		t.Errorf("result %+v", res)
	}
	// The directory there keeps its mode; the new one gets the archive's.
	if fi, _ := os.Stat(filepath.Join(dst, "app")); fi.Mode().Perm() != 0o700 {
		t.Errorf("app: %v, want the existing 0700", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(dst, "app/sub")); fi.Mode().Perm() != 0o755 {
		t.Errorf("app/sub: %v", fi.Mode())
	}
	var a, b os.FileInfo
	a, _ = os.Stat(filepath.Join(dst, "app/conf"))
	b, _ = os.Stat(filepath.Join(dst, "app/hard"))
	if !os.SameFile(a, b) {
		t.Error("app/hard is not a hard link of app/conf")
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 2 {
		t.Errorf("the staging directory stayed: %v", ents)
	}
}

func TestExtractRename(t *testing.T) {
	for _, tc := range []struct {
		r    Rename
		want string
	}{
		{Rename{Top: "src", As: "dst"}, "dst/ dst/a=1"},
		{Rename{Top: "src", Strip: true}, "a=1"},
		{Rename{}, "src/ src/a=1"},
	} {
		dst := t.TempDir()
		if _, err := extract(t, dst, archive(t, dir("src"), file("src/a", "1")), Options{Rename: tc.r}); err != nil {
			t.Fatalf("%+v: %v", tc.r, err)
		}
		if got := tree(t, dst); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r, got, tc.want)
		}
	}
	// With a top named, everything must be below it.
	dst := t.TempDir()
	_, err := extract(t, dst, archive(t, dir("src"), file("other", "1")), Options{Rename: Rename{Top: "src", As: "src"}})
	wantErr(t, err, errdefs.ErrInvalidArgument, `"other"`)
}

func wantErr(t *testing.T, err, kind error, words ...string) {
	t.Helper()
	if err == nil || !errors.Is(err, kind) {
		t.Fatalf("error %v, want %v", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

// TestExtractHostile: every refused archive leaves the destination as it
// was, and nothing lands outside it.
func TestExtractHostile(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("s"), 0o600)
	big := file("big", strings.Repeat("b", 8192))
	for name, tc := range map[string]struct {
		data []byte
		o    Options
		kind error
		word string
	}{
		"dotdot":              {archive(t, file("a", "1"), file("../escape", "x")), Options{}, errdefs.ErrInvalidArgument, ".."},
		"dotdot inside":       {archive(t, file("a/../../escape", "x")), Options{}, errdefs.ErrInvalidArgument, ".."},
		"absolute":            {archive(t, file("/etc/passwd", "x")), Options{}, errdefs.ErrInvalidArgument, "absolute"},
		"symlink then file":   {archive(t, symlink("l", outside), file("l/planted", "x")), Options{}, errdefs.ErrInvalidArgument, "symlink"},
		"relative symlink":    {archive(t, dir("d"), symlink("d/l", "../.."), file("d/l/planted", "x")), Options{}, errdefs.ErrInvalidArgument, "symlink"},
		"hard link out":       {archive(t, hardlink("shadow", secret)), Options{}, errdefs.ErrInvalidArgument, "absolute"},
		"hard link up":        {archive(t, hardlink("shadow", "../secret")), Options{}, errdefs.ErrInvalidArgument, ".."},
		"hard link not there": {archive(t, hardlink("shadow", "etc/shadow")), Options{}, errdefs.ErrInvalidArgument, "did not write"},
		"hard link to a link": {archive(t, symlink("l", secret), hardlink("h", "l")), Options{}, errdefs.ErrInvalidArgument, "not a regular file"},
		"device":              {archive(t, file("a", "1"), entry{name: "null", typ: tar.TypeChar, mode: 0o666}), Options{}, errdefs.ErrInvalidArgument, "device"},
		"entries":             {archive(t, file("a", "1"), file("b", "2"), file("c", "3")), Options{Limits: Limits{Entries: 2, Bytes: 100}}, errdefs.ErrResourceExhausted, "2 entries"},
		"bytes":               {archive(t, file("a", "12345"), file("b", "678901")), Options{Limits: Limits{Entries: 10, Bytes: 10}}, errdefs.ErrResourceExhausted, "10 bytes"},
		"truncated":           {archive(t, file("a", "1"), big)[:4096], Options{}, errdefs.ErrInvalidArgument, "middle"},
		"file over dir":       {archive(t, file("keepdir", "x")), Options{}, errdefs.ErrFailedPrecondition, "keepdir"},
		"dir over file":       {archive(t, dir("keep")), Options{}, errdefs.ErrFailedPrecondition, "keep"},
	} {
		t.Run(name, func(t *testing.T) {
			dst := t.TempDir()
			os.WriteFile(filepath.Join(dst, "keep"), []byte("k"), 0o644)
			os.Mkdir(filepath.Join(dst, "keepdir"), 0o755)
			before := tree(t, dst)
			_, err := extract(t, dst, tc.data, tc.o)
			wantErr(t, err, tc.kind, tc.word)
			if after := tree(t, dst); after != before {
				t.Errorf("the destination changed: %q, was %q", after, before)
			}
			if got := tree(t, outside); got != "secret=s" {
				t.Errorf("outside: %q", got)
			}
		})
	}
}

// TestExtractSetID: set-id bits go unless kept; devices are skipped when
// asked to.
func TestExtractModes(t *testing.T) {
	suid := file("s", "x")
	suid.mode = 0o6755
	dev := entry{name: "null", typ: tar.TypeChar, mode: 0o666}
	for _, keep := range []bool{false, true} {
		dst := t.TempDir()
		res, err := extract(t, dst, archive(t, suid, dev), Options{KeepSetID: keep, SkipDevices: true})
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(dst, "s"))
		want := os.FileMode(0o755)
		if keep {
			want |= os.ModeSetuid | os.ModeSetgid
		}
		if fi.Mode() != want {
			t.Errorf("keep %v: mode %v, want %v", keep, fi.Mode(), want)
		}
		if len(res.Skipped) != 1 || res.Skipped[0] != "null" {
			t.Errorf("skipped %v", res.Skipped)
		}
	}
}

// cutReader fails after n bytes, as a connection that goes does.
type cutReader struct {
	r io.Reader
	n int
}

var errGone = errors.New("the client went away")

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errGone
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func TestExtractDisconnect(t *testing.T) {
	dst := t.TempDir()
	data := archive(t, dir("d"), file("d/a", strings.Repeat("a", 5000)), file("d/b", strings.Repeat("b", 5000)))
	r, err := NewReader(&cutReader{r: bytes.NewReader(data), n: 7000})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := os.Open(dst)
	defer d.Close()
	_, err = r.Extract(d, Options{Limits: DefaultLimits})
	if !errors.Is(err, errGone) {
		t.Fatalf("error %v, want the reader's", err)
	}
	if got := tree(t, dst); got != "" {
		t.Errorf("left %q", got)
	}
}

func TestWriteRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "top/sub"), 0o750)
	os.WriteFile(filepath.Join(src, "top/a"), []byte("aaa"), 0o640)
	os.Link(filepath.Join(src, "top/a"), filepath.Join(src, "top/sub/hard"))
	os.Symlink("/nowhere", filepath.Join(src, "top/link"))
	d, _ := os.Open(src)
	defer d.Close()
	var b bytes.Buffer
	res, err := Write(&b, d, "top", ArchiveOptions{Limits: DefaultLimits})
	if err != nil || res.Entries != 5 || res.Bytes != 3 {
		t.Fatalf("Write: %+v, %v", res, err)
	}
	dst := t.TempDir()
	if _, err := extract(t, dst, b.Bytes(), Options{Rename: Rename{Top: "top", As: "copy"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := tree(t, dst), "copy/ copy/a=aaa copy/link->/nowhere copy/sub/ copy/sub/hard=aaa"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "copy/a")); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	// Limits hold when archiving too.
	_, err = Write(io.Discard, d, "top", ArchiveOptions{Limits: Limits{Entries: 2, Bytes: 100}})
	wantErr(t, err, errdefs.ErrResourceExhausted)
	_, err = Write(io.Discard, d, "top", ArchiveOptions{Limits: Limits{Entries: 100, Bytes: 2}})
	wantErr(t, err, errdefs.ErrResourceExhausted)
}

func TestPlace(t *testing.T) {
	for _, tc := range []struct {
		d        Dest
		dir, dot bool
		want     Placement
		kind     error
	}{
		{Dest{Exists: true, IsDir: true}, false, false, IntoDir, nil},
		{Dest{Exists: true, IsDir: true}, true, false, IntoDir, nil},
		{Dest{Exists: true, IsDir: true}, true, true, ContentsIntoDir, nil},
		{Dest{}, true, false, AsDest, nil},
		{Dest{}, true, true, AsDest, nil},
		{Dest{}, false, false, AsDest, nil},
		{Dest{Exists: true}, false, false, AsDest, nil},
		{Dest{Exists: true}, true, false, 0, errdefs.ErrFailedPrecondition},
		{Dest{Exists: true, TrailingSlash: true}, false, false, 0, errdefs.ErrFailedPrecondition},
		{Dest{TrailingSlash: true}, false, false, 0, errdefs.ErrNotFound},
		{Dest{TrailingSlash: true}, true, false, AsDest, nil},
		{Dest{Exists: true, IsDir: true}, false, true, 0, errdefs.ErrFailedPrecondition},
	} {
		got, err := Place(tc.d, tc.dir, tc.dot)
		if tc.kind != nil {
			if !errors.Is(err, tc.kind) {
				t.Errorf("%+v dir=%v dot=%v: %v, want %v", tc.d, tc.dir, tc.dot, err, tc.kind)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%+v dir=%v dot=%v: %v, %v; want %v", tc.d, tc.dir, tc.dot, got, err, tc.want)
		}
	}
}

// FuzzExtract feeds any bytes to the extractor: it either refuses them or
// writes below the destination only, and leaves no staging directory.
func FuzzExtract(f *testing.F) {
	f.Add(archive(f, dir("a"), file("a/b", "x"), symlink("a/l", "/"), hardlink("a/h", "a/b")))
	f.Add(archive(f, file("../x", "y")))
	f.Add(archive(f, symlink("l", ".."), file("l/x", "y")))
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dst := filepath.Join(root, "dst")
		os.Mkdir(dst, 0o755)
		_, err := extract(t, dst, data, Options{Limits: Limits{Entries: 50, Bytes: 1 << 20}, Rename: Rename{}, SkipDevices: true})
		ents, _ := os.ReadDir(root)
		if len(ents) != 1 {
			t.Fatalf("wrote beside the destination: %v", ents)
		}
		ents, _ = os.ReadDir(dst)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".cabin-cp-") {
				t.Fatalf("left the staging directory (err %v)", err)
			}
		}
	})
}

// TestExtractAsUser: a user who is not root merges read-only directories
// of an archive into directories there.
func TestExtractAsUser(t *testing.T) {
	if os.Getenv("TARCOPY_AS_USER") == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root to become another user")
		}
		dst := t.TempDir()
		os.Chmod(dst, 0o777)
		os.Chmod(filepath.Dir(dst), 0o755)
		os.Mkdir(filepath.Join(dst, "ro"), 0o777)
		os.Chmod(filepath.Join(dst, "ro"), 0o777)
		// The test binary, where another user may run it.
		bin := filepath.Join(t.TempDir(), "tarcopy.test")
		b, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(bin, b, 0o755)
		os.Chmod(filepath.Dir(bin), 0o755)
		cmd := exec.Command(bin, "-test.run=^TestExtractAsUser$", "-test.v")
		cmd.Dir = "/"
		cmd.Env = append(os.Environ(), "TARCOPY_AS_USER="+dst)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		if got := tree(t, dst); got != "ro/ ro/f=x ro/sub/ ro/sub/g=y" {
			t.Errorf("tree %q", got)
		}
		return
	}
	dst := os.Getenv("TARCOPY_AS_USER")
	ro := dir("ro")
	ro.mode = 0o555
	sub := dir("ro/sub")
	sub.mode = 0o555
	if _, err := extract(t, dst, archive(t, ro, file("ro/f", "x"), sub, file("ro/sub/g", "y")), Options{}); err != nil {
		t.Fatal(err)
	}
}
