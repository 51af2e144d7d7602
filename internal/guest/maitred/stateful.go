package maitred

import (
	"context"
	"errors"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/storage"
)

// ResizeFilesystem starts resizing the stateful filesystem to size bytes
// (storage.Stateful.Resize). A refusal that is the request's or the VM's
// state (size 0, no stateful disk, a resize running) comes back as it is;
// any other reason this resize could not start is logged and comes back
// wrapped in ErrResizeNotStarted, which the edge reports as FAILED.
func (m *Maitred) ResizeFilesystem(ctx context.Context, size uint64) error {
	err := m.cfg.Storage.Resize(ctx, size)
	switch {
	case err == nil, errors.Is(err, storage.ErrResizeRunning), errors.Is(err, storage.ErrNoStateful),
		errors.Is(err, errdefs.ErrInvalidArgument):
		return err
	}
	m.log.Warn("stateful filesystem resize not started", "size", size, "err", err)
	return errors.Join(ErrResizeNotStarted, err)
}

// ErrResizeNotStarted: ResizeFilesystem could not start the resize.
var ErrResizeNotStarted = errors.New("resize not started")

// ResizeStatus reports the last resize of the stateful filesystem.
func (m *Maitred) ResizeStatus() (storage.ResizeStatus, error) {
	return m.cfg.Storage.ResizeStatus()
}

// ResizeMinimum is the smallest size the stateful filesystem can be
// resized to.
func (m *Maitred) ResizeMinimum(ctx context.Context) (uint64, error) {
	return m.cfg.Storage.MinimumSize(ctx)
}

// AvailableSpace is the stateful filesystem's free space.
func (m *Maitred) AvailableSpace() (uint64, error) {
	return m.cfg.Storage.AvailableSpace()
}

// UpdateStorageBalloon sizes the storage balloon for the host's free
// space (storage.Stateful.AdjustBalloon). state is the host's word on
// its disk (normal, low, critical), which only goes to the log, as
// upstream.
func (m *Maitred) UpdateStorageBalloon(hostFree int64, state string) error {
	err := m.cfg.Storage.AdjustBalloon(hostFree)
	if err != nil {
		m.log.Warn("storage balloon not adjusted", "host_free", hostFree, "state", state, "err", err)
	}
	return err
}
