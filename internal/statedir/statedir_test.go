package statedir

import (
	"strings"
	"testing"
)

func TestNewRejectsBadDirs(t *testing.T) {
	for _, dir := range []string{"", "relative", "/var/lib/../cabin", "/var/lib/cabin/", "/" + strings.Repeat("x", 100)} {
		if _, err := New(dir); err == nil {
			t.Errorf("New(%q) accepted", dir)
		}
	}
	if _, err := New("/var/lib/cabin"); err != nil {
		t.Errorf("New(default): %v", err)
	}
}

func TestVMIDIsSafePathElement(t *testing.T) {
	for _, name := range []string{"..", "/", "a/b", "\x00", strings.Repeat("z", 60)} {
		id := VMID("owner", name)
		if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Errorf("VMID(%q) = %q, want 16 hex digits", name, id)
		}
	}
	if VMID("a", "bc") == VMID("ab", "c") {
		t.Error("owner and name are not separated in the key")
	}
}

func TestSocketsFit(t *testing.T) {
	r, err := New("/var/lib/cabin")
	if err != nil {
		t.Fatal(err)
	}
	d := r.VM(VMID("", "default"))
	for _, p := range []string{d.AgentSocket(), d.QMPSocket(), d.ConsoleSocket()} {
		if len(p) > MaxSocketPath {
			t.Errorf("%s: %d bytes", p, len(p))
		}
		if !strings.HasPrefix(p, "/var/lib/cabin/vms/") {
			t.Errorf("%s: outside the VMs dir", p)
		}
	}
}
