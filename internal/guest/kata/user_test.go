package kata

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\n# a comment\n\napp:x:1000:1000:App:/home/app:/bin/sh\nshort:x\nodd:x:notanumber:1:::\n"
	testGroup  = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\nwheel:x:10:root\nmore:x:60:app\n"
)

// TestLookupUser: Docker's rules (moby/sys/user GetExecUser).
func TestLookupUser(t *testing.T) {
	for _, c := range []struct {
		spec string
		want execUser
	}{
		{"", execUser{uid: 0, gid: 0, sgids: []uint32{10}, home: "/root"}},
		{"root", execUser{uid: 0, gid: 0, sgids: []uint32{10}, home: "/root"}},
		{"app", execUser{uid: 1000, gid: 1000, sgids: []uint32{50, 60}, home: "/home/app"}},
		{"1000", execUser{uid: 1000, gid: 1000, sgids: []uint32{50, 60}, home: "/home/app"}},
		{"app:staff", execUser{uid: 1000, gid: 50, home: "/home/app"}},
		{"app:0", execUser{uid: 1000, gid: 0, home: "/home/app"}},
		{"4242", execUser{uid: 4242, gid: 0, home: "/"}},
		{"4242:4343", execUser{uid: 4242, gid: 4343, home: "/"}},
	} {
		got, err := lookupUser("u", c.spec, []byte(testPasswd), []byte(testGroup))
		if err != nil || got.uid != c.want.uid || got.gid != c.want.gid || got.home != c.want.home || !slices.Equal(got.sgids, c.want.sgids) {
			t.Errorf("%q: %+v, %v; want %+v", c.spec, got, err, c.want)
		}
	}
	for _, c := range []struct {
		spec string
		want error
	}{
		{"nobody", errdefs.ErrNotFound},
		{"app:nogroup", errdefs.ErrNotFound},
		{"app:", errdefs.ErrInvalidArgument},
		{"a:b:c", errdefs.ErrInvalidArgument},
		{"4294967295", errdefs.ErrNotFound}, // -1 is no uid
	} {
		if _, err := lookupUser("u", c.spec, []byte(testPasswd), []byte(testGroup)); !errors.Is(err, c.want) {
			t.Errorf("%q: %v; want %v", c.spec, err, c.want)
		}
	}
	// No passwd at all: root by default, numbers as they are, names not.
	if u, err := lookupUser("u", "", nil, nil); err != nil || u.uid != 0 || u.home != "/" {
		t.Errorf("no passwd: %+v, %v", u, err)
	}
	if _, err := lookupUser("u", "app", nil, nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a name with no passwd: %v", err)
	}
}

// TestResolveUser: the annotation is resolved against the container's own
// files, read inside its root: a symlinked /etc/passwd that points out of
// the root resolves inside it. HOME is set unless the spec sets it.
func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "passwd"), []byte("app:x:7:7::/evil:/bin/sh\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, outside), 0o755)
	os.WriteFile(filepath.Join(root, outside, "passwd"), []byte(testPasswd), 0o644)
	// An absolute link: in the container it names root/outside/passwd.
	if err := os.Symlink(filepath.Join(outside, "passwd"), filepath.Join(root, "etc", "passwd")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte(testGroup), 0o644)
	spec := &specs.Spec{Root: &specs.Root{Path: root}, Process: &specs.Process{Env: []string{"PATH=/bin"}},
		Annotations: map[string]string{AnnotationUser: "app"}}
	if err := resolveUser(spec); err != nil {
		t.Fatal(err)
	}
	u := spec.Process.User
	if u.UID != 1000 || u.GID != 1000 || !slices.Equal(u.AdditionalGids, []uint32{50, 60}) || !slices.Contains(spec.Process.Env, "HOME=/home/app") {
		t.Errorf("user %+v, env %q", u, spec.Process.Env)
	}
	spec = &specs.Spec{Root: &specs.Root{Path: root}, Process: &specs.Process{Env: []string{"HOME=/mine"}},
		Annotations: map[string]string{AnnotationUser: "root"}}
	if err := resolveUser(spec); err != nil || !slices.Equal(spec.Process.Env, []string{"HOME=/mine"}) {
		t.Errorf("HOME given: %q, %v", spec.Process.Env, err)
	}
	// Without the annotation nothing changes.
	spec = &specs.Spec{Root: &specs.Root{Path: "relative"}, Process: &specs.Process{User: specs.User{UID: 5}}}
	if err := resolveUser(spec); err != nil || spec.Process.User.UID != 5 {
		t.Errorf("no annotation: %+v, %v", spec.Process.User, err)
	}
	// A directory where /etc/group should be is refused.
	os.Remove(filepath.Join(root, "etc", "group"))
	os.Mkdir(filepath.Join(root, "etc", "group"), 0o755)
	spec = &specs.Spec{Root: &specs.Root{Path: root}, Process: &specs.Process{}, Annotations: map[string]string{AnnotationUser: "app"}}
	if err := resolveUser(spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("a directory for /etc/group: %v", err)
	}
}

// FuzzLookupUser: passwd and group files are the image's bytes; whatever
// they hold, lookup neither panics nor hands out uid or gid -1.
func FuzzLookupUser(f *testing.F) {
	f.Add("app", testPasswd, testGroup)
	f.Add("1:2", "", "")
	f.Add("x:y", "x:x:1:1:::\n", "y:x:2:x\n")
	f.Fuzz(func(t *testing.T, spec, passwd, group string) {
		u, err := lookupUser("u", spec, []byte(passwd), []byte(group))
		if err != nil {
			return
		}
		if u.uid == 1<<32-1 || u.gid == 1<<32-1 || slices.Contains(u.sgids, 1<<32-1) {
			t.Fatalf("%q: %+v", spec, u)
		}
	})
}
