package main

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// defaultVM is the VM cabin run uses without --vm, started on demand.
const defaultVM = "default"

// getVM describes the VM name, nil when cabind knows none of that name.
func getVM(ctx context.Context, conn grpc.ClientConnInterface, g *globals, name string) (*cabinv1.Vm, error) {
	vm, err := cabinv1.NewVmsClient(conn).GetVm(ctx, &cabinv1.GetVmRequest{OwnerId: g.owner, Name: name})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", name, err)
	}
	return vm, nil
}

// ensureDefaultVM starts the default VM when it does not run, as cabin
// vm start default would, with its progress on standard error (standard
// output is the container's).
func ensureDefaultVM(cmd *cobra.Command, g *globals, conn grpc.ClientConnInterface) (*cabinv1.Vm, error) {
	vm, err := getVM(cmd.Context(), conn, g, defaultVM)
	if err != nil || vm.GetState() == cabinv1.VmState_VM_STATE_RUNNING {
		return vm, err
	}
	start := &cobra.Command{}
	start.SetContext(cmd.Context())
	start.SetOut(cmd.ErrOrStderr())
	start.SetErr(cmd.ErrOrStderr())
	if err := runVMStart(start, g, defaultVM, vmStartOptions{cpus: defaultCPUs, accel: "auto"}); err != nil {
		return nil, err
	}
	return getVM(cmd.Context(), conn, g, defaultVM)
}

// mountSpec is one --mount: SRC:DST[:ro].
type mountSpec struct {
	src, dst string
	ro       bool
}

// parseMount reads --mount SRC:DST[:ro]: SRC a path on the host, DST an
// absolute path in the container other than /.
func parseMount(v string) (mountSpec, error) {
	parts := strings.Split(v, ":")
	var m mountSpec
	switch {
	case len(parts) == 3 && parts[2] == "ro":
		m.ro = true
	case len(parts) == 3 && parts[2] == "rw":
	case len(parts) != 2:
		return m, usagef("--mount %q: want SRC:DST or SRC:DST:ro", v)
	}
	m.src, m.dst = parts[0], parts[1]
	switch {
	case m.src == "" || strings.ContainsRune(v, 0):
		return m, usagef("--mount %q: SRC, a host path, is empty", v)
	case !path.IsAbs(m.dst) || path.Clean(m.dst) != m.dst:
		return m, usagef("--mount %q: DST must be an absolute clean path in the container", v)
	case m.dst == "/":
		return m, usagef("--mount %q: DST cannot be the container's root", v)
	}
	abs, err := filepath.Abs(m.src)
	if err != nil {
		return m, fmt.Errorf("--mount %q: %w", v, err)
	}
	// The share is of the real directory: compare with that.
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	m.src = abs
	return m, nil
}

// bindMounts turns --mount into bind mounts of the VM's shares: a host
// path reaches a VM only through a folder shared at its start (cabin vm
// start --share HOSTDIR:GUESTDIR), so SRC must be in one, and is bound
// from where the guest mounts it. A read-only share gives a read-only
// bind whatever the flag says.
func bindMounts(specs []mountSpec, vm *cabinv1.Vm, vmName string) ([]*kata.Mount, error) {
	var out []*kata.Mount
	for _, m := range specs {
		var found *cabinv1.VmShare
		for _, sh := range vm.GetShares() {
			hp := sh.GetHostPath()
			if sh.GetGuestPath() == "" || hp == "" {
				continue // cabind's own shares
			}
			if m.src == hp || strings.HasPrefix(m.src, strings.TrimSuffix(hp, "/")+"/") {
				if found == nil || len(hp) > len(found.GetHostPath()) {
					found = sh
				}
			}
		}
		if found == nil {
			return nil, usagef("--mount %s: VM %s shares no folder holding it; a host folder reaches a VM only as a share given at its start "+
				"(cabin vm start %s --share HOSTDIR:GUESTDIR)", m.src, vmName, vmName)
		}
		rel, err := filepath.Rel(found.GetHostPath(), m.src)
		if err != nil {
			return nil, fmt.Errorf("--mount %s: %w", m.src, err)
		}
		opts := []string{"rbind", "nosuid", "nodev"}
		if m.ro || found.GetReadOnly() {
			opts = append(opts, "ro")
		}
		out = append(out, &kata.Mount{Destination: m.dst, Type: "bind", Source: path.Join(found.GetGuestPath(), filepath.ToSlash(rel)), Options: opts})
	}
	return out, nil
}
