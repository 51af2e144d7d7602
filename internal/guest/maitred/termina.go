package maitred

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/storage"
)

// The programs and paths of a Termina guest, as upstream's maitred has
// them.
const (
	// Tremplin is the container springboard StartTermina starts (LXD's
	// front end for the host); LXCFS the FUSE filesystem LXD's
	// containers read /proc through.
	Tremplin = "tremplin"
	LXCFS    = "lxcfs"
	LXCFSDir = "/var/lib/lxcfs"
	// hostIPFile is ConfigureNetwork's record of the host's address (the
	// gateway), in RunDir, for LXD's containers.
	hostIPFile = "host_ip"
	// garconHostIP and garconToken are where garcon, the container
	// guest's agent, reads the host's address and its token, in DevDir.
	garconHostIP = ".host_ip"
	garconToken  = ".container_token"
	// garconInit is garcon's init script, in EtcDir.
	garconInit = "init.d/cros-garcon"
	// maxToken bounds a container token (cicerone's are UUIDs).
	maxToken = 4096
)

// Termina is what StartTermina asks for.
type Termina struct {
	// StatefulDevice is the stateful disk's node; empty for the VM's
	// first virtio-blk disk (storage.Stateful.Start).
	StatefulDevice string
	// LXDSubnet is the IPv4 subnet tremplin gives LXD's bridge
	// ("100.115.92.192/28"); empty leaves it to tremplin.
	LXDSubnet string
	// AllowPrivileged lets LXD run privileged containers.
	AllowPrivileged bool
}

// StartTermina does what upstream's StartTermina does with what this
// image has: it mounts the stateful disk (formatting it only if blank;
// storage.Stateful.Start), then starts lxcfs and tremplin, respawning,
// with LXD's state on the stateful disk. The image has no tremplin yet:
// then the disk is mounted and the call fails with FailedPrecondition
// saying so, as upstream's fails when it cannot start them, and the host
// learns that no containers will come of it. lxcfs missing is only
// logged: tremplin is what the host waits for.
func (m *Maitred) StartTermina(ctx context.Context, t Termina) (storage.Mounted, error) {
	if t.LXDSubnet != "" {
		if p, err := netip.ParsePrefix(t.LXDSubnet); err != nil || !p.Addr().Is4() {
			return storage.Mounted{}, errdefs.InvalidArgument("lxd_ipv4_subnet", fmt.Sprintf("%q is not an IPv4 subnet (a.b.c.d/n)", t.LXDSubnet))
		}
	}
	mounted, err := m.cfg.Storage.Start(ctx, t.StatefulDevice)
	if err != nil {
		return storage.Mounted{}, err
	}
	tremplin, err := exec.LookPath(Tremplin)
	if err != nil {
		return mounted, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"the stateful disk %s is mounted on %s (%d bytes free), but %s, the container springboard, is not in this guest image: no LXD containers can be started",
			mounted.Device, m.cfg.Storage.MountPoint(), mounted.FreeBytes, Tremplin)
	}
	env := m.lxdEnv(t.AllowPrivileged)
	if lxcfs, err := exec.LookPath(LXCFS); err != nil {
		m.log.Warn("lxcfs is not in this guest image; LXD's containers read the VM's /proc", "err", err)
	} else if err := m.launchDaemon(ctx, []string{lxcfs, LXCFSDir}, nil, LXCFSDir); err != nil {
		return mounted, err
	}
	argv := []string{tremplin}
	if t.LXDSubnet != "" {
		argv = append(argv, "-lxd_subnet", t.LXDSubnet)
	}
	if err := m.launchDaemon(ctx, argv, env, ""); err != nil {
		return mounted, err
	}
	return mounted, nil
}

// lxdEnv is the environment LXD's programs run with: their state on the
// stateful disk.
func (m *Maitred) lxdEnv(allowPrivileged bool) map[string]string {
	dir := m.cfg.Storage.MountPoint()
	env := map[string]string{
		"LXD_DIR":  filepath.Join(dir, "lxd"),
		"LXD_CONF": filepath.Join(dir, "lxd_conf"),
	}
	if !allowPrivileged {
		env["LXD_UNPRIVILEGED_ONLY"] = "true"
	}
	return env
}

// launchDaemon launches argv to be kept running, with its output on the
// console, after making dir if it is not empty.
func (m *Maitred) launchDaemon(ctx context.Context, argv []string, env map[string]string, dir string) error {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("%s: %w", argv[0], err)
		}
	}
	out, err := m.Launch(ctx, Process{Argv: argv, Env: env, Respawn: true, UseConsole: true})
	if err != nil {
		return err
	}
	if out.Status != Launched {
		return fmt.Errorf("%s did not launch: %w", filepath.Base(argv[0]), errdefs.ErrInternal)
	}
	m.log.Info("launched", "argv", argv)
	return nil
}

// ConfigureContainerGuest does what upstream's does for a VM that is
// itself the container (no LXD): garcon's token goes to
// /dev/.container_token, /dev/.host_ip links to the host's address
// ConfigureNetwork recorded, and garcon starts, respawning. The image has
// no garcon yet: then the files are written and the call fails with
// FailedPrecondition saying so, as upstream's fails when garcon does not
// launch. An empty token, or one over 4 KiB or with a NUL byte, is
// InvalidArgument. vm_username is not used, as upstream.
func (m *Maitred) ConfigureContainerGuest(ctx context.Context, token string) error {
	if token == "" || len(token) > maxToken || strings.IndexByte(token, 0) >= 0 {
		return errdefs.InvalidArgument("container_token", "must be 1 to 4096 bytes, without NUL")
	}
	if err := m.replaceFile(filepath.Join(m.cfg.DevDir, garconHostIP), func(tmp string) error {
		return os.Symlink(filepath.Join(m.cfg.RunDir, hostIPFile), tmp)
	}); err != nil {
		return fmt.Errorf("link the host's address for garcon: %w", err)
	}
	if err := m.replaceFile(filepath.Join(m.cfg.DevDir, garconToken), func(tmp string) error {
		return writeFile(tmp, token)
	}); err != nil {
		return fmt.Errorf("write the container token: %w", err)
	}
	garcon := filepath.Join(m.cfg.EtcDir, garconInit)
	if _, err := os.Stat(garcon); errors.Is(err, fs.ErrNotExist) {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"garcon is not in this guest image (no %s): the container token is in %s, but nothing reads it",
			garcon, filepath.Join(m.cfg.DevDir, garconToken))
	} else if err != nil {
		return fmt.Errorf("garcon: %w", err)
	}
	return m.launchDaemon(ctx, []string{garcon, "daemon"}, nil, "")
}

// recordHostIP writes the host's address to /run/host_ip, where LXD's
// containers and garcon (through /dev/.host_ip) find it.
func (m *Maitred) recordHostIP(gateway netip.Addr) error {
	err := m.replaceFile(filepath.Join(m.cfg.RunDir, hostIPFile), func(tmp string) error {
		return writeFile(tmp, gateway.String())
	})
	if err != nil {
		return fmt.Errorf("record the host's address: %w", err)
	}
	return nil
}

// replaceFile replaces dst with what create makes, atomically.
func (m *Maitred) replaceFile(dst string, create func(tmp string) error) error {
	m.etcMu.Lock()
	defer m.etcMu.Unlock()
	return replace(dst, create)
}
