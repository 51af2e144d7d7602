package diskimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/statedir"
)

// What a VM's start needs to attach images and share folders it was
// given by path: the checks cabind makes on a caller's behalf before it
// hands QEMU an open file.

// CheckQcow2 refuses a qcow2 image that is not one, or whose header
// names a backing file or an external data file: QEMU would open those
// files itself, as root, wherever they are. It reads only the header.
func CheckQcow2(r io.ReaderAt) error {
	var hdr [qcow2HeaderLen]byte
	n, err := r.ReadAt(hdr[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the qcow2 header: %w", err)
	}
	_, err = checkQcow2Header(hdr[:n])
	return err
}

// OpenImageAs opens the regular file at path (its symlinks resolved) on
// c's behalf: for reading, or for reading and writing with write. c must
// be able to search its way there and read it (caller.Caller.Open: no
// link is followed on the way), and write it with write. A nil c or root
// may open any regular file. The errors are caller's: ErrPermission,
// ErrNotRegular, ErrSymlink, or the open's.
func OpenImageAs(c *caller.Caller, path string, write bool) (*os.File, error) {
	f, err := c.Open(path)
	if err != nil || !write {
		return f, err
	}
	defer f.Close()
	if err := allowed(c, int(f.Fd()), permWrite); err != nil {
		return nil, err
	}
	// The inode checked, not whatever path leads to now.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen for writing: %w", err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// OpenDirAs opens the directory at path (its symlinks resolved) on c's
// behalf as an O_PATH descriptor, walking from "/" without following any
// link: c must be able to search each directory on the way and to read
// and search the last, and write in it with write.
func OpenDirAs(c *caller.Caller, path string, write bool) (*os.File, error) {
	fd, err := openDir(c, path, write)
	if err != nil {
		return nil, err
	}
	if err := allowed(c, fd, permRead|permSearch); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

const permRead = 4

// ImageFormat is the format of the image file named path if it is one of
// owner's images in root's store (its extension says which), and false
// when path is not one: the path of an image in the store says its
// format, as the store names it.
func ImageFormat(root statedir.Root, owner, path string) (Format, bool) {
	for _, loc := range Locations {
		d := root.DiskDir(statedir.DiskOwnerID(owner), loc.dir())
		for _, f := range []Format{FormatRaw, FormatQcow2} {
			if len(path) > len(d.Path())+1 && path[:len(d.Path())+1] == d.Path()+"/" &&
				path[len(path)-len(f.ext()):] == f.ext() {
				name := path[len(d.Path())+1 : len(path)-len(f.ext())]
				if (Key{Owner: owner, Name: name}).Validate() == nil && d.Image(name, f.ext()) == path {
					return f, true
				}
			}
		}
	}
	return 0, false
}
