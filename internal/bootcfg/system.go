package bootcfg

import (
	"context"
	"fmt"
	"path"
)

// The guest image keeps in its initramfs only what boot needs: the agent,
// busybox, the boot modules and those that mounting a 9p share needs. The
// rest (cabin-runtime, the dynamically linked programs and their
// libraries, zoneinfo, the late modules) is in the RootfsTag share's
// SystemDir, which the agent mounts itself, read-only, at RootfsMount once
// it serves. The initramfs links each moved file's usual path to its place
// under SystemRoot, so a program run or a file opened by its usual path
// finds it once the share is mounted.
const (
	// RootfsMount is where the agent mounts the RootfsTag share.
	RootfsMount = "/run/cabin/guest-image"
	// SystemDir is the share's directory of moved files, laid out as the
	// guest's root: SystemDir/usr/bin/cabin-runtime is RuntimeBinary.
	SystemDir = "system"
	// SystemRoot is SystemDir as the guest sees it once mounted.
	SystemRoot = RootfsMount + "/" + SystemDir
	// ShareModules lists, like BootModules and in the initramfs's
	// ModulesDir, the modules the agent loads to mount the share (9p);
	// LateModules' paths are then relative to SystemModulesDir.
	ShareModules = "/etc/cabin/modules.share"
	// SystemModulesDir holds the late modules, in the share.
	SystemModulesDir = SystemRoot + ModulesDir
)

// ShareWait blocks until the agent has mounted the share on RootfsMount,
// or says why it has not. A nil ShareWait has nothing to wait for: the
// files are where they are looked for already.
type ShareWait func(context.Context) error

// For waits for the share, which holds what (a program, a file), and says
// so in the error.
func (w ShareWait) For(ctx context.Context, what string) error {
	if w == nil {
		return nil
	}
	if err := w(ctx); err != nil {
		return fmt.Errorf("%s is in the guest image's share: %w", what, err)
	}
	return nil
}

// SystemPath is where in the mounted share the file the guest knows as p
// (absolute, clean) is.
func SystemPath(p string) string { return path.Join(SystemRoot, p) }
