package errdefs

import (
	"errors"
	"io/fs"
	"testing"
)

func TestErrorfKeepsItsWordsAndBothCauses(t *testing.T) {
	err := Errorf(ErrNotFound, "container %q: no such container: %w", "x", fs.ErrNotExist)
	if got, want := err.Error(), `container "x": no such container: file does not exist`; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v: not both its category and its cause", err)
	}
	if errors.Is(err, ErrInvalidArgument) {
		t.Errorf("%v: in a category it was not put in", err)
	}
}

func TestInvalidArgumentNamesTheField(t *testing.T) {
	err := InvalidArgument("cpus", "must be at least 1")
	if err.Error() != "cpus: must be at least 1" || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("%v: want the field named, in the invalid-argument category", err)
	}
}
