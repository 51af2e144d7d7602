package guestimage

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// zoneTree makes a directory holding files (content "TZif " + name) and,
// for values starting with "-> ", symlinks.
func zoneTree(t *testing.T, spec map[string]string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "zoneinfo")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range spec {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(v, "-> "); ok {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, []byte("TZif "+name), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// debianLikeZones is a small tree shaped like bookworm's tzdata.
func debianLikeZones() map[string]string {
	return map[string]string{
		"Etc/UTC":               "",
		"UTC":                   "-> Etc/UTC",
		"Europe/Paris":          "",
		"America/New_York":      "",
		"posixrules":            "-> America/New_York",
		"Antarctica/South_Pole": "-> ../Europe/Paris",
		"posix/Europe":          "-> ../Europe",
		"right/Europe/Paris":    "",
		"right/UTC":             "",
		"localtime":             "-> /etc/localtime",
		"zone.tab":              "",
	}
}

func TestZoneinfoEntries(t *testing.T) {
	root := zoneTree(t, debianLikeZones())
	// Neither a file nor a link: left out.
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := zoneinfoEntries(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []zoneEntry{
		{Rel: "America/New_York"},
		{Rel: "Antarctica/South_Pole", Target: "../Europe/Paris"},
		{Rel: "Etc/UTC"},
		{Rel: "Europe/Paris"},
		{Rel: "UTC", Target: "Etc/UTC"},
		{Rel: "posix/Europe", Target: "../Europe"},
		{Rel: "posixrules", Target: "America/New_York"},
		{Rel: "zone.tab"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries\n got %v\nwant %v", got, want)
	}
}

// TestZoneinfoPosix keeps posix/ when it is a link or holds links, and
// drops it whole when it holds copies of the zones.
func TestZoneinfoPosix(t *testing.T) {
	for _, tc := range []struct {
		name  string
		posix map[string]string
		want  []string // posix entries kept
	}{
		{"links", map[string]string{"posix/Europe": "-> ../Europe", "posix/UTC": "-> ../Etc/UTC"}, []string{"posix/Europe", "posix/UTC"}},
		{"link to the tree", map[string]string{"posix": "-> ."}, []string{"posix"}},
		{"copies", map[string]string{"posix/Europe/Paris": "", "posix/UTC": "-> Etc/UTC"}, nil},
	} {
		spec := map[string]string{"Etc/UTC": "", "UTC": "-> Etc/UTC", "Europe/Paris": ""}
		for k, v := range tc.posix {
			spec[k] = v
		}
		got, err := zoneinfoEntries(zoneTree(t, spec))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var posix []string
		for _, e := range got {
			if e.Rel == "posix" || strings.HasPrefix(e.Rel, "posix/") {
				posix = append(posix, e.Rel)
			}
		}
		if !slices.Equal(posix, tc.want) {
			t.Errorf("%s: posix entries %q, want %q", tc.name, posix, tc.want)
		}
		if !slices.Contains(got, zoneEntry{Rel: "Europe/Paris"}) {
			t.Errorf("%s: Europe/Paris lost", tc.name)
		}
	}
}

// TestZoneinfoMalicious feeds trees a hostile package could unpack: links
// that leave the tree are left out, names that could confuse a path or a
// reader fail the whole tree.
func TestZoneinfoMalicious(t *testing.T) {
	spec := map[string]string{
		"Etc/UTC":      "",
		"UTC":          "-> Etc/UTC",
		"Europe/Paris": "",
		"Evil":         "-> ../../../etc/passwd",
		"Abs":          "-> /etc/shadow",
		"Europe/Up":    "-> ../../etc/passwd",
		"Europe/Dots":  "-> ../Europe/../../etc",
		// Lexically inside, but "Europe/Self/.." is not "Europe" once the
		// kernel follows Self: refused for not being clean.
		"Europe/Self":  "-> .",
		"Sneaky":       "-> Europe/Self/../../etc/passwd",
		"Deep/Dir/Up":  "-> ../..",
		"Deep/Dir/Out": "-> ../../..",
		"Bad/Target":   "-> ../Europe/Par is",
	}
	got, err := zoneinfoEntries(zoneTree(t, spec))
	if err != nil {
		t.Fatal(err)
	}
	var rels []string
	for _, e := range got {
		rels = append(rels, e.Rel)
	}
	want := []string{"Deep/Dir/Up", "Etc/UTC", "Europe/Paris", "Europe/Self", "UTC"}
	if !slices.Equal(rels, want) {
		t.Errorf("kept %q, want %q", rels, want)
	}

	for _, bad := range []string{"...", "..evil", ".hidden", "Europe/..Paris", "bad name", "tab\tname", "ctl\x01", "new\nline", "caf\u00e9", "del\x7f"} {
		root := zoneTree(t, map[string]string{"Etc/UTC": "", "UTC": "-> Etc/UTC"})
		p := filepath.Join(root, filepath.FromSlash(bad))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("TZif"), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := zoneinfoEntries(root); err == nil {
			t.Errorf("tree with %q accepted: %v", bad, got)
		}
	}
	// A bad name is refused even where it would be left out (as a link
	// out of the tree).
	root := zoneTree(t, map[string]string{"Etc/UTC": "", "UTC": "-> Etc/UTC", "..x": "-> /etc"})
	if _, err := zoneinfoEntries(root); err == nil {
		t.Error("link named ..x accepted")
	}
}

func TestZoneinfoNeedsUTC(t *testing.T) {
	for name, spec := range map[string]map[string]string{
		"no UTC":         {"Europe/Paris": ""},
		"UTC into right": {"UTC": "-> right/UTC", "right/UTC": ""},
		"UTC dangling":   {"UTC": "-> Etc/UTC"},
		"UTC loop":       {"UTC": "-> UTC"},
		"UTC outside":    {"UTC": "-> /usr/share/zoneinfo/Etc/UTC", "Etc/UTC": ""},
	} {
		if got, err := zoneinfoEntries(zoneTree(t, spec)); err == nil {
			t.Errorf("%s: accepted: %v", name, got)
		}
	}
	dir := t.TempDir()
	os.Symlink(zoneTree(t, debianLikeZones()), filepath.Join(dir, "link"))
	for _, root := range []string{filepath.Join(dir, "missing"), filepath.Join(dir, "link")} {
		if _, err := zoneinfoEntries(root); err == nil {
			t.Errorf("root %s accepted", filepath.Base(root))
		}
	}
}

func TestCheckZonePath(t *testing.T) {
	for _, ok := range []string{"UTC", "Etc/GMT+10", "Etc/GMT-0", "America/Port-au-Prince", "America/Argentina/Buenos_Aires", "zone1970.tab", "leap-seconds.list"} {
		if err := checkZonePath(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../etc/passwd", "Europe/../../etc", "Europe/..", "/etc/passwd", "a//b", "a/", "a/./b", ".hidden", "x/...", "a b", "a\x00b", "caf\u00e9"} {
		if err := checkZonePath(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestZoneLinkInside(t *testing.T) {
	for _, tc := range []struct {
		rel, target string
		want        bool
	}{
		{"UTC", "Etc/UTC", true},
		{"posix", ".", true},
		{"posix/Europe", "../Europe", true},
		{"a/b/c", "../../Etc/UTC", true},
		{"a/b/c", "../..", true},
		{"UTC", "../UTC", false},
		{"a/b", "../../x", false},
		{"localtime", "/etc/localtime", false},
		{"UTC", "/usr/share/zoneinfo/Etc/UTC", false},
		{"UTC", "Etc/../Etc/UTC", false},
		{"UTC", "./Etc/UTC", false},
		{"UTC", "Etc/UTC/", false},
		{"UTC", "", false},
		{"UTC", "Etc/U TC", false},
		{"UTC", "Etc/\x01", false},
	} {
		if got := zoneLinkInside(tc.rel, tc.target); got != tc.want {
			t.Errorf("%s -> %q: inside %v, want %v", tc.rel, tc.target, got, tc.want)
		}
	}
}
