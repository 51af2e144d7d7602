package container

import (
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheckCapabilities(t *testing.T) {
	ok := &specs.Process{Args: []string{"sh"}, Cwd: "/", Capabilities: &specs.LinuxCapabilities{
		Bounding: []string{"CAP_KILL", "CAP_CHECKPOINT_RESTORE"}, Ambient: []string{"CAP_NET_RAW"},
	}}
	if err := checkProcess("process", ok); err != nil {
		t.Error(err)
	}
	for _, c := range []*specs.LinuxCapabilities{
		{Bounding: []string{"CAP_KILL", "CAP_FLY"}},
		{Effective: []string{"kill"}},
		{Permitted: []string{""}},
	} {
		err := checkProcess("process", &specs.Process{Args: []string{"sh"}, Cwd: "/", Capabilities: c})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "process.capabilities.") {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
