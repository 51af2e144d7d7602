package qemu

import (
	"runtime"
	"testing"
)

func TestHostTSCKHz(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		if _, err := HostTSCKHz(); err == nil {
			t.Fatal("HostTSCKHz succeeded without a TSC")
		}
		return
	}
	a, err := HostTSCKHz()
	if err != nil {
		t.Fatal(err)
	}
	b, err := HostTSCKHz()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host tsc: %d kHz, then %d kHz", a, b)
	// Two measurements of one constant counter agree closely; 0.1 % leaves
	// room for a loaded host.
	if d := a - b; d*1000 > a || -d*1000 > a {
		t.Errorf("measurements %d and %d kHz differ by more than 0.1 %%", a, b)
	}
}
