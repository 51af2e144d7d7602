package mountinfo

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	table := `1 1 0:2 / / rw - rootfs rootfs rw,size=218856k
21 1 0:19 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt\0402 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue

40 1 0:2 /.cabin-root / rw - rootfs rootfs rw
`
	got, err := Parse(strings.NewReader(table))
	want := []Mount{
		{ID: 1, Parent: 1, Root: "/", Point: "/", FSType: "rootfs", Source: "rootfs"},
		{ID: 21, Parent: 1, Root: "/", Point: "/proc", FSType: "proc", Source: "proc"},
		{ID: 36, Parent: 35, Root: "/mnt1", Point: "/mnt 2", FSType: "ext3", Source: "/dev/root"},
		{ID: 40, Parent: 1, Root: "/.cabin-root", Point: "/", FSType: "rootfs", Source: "rootfs"},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, %v\nwant %+v", got, err, want)
	}
	// The last mount at / is the one in sight: here a mount of the
	// initramfs's files stacked on the rootfs, which has a parent.
	root, ok := Root(got)
	if !ok || root.ID != 40 || !root.HasParent() {
		t.Errorf("Root = %+v, %t; want mount 40, with a parent", root, ok)
	}
	if root, _ := Root(got[:2]); root.ID != 1 || root.HasParent() {
		t.Errorf("bare rootfs: Root = %+v; want mount 1, its own parent", root)
	}
	if _, ok := Root(got[1:3]); ok {
		t.Error("Root found in a table without /")
	}
}

func TestParseRefuses(t *testing.T) {
	for _, line := range []string{
		"1 1 0:2 / / rw rootfs rootfs rw",   // no separator
		"1 1 0:2 / / rw -",                  // nothing after it
		"x 1 0:2 / / rw - rootfs rootfs rw", // id not a number
		"1 1 0:2 / - rootfs rootfs rw",      // fields missing before it
	} {
		if _, err := Parse(strings.NewReader(line + "\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("Parse(%q) = %v; want an error naming line 1", line, err)
		}
	}
}

func TestReadSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		t.Skip("no /proc here")
	}
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := Root(ms); !ok {
		t.Errorf("no mount at / in this process's table:\n%+v", ms)
	}
}
