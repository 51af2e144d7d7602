// Package statedirtest gives tests a state directory of their own.
package statedirtest

import (
	"os"
	"testing"

	"github.com/cabinvm/cabin/internal/statedir"
)

// New returns an empty state root removed when the test ends. It is
// directly under the system's temp dir, as the VMs' unix sockets below it
// must fit in 107 bytes.
func New(t testing.TB) statedir.Root {
	t.Helper()
	dir, err := os.MkdirTemp("", "cabin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root, err := statedir.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return root
}
