package caller

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotCharDevice is OpenDevice's refusal of a file that is not a
// character device of the major number asked for.
var ErrNotCharDevice = errors.New("not a character device of the kind asked for")

// permWrite is the write bit, as permRead and permSearch.
const permWrite = 2

// OpenDevice opens the character device at path for reading and writing
// on the caller's behalf, as Open does a regular file: walking path from
// "/" without following links (ErrSymlink), with search permission on
// every directory and read and write permission on the device, by the
// caller's own ids; the device's major number must be major
// (ErrNotCharDevice). The file is opened through the descriptor that was
// checked, so a path changed after the check changes nothing. Errors
// name no path.
func (c *Caller) OpenDevice(path string, major uint32) (*os.File, error) {
	fd, st, err := c.walk(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	// The type first: whether the caller may use a file that is no such
	// device does not matter.
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != major {
		return nil, ErrNotCharDevice
	}
	if !c.allowed(&st, permRead) || !c.allowed(&st, permWrite) {
		return nil, ErrPermission
	}
	return reopen(fd, unix.O_RDWR|unix.O_NOCTTY, path)
}
