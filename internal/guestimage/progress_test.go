package guestimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestParsePrintURIs(t *testing.T) {
	out := "'http://deb.debian.org/debian/pool/main/l/linux-signed-amd64/linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb' linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb 70123456 SHA256:0123abcd\n"
	n, err := parsePrintURIs("Reading package lists...\n" + out)
	if err != nil || n != 70123456 {
		t.Errorf("parsePrintURIs = %d, %v; want 70123456", n, err)
	}
	for _, bad := range []string{"", "no uri here", "'http://x' file notanumber SHA256:1", "'http://x' file -5 SHA256:1", "'unterminated file 5"} {
		if n, err := parsePrintURIs(bad); err == nil {
			t.Errorf("parsePrintURIs(%q) = %d, want an error", bad, n)
		}
	}
}

// TestRunPolledCounts: the bytes a command writes reach onBytes as it
// runs, and the last report counts them all.
func TestRunPolledCounts(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "head -c 100000 /dev/zero > part; sleep 0.6; head -c 50000 /dev/zero >> part")
	cmd.Dir = dir
	var got [][2]int64
	if err := runPolled(cmd, "", dir, 150000, func(done, total int64) { got = append(got, [2]int64{done, total}) }); err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("reports %v: want the partial count and the whole", got)
	}
	if last := got[len(got)-1]; last != [2]int64{150000, 150000} {
		t.Errorf("last report %v, want [150000 150000]", last)
	}
	for i := 1; i < len(got); i++ {
		if got[i][0] < got[i-1][0] {
			t.Errorf("reports %v go backwards", got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "part")); err != nil {
		t.Fatal(err)
	}
}

func FuzzParsePrintURIs(f *testing.F) {
	f.Add("'http://deb.debian.org/x.deb' x.deb 123 SHA256:ab\n")
	f.Add("'' a b c")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parsePrintURIs(s)
		if err == nil && n < 0 {
			t.Errorf("negative size %d from %q", n, s)
		}
	})
}
