package kata

import (
	"errors"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheckID(t *testing.T) {
	for _, id := range []string{"a", "c1", "my-container_2.x", strings.Repeat("x", maxID), "A.-_"} {
		if err := checkID("container_id", id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{
		"", ".hidden", "-flag", "..", "a/b", "../x", "a b", "a\x00b", "é",
		strings.Repeat("x", maxID+1), "a:b", "a\nb",
	} {
		err := checkID("exec_id", id)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "exec_id: ") {
			t.Errorf("%q: %v, want an invalid exec_id", id, err)
		}
	}
}

func TestCheckHostname(t *testing.T) {
	for _, name := range []string{"a", "vm-1", "host.example.com", "X1", strings.Repeat("a", 63)} {
		if err := checkHostname("hostname", name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	for _, name := range []string{
		"", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "a/b", "a\x00",
		strings.Repeat("a", 64), strings.Repeat("a.", 32) + "a",
	} {
		if err := checkHostname("hostname", name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: %v, want InvalidArgument", name, err)
		}
	}
}
