package qemu

import (
	"strconv"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/hypervisor"
)

// TestCodeCacheTCGOnly: the translated-code cache is capped under TCG,
// one CPU or several, and never named under KVM, which has none.
func TestCodeCacheTCGOnly(t *testing.T) {
	for _, tc := range []struct {
		accel hypervisor.Accel
		cpus  int
		want  bool
	}{
		{hypervisor.AccelTCG, 1, true},
		{hypervisor.AccelTCG, 4, true},
		{hypervisor.AccelKVM, 1, false},
		{hypervisor.AccelKVM, 4, false},
	} {
		cfg := baseConfig()
		cfg.Accel, cfg.CPUs = tc.accel, tc.cpus
		args, err := cmdline(cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(strings.Join(args, " "), "tb-size=")
		if got != tc.want {
			t.Errorf("%s with %d CPUs: tb-size in the command line %v, want %v: %q", tc.accel, tc.cpus, got, tc.want, args)
		}
		if tc.want && !strings.Contains(strings.Join(args, " "), "tb-size="+strconv.Itoa(TCGCodeCacheMiB)) {
			t.Errorf("%s: want tb-size=%d: %q", tc.accel, TCGCodeCacheMiB, args)
		}
	}
}
