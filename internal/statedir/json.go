package statedir

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// maxStateFile bounds a JSON state file cabind reads back: they hold a
// few records, and a larger one is not one of them.
const maxStateFile = 16 << 20

// ReadJSON decodes the JSON state file at path into v, without following a
// link at its end. found is false, with no error, when there is no file.
func ReadJSON(path string, v any) (found bool, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return true, err
	}
	if len(b) > maxStateFile {
		return true, fmt.Errorf("%s: larger than %d bytes", path, maxStateFile)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}
