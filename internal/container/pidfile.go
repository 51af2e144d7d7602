package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// checkPidFile checks, before anything is created, that the pid file can
// be written: an absolute clean path in an existing directory, and not a
// directory itself.
func checkPidFile(path string) error {
	if err := checkPath("--pid-file", path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return invalidf("--pid-file: directory: %w", err)
	}
	if !fi.IsDir() {
		return invalidf("--pid-file %s: %s is not a directory", path, dir)
	}
	if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
		return invalidf("--pid-file %s: is a directory", path)
	}
	return nil
}

// writePidFile writes pid, in decimal without a newline, to path so that a
// reader sees either no file or the whole pid: it writes a temporary file
// beside path and renames it over path.
func writePidFile(path string, pid int) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.WriteString(strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// errNoPid is returned for a process libcontainer started without a pid,
// which would be its bug.
var errNoPid = errors.New("started process has no pid")
