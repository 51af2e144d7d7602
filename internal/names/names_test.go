package names

import (
	"errors"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"a", "r1", "web-1", "my_vm.2", "A9", strings.Repeat("x", MaxVM)} {
		if err := Check("name", ok, MaxVM); err != nil {
			t.Errorf("Check(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", ".", "..", ".hidden", "-x", "--flag", "r1 ", " r1", "a/b", `a\b`, "a b", "ünï€", "a\x00b", "a\nb",
		"a:b", "a@b", "a+b", strings.Repeat("x", MaxVM+1),
	} {
		err := Check("name", bad, MaxVM)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "name: ") {
			t.Errorf("Check(%q) = %v, want invalid argument naming the field", bad, err)
		}
	}
	if err := Check("container_id", strings.Repeat("f", 64), MaxContainer); err != nil {
		t.Errorf("a containerd id: %v", err)
	}
	if err := Check("name", "ünï", MaxVM); err == nil || !strings.Contains(err.Error(), "non-ASCII byte 0xc3") {
		t.Errorf("a non-ASCII name: %v, want the byte named", err)
	}
}
