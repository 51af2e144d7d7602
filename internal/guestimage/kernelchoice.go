package guestimage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The guest kernels a daemon may be told to boot (KernelChoice).
const (
	// KernelAuto boots cabin's minimal kernel where it has been built and
	// passes the checks, else Debian's.
	KernelAuto = "auto"
	// KernelGeneric boots Debian's linux-image-amd64 with its modules.
	KernelGeneric = "generic"
	// KernelMinimal boots cabin's minimal kernel and fails where it is
	// not built.
	KernelMinimal = "minimal"
)

// MinimalKernel is where scripts/kernel/build.sh leaves cabin's minimal
// kernel: its default cache keeps each build under a key of its inputs,
// and points "current" at the last one, with the .config it was built
// from beside the vmlinux.
const MinimalKernel = "/var/cache/cabin/kernel/current/vmlinux"

// KernelChoice resolves a daemon's kernel setting (auto, generic, minimal
// or an absolute path of a vmlinux) to Builder.Kernel: "" for Debian's
// kernel. note says why auto chose as it did, for the log.
func KernelChoice(choice, minimal string) (path, note string, err error) {
	switch choice {
	case KernelGeneric:
		return "", "asked for", nil
	case KernelAuto, KernelMinimal:
		_, statErr := os.Stat(minimal)
		if errors.Is(statErr, fs.ErrNotExist) {
			if choice == KernelMinimal {
				return "", "", fmt.Errorf("guest kernel: cabin's minimal kernel is not built (no %s): build it with `make kernel` (scripts/kernel/build.sh), or use the generic kernel", minimal)
			}
			return "", "cabin's minimal kernel is not built (make kernel)", nil
		}
		// The file's own path, so that the check and the copy read the
		// same build while build.sh moves "current" on.
		real, err := filepath.EvalSymlinks(minimal)
		if err == nil {
			err = CheckImageKernel(real)
		}
		if err != nil {
			if choice == KernelMinimal {
				return "", "", err
			}
			return "", fmt.Sprintf("cabin's minimal kernel is unusable: %v", err), nil
		}
		return real, "cabin's minimal kernel", nil
	}
	if !filepath.IsAbs(choice) {
		return "", "", fmt.Errorf("guest kernel %q: want auto, generic, minimal or the absolute path of a vmlinux", choice)
	}
	if err := CheckImageKernel(choice); err != nil {
		return "", "", err
	}
	return choice, "a kernel file", nil
}
