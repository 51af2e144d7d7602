package ociimage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// ImportPath imports the tarball at path on cabind's host, opened on c's
// behalf (caller.Caller.Open): a caller imports only a file it could
// read itself. Errors say nothing of files c may not see.
func (s *Store) ImportPath(ctx context.Context, c *caller.Caller, path string, opts ImportOptions) ([]Digest, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, errdefs.InvalidArgument("path", fmt.Sprintf("%q is not an absolute clean path", path))
	}
	unreadable := func(err error) error {
		if c.Trusted() {
			return errdefs.InvalidArgument("path", fmt.Sprintf("%q: %v", path, err))
		}
		return errdefs.InvalidArgument("path", fmt.Sprintf("%q: no such file, or not one the caller may read", path))
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, unreadable(errors.Unwrap(err))
	}
	f, err := c.Open(resolved)
	if errors.Is(err, caller.ErrNotRegular) {
		return nil, errdefs.InvalidArgument("path", fmt.Sprintf("%q is not a regular file (a directory goes as a tar stream)", path))
	}
	if err != nil {
		return nil, unreadable(err)
	}
	defer f.Close()
	return s.ImportFile(ctx, f, opts)
}
