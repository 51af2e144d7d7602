package ociimage

import (
	"os"
	"sync"
)

// ShareDir is the directory holding every image's flattened root
// filesystem, one subdirectory per manifest digest (RootfsName): what
// VMs are given as one read-only share, so that an image imported while
// a VM runs is in that VM at once, and every container of an image, in
// every VM, reads the one copy.
func (s *Store) ShareDir() string { return s.path("rootfs") }

// RootfsName is the name of image d's tree in ShareDir.
func RootfsName(d Digest) string { return d.Hex() }

// Share counts a VM that has ShareDir until release is called. While
// any VM has it, removing an image unlists it at once (no new container
// can be made from it) but keeps its tree, which containers already
// running from it may still read: the tree goes once no VM has the
// share. The count lives as long as cabind: a restarted cabind's Open
// collects the trees of images removed before it.
func (s *Store) Share() (release func()) {
	s.mu.Lock()
	s.shares++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.shares--; s.shares == 0 {
				if err := s.gcLocked(); err != nil {
					s.opts.Log.Warn("image store: garbage collection", "err", err)
				}
			}
		})
	}
}

// keepTreeLocked says whether the tree of hex, an image no longer
// listed, stays: while a VM has the share.
func (s *Store) keepTreeLocked() bool { return s.shares > 0 }

// keptTree says whether dst, an unlisted image's tree, is one kept for
// the share: a tree lands only by rename, whole, and while no VM has the
// share Open and Remove collect unlisted ones.
func (s *Store) keptTree(dst string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.keepTreeLocked() {
		return false
	}
	st, err := os.Lstat(dst)
	return err == nil && st.IsDir()
}
