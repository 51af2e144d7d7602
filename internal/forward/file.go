package forward

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/statedir"
)

// fileVersion is the version of the forwards file's format.
const fileVersion = 1

// file is what a VM's forwards file holds.
type file struct {
	Version  int       `json:"version"`
	Forwards []Forward `json:"forwards"`
}

// maxFileBytes bounds what is read of a forwards file: far more than a VM
// has forwards for, far less than would hurt.
const maxFileBytes = 4 << 20

// writeFile replaces the VM's forwards file with fwds, atomically: a
// reader, or a cabind killed midway, sees the old list or the new one.
func writeFile(dir statedir.VMDir, fwds []Forward) error {
	b, err := json.MarshalIndent(file{Version: fileVersion, Forwards: fwds}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir.Path(), ".forwards.json.*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dir.Forwards())
}

// readFile reads the VM's forwards; none when there is no file.
func readFile(dir statedir.VMDir) ([]Forward, error) {
	// The directory is cabind's alone; still, follow no link planted
	// where the file should be.
	f, err := os.OpenFile(dir.Forwards(), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", dir.Forwards(), maxFileBytes)
	}
	var v file
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", dir.Forwards(), err)
	}
	if v.Version != fileVersion {
		return nil, fmt.Errorf("%s: version %d, want %d", dir.Forwards(), v.Version, fileVersion)
	}
	return v.Forwards, nil
}

// removeFile removes the VM's forwards file, if any.
func removeFile(dir statedir.VMDir) error {
	if err := os.Remove(dir.Forwards()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
