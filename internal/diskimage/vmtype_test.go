package diskimage

import (
	"errors"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// SetVMType changes the type List reports and nothing else of the
// image's metadata; it refuses a bad name, and an image under an
// operation, and leaves no file behind.
func TestSetVMType(t *testing.T) {
	s := newStore(t, t.TempDir())
	key := Key{Owner: "alice", Name: "termina"}
	if _, err := s.Create(t.Context(), CreateRequest{Key: key, Format: FormatRaw, Size: 1 << 20, Allocation: AllocSparse, VMType: 1, HasVMType: true}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.SetVMType(Key{Owner: "alice", Name: "other"}, 5); ok || err != nil {
		t.Errorf("no such image: %v, %v", ok, err)
	}
	if _, err := s.SetVMType(Key{Owner: "alice", Name: "../x"}, 5); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("a bad name: %v", err)
	}
	unlock, err := s.lock(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetVMType(key, 5); !errors.Is(err, ErrBusy) {
		t.Errorf("under an operation: %v", err)
	}
	unlock()
	if ok, err := s.SetVMType(key, 5); !ok || err != nil {
		t.Fatalf("SetVMType: %v, %v", ok, err)
	}
	l, err := s.List(t.Context(), "alice", Locations, "termina")
	if err != nil || len(l.Images) != 1 {
		t.Fatalf("List: %v, %v", l, err)
	}
	if im := l.Images[0]; im.VMType != 5 || !im.HasVMType || im.UserChosenSize != true {
		t.Errorf("listed %+v, want type 5 and the rest as created", im)
	}
	noLeftovers(t, s, "termina")
}
