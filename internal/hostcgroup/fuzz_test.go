package hostcgroup

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// mountinfoHost is a hybrid host's mountinfo around the line under test:
// what precedes and follows it on real hosts, an escaped mount point and
// an overlay among them.
const mountinfoHost = `22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:11 - cgroup2 cgroup2 rw,nsdelegate
36 31 0:31 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
61 28 0:45 / /media/alice/My\040Disk rw,nosuid,nodev,relatime shared:30 - vfat /dev/sdb1 rw,fmask=0022,dmask=0022
90 28 0:52 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X:/var/lib/docker/overlay2/l/Y,upperdir=/var/lib/docker/overlay2/abc/diff
`

// mangle escapes s as the kernel writes a path in mountinfo (seq_file's
// mangle_path with " \t\n\\"): those four bytes as \ooo, the rest as is.
func mangle(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; strings.IndexByte(" \t\n\\", c) >= 0 {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzMountinfo reads arbitrary text as /proc/self/mountinfo, and a
// cgroup mount at an arbitrary mount point, written as the kernel writes
// it, among the lines of a real host.
//
// From any text: a hierarchy it finds is an absolute mount point of the
// text; a v1 one is found without asking any cgroup2 mount for its
// controllers, and a v2 one is a cgroup2 mount whose controllers list
// cpu. From the line written as the kernel does: its mount point is found
// exactly (as v1 with cpu, or as the cgroup2 mount whose controllers list
// cpu), and not as v1 without cpu.
func FuzzMountinfo(f *testing.F) {
	for _, c := range []struct{ mi, mount, controllers string }{
		{mountinfoHost + "37 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct\n", "/sys/fs/cgroup/cpu", "cpu io memory pids\n"},
		{"30 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n", "/sys/fs/cgroup", "cpuset cpu io memory hugetlb pids rdma misc\n"},
		{"30 24 0:27 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n", "/mnt/my cgroups", "memory pids\n"},
		{"30 24 0:27 / /mnt/a\\134040b rw - cgroup cgroup rw,cpu\n", "/mnt/a\\040b\t\n", ""},
		{"36 31 0:31 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n", "/x", "cpuacct"},
		{"1 2 3 4 - cgroup cgroup cpu\n1 2 3 4 5 - - cgroup2 x y\n- - - - - - - -\n\\\\\\0\\04\\777 \\", "", "cpu"},
		{"", "/", ""},
	} {
		f.Add(c.mi, c.mount, c.controllers)
	}
	f.Fuzz(func(t *testing.T, mi, mount, ctl string) {
		var asked []string
		controllers := func(m string) (string, error) {
			asked = append(asked, m)
			return ctl, nil
		}
		h, err := parseMountinfo(mi, controllers)
		if err != nil {
			if h != (hierarchy{}) {
				t.Fatalf("%+v with %v", h, err)
			}
		} else {
			// An escape never spans a separator: a field unescaped is a
			// part of the whole unescaped.
			if !strings.HasPrefix(h.mount, "/") || !strings.Contains(unescape(mi), h.mount) {
				t.Fatalf("%+v: not a mount point of %q", h, mi)
			}
			if !h.v2 && len(asked) > 0 {
				t.Fatalf("%+v found after asking %q for controllers", h, asked)
			}
			if h.v2 && (!slices.Contains(asked, h.mount) || !slices.Contains(strings.Fields(ctl), "cpu")) {
				t.Fatalf("%+v found after asking %q, who have %q", h, asked, ctl)
			}
		}

		// The same mount point as cgroup v1 with cpu, as cgroup2 with the
		// controllers, and as cgroup v1 without cpu, on the line after the
		// host's.
		if !strings.HasPrefix(mount, "/") {
			mount = "/" + mount
		}
		line := func(fstype, opts string) string {
			return mountinfoHost + "37 31 0:32 / " + mangle(mount) + " rw,relatime shared:15 - " + fstype + " " + fstype + " " + opts + "\n"
		}
		if h, err := parseMountinfo(line("cgroup", "rw,cpu,cpuacct"), controllers); err != nil || h != (hierarchy{mount: mount}) {
			t.Fatalf("cgroup v1 at %q: %+v, %v", mount, h, err)
		}
		only := func(m string) (string, error) {
			if m == mount {
				return "cpuset cpu io memory pids\n", nil
			}
			return "memory pids\n", nil
		}
		if h, err := parseMountinfo(line("cgroup2", "rw,nsdelegate"), only); err != nil || h != (hierarchy{mount: mount, v2: true}) {
			t.Fatalf("cgroup2 at %q: %+v, %v", mount, h, err)
		}
		if h, _ := parseMountinfo(line("cgroup", "rw,cpuacct"), controllers); h.mount == mount && mount != "/sys/fs/cgroup/unified" {
			t.Fatalf("cgroup v1 without cpu at %q: %+v", mount, h)
		}
	})
}

// A mountinfo line longer than a bufio.Scanner's 64 KiB, as an overlay of
// many layers has, hides no line after it.
func TestMountinfoLongLine(t *testing.T) {
	layers := make([]string, 1000)
	for i := range layers {
		layers[i] = fmt.Sprintf("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/%d/fs", i)
	}
	mi := "90 28 0:52 / /run/k/rootfs rw,relatime - overlay overlay rw,lowerdir=" + strings.Join(layers, ":") + "\n" +
		"30 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate\n"
	h, err := parseMountinfo(mi, func(string) (string, error) { return "cpu memory", nil })
	if want := (hierarchy{mount: "/sys/fs/cgroup", v2: true}); err != nil || h != want {
		t.Errorf("after a line of %d bytes: %+v, %v; want %+v", len(mi), h, err, want)
	}
}

// FuzzRestrictions reads arbitrary bytes as the restrictions file (the
// cpu.json cabind keeps). What it accepts has only known classes, each in
// a known state with no quota (0) or one of MinQuota to MaxQuota percent,
// and written back as cabind writes it reads the same.
func FuzzRestrictions(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"classes":{"arcvm":{"state":"background_with_quota","quota":25},"termina":{"state":"foreground"},"pluginvm":{"state":"background"}}}`,
		"{\n  \"version\": 1,\n  \"classes\": {\n    \"termina\": {\n      \"state\": \"background\"\n    }\n  }\n}\n",
		`{"version":1,"classes":{"arcvm":{"state":"background_with_quota","quota":100},"termina":{"state":"background_with_quota","quota":1}}}`,
		`{"version":1,"classes":{}}`, `{"version":1}`, `{"version":1,"classes":null}`,
		`[`, `{"version":2,"classes":{}}`, `{"version":1,"classes":{"windows":{"state":"background"}}}`,
		`{"version":1,"classes":{"termina":{"state":"idle"}}}`, `{"version":1,"classes":{"termina":{"state":""}}}`,
		`{"version":1,"classes":{"arcvm":{"state":"background_with_quota","quota":-5}}}`,
		`{"version":1,"classes":{"arcvm":{"state":"background_with_quota","quota":101}}}`,
		`{"version":1,"classes":{"arcvm":{"state":"background","quota":1e2}}}`,
		`{"Version":1,"CLASSES":{"arcvm":{"State":"background"},"arcvm":{"state":"foreground"}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		file := filepath.Join(dir, "cpu.json")
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rs, err := readRestrictions(file)
		if err != nil {
			if rs != nil {
				t.Fatalf("%v, yet read %+v", err, rs)
			}
			return
		}
		for c, r := range rs {
			if !slices.Contains(classes, c) || !r.State.valid() || (r.Quota != 0 && (r.Quota < MinQuota || r.Quota > MaxQuota)) {
				t.Fatalf("class %q: %+v", c, r)
			}
		}
		again := filepath.Join(dir, "again.json")
		if err := writeRestrictions(again, rs); err != nil {
			t.Fatal(err)
		}
		if back, err := readRestrictions(again); err != nil || !maps.Equal(back, rs) {
			t.Fatalf("%+v written back reads as %+v, %v", rs, back, err)
		}
	})
}
