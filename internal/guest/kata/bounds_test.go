package kata

import (
	"errors"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestBoundsCgroupsPath(t *testing.T) {
	b := &Bounds{CgroupParent: "/cabin/containers"}
	tests := []struct{ in, want string }{
		{"", "/cabin/containers/c1"},
		{"/kubepods/pod1/c1", "/cabin/containers/kubepods/pod1/c1"},
		{"relative/c1", "/cabin/containers/relative/c1"},
		{"/a/../../../etc", "/cabin/containers/etc"},
		// systemd's slice:prefix:name, from a Kata runtime on that driver.
		{"kubepods-pod1.slice:cri-containerd:c1", "/cabin/containers/kubepods-pod1.slice/cri-containerd/c1"},
		{"/with:colons/x", "/cabin/containers/with:colons/x"},
	}
	for _, tt := range tests {
		got, err := b.cgroupsPath("c1", tt.in)
		if err != nil || got != tt.want {
			t.Errorf("cgroupsPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"/", "/..", ".", "a/..", "x\x00y"} {
		if got, err := b.cgroupsPath("c1", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("cgroupsPath(%q) = %q, %v; want invalid", bad, got, err)
		}
	}
}

func TestBoundsApply(t *testing.T) {
	b := &Bounds{CgroupParent: "/cabin/containers", Memory: 300 << 20, Pids: 3000, MinOOMScoreAdj: -996}
	tmp := func(opts ...string) specs.Mount {
		return specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: opts}
	}
	tests := []struct {
		name string
		in   specs.Spec
		// want* are what the spec says after.
		wantMemory, wantSwap, wantPids int64
		wantOOM                        int
		wantTmpfs                      []string
	}{{
		name:       "nothing set",
		in:         specs.Spec{Process: &specs.Process{}, Mounts: []specs.Mount{tmp("nosuid", "mode=1777")}},
		wantMemory: 300 << 20, wantPids: 3000,
		wantTmpfs: []string{"nosuid", "mode=1777", "size=153600k"},
	}, {
		name: "its own limits, kept",
		in: specs.Spec{
			Process: &specs.Process{OOMScoreAdj: ptr(500)},
			Linux: &specs.Linux{Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: ptr[int64](64 << 20), Swap: ptr[int64](128 << 20)},
				Pids:   &specs.LinuxPids{Limit: ptr[int64](100)},
			}},
			// Sized already, in either spelling: kept.
			Mounts: []specs.Mount{tmp("size=1g"), tmp("nr_blocks=10"), tmp()},
		},
		wantMemory: 64 << 20, wantSwap: 128 << 20, wantPids: 100, wantOOM: 500,
		// The third is half the container's own limit.
		wantTmpfs: []string{"size=32768k"},
	}, {
		name: "above the bounds, or unlimited",
		in: specs.Spec{
			Process: &specs.Process{OOMScoreAdj: ptr(-1000)},
			Linux: &specs.Linux{Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: ptr[int64](-1), Swap: ptr[int64](100 << 20)},
				Pids:   &specs.LinuxPids{Limit: ptr[int64](1 << 40)},
			}},
		},
		// Swap below the limit would be refused; it follows the limit.
		wantMemory: 300 << 20, wantSwap: 300 << 20, wantPids: 3000, wantOOM: -996,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.in
			if err := b.apply("c1", &spec); err != nil {
				t.Fatal(err)
			}
			if spec.Linux.CgroupsPath != "/cabin/containers/c1" {
				t.Errorf("cgroupsPath %q", spec.Linux.CgroupsPath)
			}
			r := spec.Linux.Resources
			if got := *r.Memory.Limit; got != tt.wantMemory {
				t.Errorf("memory limit %d, want %d", got, tt.wantMemory)
			}
			if got := deref(r.Memory.Swap); got != tt.wantSwap {
				t.Errorf("swap %d, want %d", got, tt.wantSwap)
			}
			if got := *r.Pids.Limit; got != tt.wantPids {
				t.Errorf("pids limit %d, want %d", got, tt.wantPids)
			}
			if got := *spec.Process.OOMScoreAdj; got != tt.wantOOM {
				t.Errorf("oom_score_adj %d, want %d", got, tt.wantOOM)
			}
			if tt.wantTmpfs != nil {
				last := spec.Mounts[len(spec.Mounts)-1].Options
				if !slices.Equal(last, tt.wantTmpfs) {
					t.Errorf("tmpfs options %q, want %q", last, tt.wantTmpfs)
				}
			}
			for _, m := range tt.in.Mounts {
				if slices.Contains(m.Options, "size=1g") && len(m.Options) != 1 {
					t.Errorf("a sized tmpfs was changed: %q", m.Options)
				}
			}
		})
	}
}

// TestBoundsWithoutLimits: zero limits leave the spec's resources as they
// are, and its tmpfs too when it sets no memory limit.
func TestBoundsWithoutLimits(t *testing.T) {
	b := &Bounds{CgroupParent: "/p"}
	spec := specs.Spec{Process: &specs.Process{}, Mounts: []specs.Mount{{Destination: "/tmp", Type: "tmpfs"}}}
	if err := b.apply("c1", &spec); err != nil {
		t.Fatal(err)
	}
	if r := spec.Linux.Resources; r.Memory != nil || r.Pids != nil {
		t.Errorf("resources %+v", r)
	}
	if len(spec.Mounts[0].Options) != 0 {
		t.Errorf("tmpfs options %q", spec.Mounts[0].Options)
	}
	// An unset score is set: it would be the runtime's, the agent's.
	if got := *spec.Process.OOMScoreAdj; got != 0 {
		t.Errorf("oom_score_adj %d", got)
	}
}
