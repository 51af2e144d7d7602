package container

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/configs/validate"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxSpecSize bounds config.json and a process file: a spec is a few KiB,
// and the runtime should not read whatever a wrong path points at.
const maxSpecSize = 4 << 20

// readJSON decodes the JSON file at path, which must be a regular file of
// at most maxSpecSize bytes, into v. Errors are errdefs.ErrInvalidArgument: the
// file is the caller's input.
func readJSON(flag, path string, v any) error {
	// O_NONBLOCK: a FIFO given by mistake must not hang the runtime
	// before the regular-file check below.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return invalidf("%s: %w", flag, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return invalidf("%s: %w", flag, err)
	}
	if !fi.Mode().IsRegular() {
		return invalidf("%s %s: not a regular file", flag, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSpecSize+1))
	if err != nil {
		return invalidf("%s %s: %w", flag, path, err)
	}
	if len(data) > maxSpecSize {
		return invalidf("%s %s: larger than %d bytes", flag, path, maxSpecSize)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return invalidf("%s %s: %w", flag, path, err)
	}
	return nil
}

// loadSpec reads and checks bundle's config.json.
func loadSpec(bundle string) (*specs.Spec, error) {
	fi, err := os.Stat(bundle)
	if err != nil {
		return nil, invalidf("--bundle: %w", err)
	}
	if !fi.IsDir() {
		return nil, invalidf("--bundle %s: not a directory", bundle)
	}
	var spec specs.Spec
	if err := readJSON("--bundle", filepath.Join(bundle, specFile), &spec); err != nil {
		return nil, err
	}
	if err := checkSpec(&spec, bundle); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundle, specFile), err)
	}
	return &spec, nil
}

// checkSpec rejects what cabin-runtime cannot run before libcontainer
// starts anything, with a message saying which field is wrong.
func checkSpec(spec *specs.Spec, bundle string) error {
	if major, _, _ := strings.Cut(spec.Version, "."); major != "1" {
		return invalidf("ociVersion %q: not 1.x", spec.Version)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return invalidf("root.path: not set")
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(bundle, rootfs)
	}
	if fi, err := os.Stat(rootfs); err != nil {
		return invalidf("root.path: %w", err)
	} else if !fi.IsDir() {
		return invalidf("root.path %s: not a directory", rootfs)
	}
	if spec.Process == nil {
		return invalidf("process: not set")
	}
	if err := checkProcess("process", spec.Process); err != nil {
		return err
	}
	if spec.Linux != nil {
		if p := spec.Linux.CgroupsPath; p != "" {
			// A relative path would be taken from the runtime's own
			// cgroup; in the guest that is the agent's, and a container
			// belongs under /cabin/containers, not below the agent.
			if err := checkPath("linux.cgroupsPath", p); err != nil {
				return err
			}
		}
		if err := checkSeccomp(spec.Linux.Seccomp); err != nil {
			return err
		}
	}
	return nil
}

// checkSeccomp rejects a seccomp filter when the runtime is built without
// libseccomp (no seccomp tag; see runtimebuild.Tags). libcontainer's
// specconv would still convert the section, and the container's init fail
// when it finds a filter it cannot load, after the namespaces and cgroup
// are made; saying so up front, as an invalid spec, is clearer. A section
// with neither a default action nor rules means "no filter" to
// libcontainer too, and passes.
func checkSeccomp(s *specs.LinuxSeccomp) error {
	if seccomp.Enabled || s == nil || s.DefaultAction == "" && len(s.Syscalls) == 0 && len(s.Flags) == 0 {
		return nil
	}
	return invalidf("linux.seccomp: not supported: this cabin-runtime is built without libseccomp (remove the section)")
}

// checkProcess checks an OCI process, the container's or one to exec.
func checkProcess(field string, p *specs.Process) error {
	if len(p.Args) == 0 {
		return invalidf("%s.args: empty", field)
	}
	if p.Cwd == "" || !filepath.IsAbs(p.Cwd) {
		return invalidf("%s.cwd %q: not an absolute path", field, p.Cwd)
	}
	if p.ConsoleSize != nil && !p.Terminal {
		return invalidf("%s.consoleSize: set without terminal", field)
	}
	return checkCapabilities(field, p.Capabilities)
}

// libcontainerConfig converts spec for container id. It must run with the
// bundle as the working directory: specconv resolves a relative root and
// relative mount sources against it, as the OCI spec says.
func libcontainerConfig(id string, spec *specs.Spec, noPivot bool) (*configs.Config, error) {
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	if spec.Linux.CgroupsPath == "" {
		spec.Linux.CgroupsPath = cgroupParent + "/" + id
	}
	if s := spec.Linux.Seccomp; s != nil && s.DefaultAction == "" && len(s.Syscalls) == 0 {
		spec.Linux.Seccomp = nil
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  id,
		NoPivotRoot: noPivot,
		Spec:        spec,
	})
	if err != nil {
		return nil, invalidf("spec: %w", err)
	}
	if err := validate.Validate(cfg); err != nil {
		return nil, invalidf("spec: %w", err)
	}
	return cfg, nil
}
