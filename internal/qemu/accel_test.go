package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

const cpuinfoHead = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"

func TestDetectAccel(t *testing.T) {
	errDenied := errors.New("permission denied")
	tests := []struct {
		name       string
		cpuinfo    string
		deviceErr  error
		want       hypervisor.Accel
		wantReason string
		wantOpen   bool // the device is tried
	}{
		{
			name:       "vmx and usable device",
			cpuinfo:    cpuinfoHead + "flags\t\t: fpu vme vmx sse\n",
			want:       hypervisor.AccelKVM,
			wantReason: "cpu has vmx",
			wantOpen:   true,
		},
		{
			name:       "svm and usable device",
			cpuinfo:    cpuinfoHead + "flags\t\t: fpu svm sse\n\nprocessor\t: 1\nflags\t\t: fpu svm\n",
			want:       hypervisor.AccelKVM,
			wantReason: "cpu has svm",
			wantOpen:   true,
		},
		{
			name:       "vmx but device unusable",
			cpuinfo:    cpuinfoHead + "flags\t\t: fpu vmx\n",
			deviceErr:  errDenied,
			want:       hypervisor.AccelTCG,
			wantReason: "permission denied",
			wantOpen:   true,
		},
		{
			// A PVM host: /dev/kvm opens, but the CPU has no vmx/svm.
			name:       "no vmx/svm, device present",
			cpuinfo:    cpuinfoHead + "flags\t\t: fpu vme hypervisor avx512vl vmmcall\n",
			want:       hypervisor.AccelTCG,
			wantReason: "cpu lacks vmx/svm",
		},
		{
			// vmx flags of the "vmx flags" line are not CPU flags.
			name:       "vmx flags line only",
			cpuinfo:    cpuinfoHead + "flags\t\t: fpu sse\nvmx flags\t: vnmi preemption_timer\n",
			want:       hypervisor.AccelTCG,
			wantReason: "cpu lacks vmx/svm",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opened := false
			got, reason, err := detectAccel(strings.NewReader(tt.cpuinfo), func() error {
				opened = true
				return tt.deviceErr
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || !strings.Contains(reason, tt.wantReason) {
				t.Errorf("got %q (%q), want %q (containing %q)", got, reason, tt.want, tt.wantReason)
			}
			if opened != tt.wantOpen {
				t.Errorf("device opened: %v, want %v", opened, tt.wantOpen)
			}
		})
	}
}

func TestDetectAccelNoFlags(t *testing.T) {
	_, _, err := detectAccel(strings.NewReader(cpuinfoHead), func() error { return nil })
	if err == nil {
		t.Fatal("no error for cpuinfo without a flags line")
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]hypervisor.Accel{
		"":     "",
		"auto": "",
		"kvm":  hypervisor.AccelKVM,
		"tcg":  hypervisor.AccelTCG,
	} {
		got, err := ParseAccel(in)
		if err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"KVM", "hvf", "kvm,tcg"} {
		if _, err := ParseAccel(in); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseAccel(%q) error = %v, want invalid argument", in, err)
		}
	}
}
