package guestinit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ReadModuleList reads a module list (bootcfg.BootModules or LateModules):
// one path per line relative to the modules directory, in load order. Blank
// lines and lines starting with '#' are skipped. A missing list is an empty
// one: a kernel with everything built in needs none.
func ReadModuleList(file string) ([]string, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("module list: %w", err)
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The image builder writes these, but the agent still never opens
		// a path outside the modules directory.
		if !fs.ValidPath(line) {
			return nil, fmt.Errorf("module list %s: bad path %q", file, line)
		}
		mods = append(mods, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module list %s: %w", file, err)
	}
	return mods, nil
}

// LoadModules loads the modules listed in list (paths relative to dir) in
// order with finit_module(2). A module already loaded is fine. It goes on
// past a module that fails, so one bad module does not keep the rest out,
// and returns the failures joined.
func LoadModules(ctx context.Context, log *slog.Logger, dir, list string) error {
	mods, err := ReadModuleList(list)
	if err != nil {
		return err
	}
	start := time.Now()
	var errs []error
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := loadModule(filepath.Join(dir, m)); err != nil {
			errs = append(errs, err)
		}
	}
	log.Debug("modules loaded", "list", list, "count", len(mods), "failed", len(errs), "took", time.Since(start))
	return errors.Join(errs...)
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	switch path.Ext(file) {
	case ".xz", ".zst", ".gz":
		// Kernels with CONFIG_MODULE_DECOMPRESS unpack these themselves.
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", file, err)
	}
	return nil
}
