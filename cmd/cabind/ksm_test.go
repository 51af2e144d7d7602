package main

import (
	"strings"
	"testing"
)

// TestKSMKey: ksm is a key of the file like any flag; a value that is no
// boolean is refused naming it. Turning it on is not tried here: it would
// change the host (internal/ksm's tests cover the switch on a fake).
func TestKSMKey(t *testing.T) {
	_, code, _, stderr := start(t, "--config", writeConfig(t, "ksm = \"maybe\"\n"))
	if code != 2 || !strings.Contains(stderr, `key "ksm"`) {
		t.Errorf("exit %d, stderr %q; want 2 naming key \"ksm\"", code, stderr)
	}
	_, code, _, stderr = start(t, "--config", writeConfig(t, "ksm = false\n"))
	if code != 0 {
		t.Errorf("ksm = false: exit %d: %s", code, stderr)
	}
	_, code, _, stderr = start(t, "--ksm=nope")
	if code != 2 || !strings.Contains(stderr, "--ksm") {
		t.Errorf("--ksm=nope: exit %d, stderr %q; want 2 naming --ksm", code, stderr)
	}
}
