package maitred

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// share9P is how Mount9P mounts a share: upstream's options, but for the
// transport (trans=fd over a vsock there, virtio here). nosuid and nodev,
// as upstream: the host's files are not the guest's to trust.
const (
	share9PFlags   = unix.MS_NOSUID | unix.MS_NODEV
	share9POptions = "trans=virtio,version=9p2000.L,cache=none,access=any"
)

// Mount9P mounts the host folder shared as bootcfg.ShareTag(port) on target over
// virtio-9p, making target if it is missing (cabin's initramfs has few
// directories; upstream's image has the ones its host asks for). How the
// mount went is the returned errno (0 on success), as Mount reports it:
// ENOENT for a tag no device has. A target that is not absolute or has
// ".." elements is refused with EINVAL, as Mount refuses it; a port of 0
// (none given), an empty target or one with a NUL byte are
// InvalidArgument.
func (m *Maitred) Mount9P(ctx context.Context, port uint32, target string) (syscall.Errno, error) {
	if port == 0 {
		return 0, errdefs.InvalidArgument("port", "must be set: it names the share")
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return 0, errdefs.InvalidArgument("target", fmt.Sprintf("%q is not a path", target))
	}
	clean, ok := mountTarget(target)
	if !ok {
		m.log.Warn("mount 9p: target refused: not absolute or has \"..\" elements", "target", target)
		return syscall.EINVAL, nil
	}
	if m.cfg.WaitModules != nil {
		// 9p and 9pnet_virtio are late modules.
		if err := m.cfg.WaitModules(ctx); err != nil {
			return 0, err
		}
	}
	if err := os.MkdirAll(clean, 0o755); err != nil {
		m.log.Warn("mount 9p: create target", "target", clean, "err", err)
		return errnoOf(err), nil
	}
	tag := bootcfg.ShareTag(port)
	if err := m.cfg.Mount(tag, clean, "9p", share9PFlags, share9POptions); err != nil {
		m.log.Warn("mount 9p failed", "tag", tag, "target", clean, "err", err)
		return errnoOf(err), nil
	}
	m.log.Info("mounted a host share", "tag", tag, "target", clean)
	return 0, nil
}
