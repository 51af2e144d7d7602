package diskimage

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/cabinvm/cabin/internal/statedir"
)

// SetVMType records t as the type of VM key's image is for, as
// ListVmDisks reports it: upstream's SetCrostiniVmType changes the
// Termina VM's disk's. ok is false, and nothing changes, when there is no
// such image. Refused (ErrBusy) while an operation is under way on it.
// The metadata is replaced whole: written beside, made durable, renamed.
func (s *Store) SetVMType(key Key, t int32) (ok bool, err error) {
	if err := key.Validate(); err != nil {
		return false, err
	}
	f, unlock, err := s.lockFound(key)
	if err != nil || unlock == nil {
		return false, err
	}
	defer unlock()
	m := s.readMeta(f.dir, key.Name)
	m.VMType, m.HasVMType = t, true
	if err := writeMeta(f.dir, newUUID(), key.Name, m); err != nil {
		return false, err
	}
	if d, err := os.Open(f.dir.Path()); err == nil {
		d.Sync()
		d.Close()
	}
	return true, nil
}

// lockFound takes key's image for an operation (lock) and finds it: no
// unlock, and nothing held, when there is no such image.
func (s *Store) lockFound(key Key) (f found, unlock func(), err error) {
	unlock, err = s.lock(key)
	if err != nil {
		return found{}, nil, err
	}
	f, ok, err := s.find(key)
	if err != nil || !ok {
		unlock()
		return found{}, nil, err
	}
	return f, unlock, nil
}

// writeMeta replaces image name's metadata in dir with m: written to a
// temporary of the operation uuid's (which recovery removes if it is left),
// made durable, renamed into place.
func writeMeta(dir statedir.DiskDir, uuid, name string, m meta) error {
	b, _ := json.Marshal(m)
	tmp := dir.TempMeta(uuid)
	err := func() error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}()
	if err == nil {
		err = os.Rename(tmp, dir.ImageMeta(name))
	}
	if err != nil {
		os.Remove(tmp)
		return spaceOr(fmt.Errorf("image metadata: %w", err))
	}
	return nil
}
